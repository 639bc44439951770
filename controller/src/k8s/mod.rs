//! The controller's Kubernetes layer: authenticating node proxies (TokenReview), the leader
//! lease, and the CA root kept in a Secret. The watches that feed the model live in
//! [`crate::source::kubernetes`].

pub mod token_review;

pub use token_review::TokenReviewer;
