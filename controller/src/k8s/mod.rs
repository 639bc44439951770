//! The controller's Kubernetes layer: authenticating node proxies (TokenReview), the leader
//! lease, and the CA kept in a Secret. The watches that feed the model live in
//! [`crate::source::kubernetes`].

pub mod ca_secret;
pub mod lease;
pub mod token_review;

pub use lease::LeaderElection;
pub use token_review::TokenReviewer;
