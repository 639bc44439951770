//! The controller's Kubernetes layer: authenticating node proxies (TokenReview), the leader
//! lease, the CA kept in a Secret, and policies' status conditions. The watches that feed the model live in
//! [`crate::source::kubernetes`].

pub mod ca_secret;
pub mod lease;
pub mod status;
pub mod token_review;

pub use lease::LeaderElection;
pub use status::StatusWriter;
pub use token_review::TokenReviewer;
