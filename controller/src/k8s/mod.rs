//! The controller's Kubernetes layer: authenticating node proxies (TokenReview), the leader
//! lease, the CA kept in a Secret, policies' status conditions, and waypoint Deployments. The watches that feed the model live in
//! [`crate::source::kubernetes`].

pub mod ca_secret;
pub mod crds;
pub mod deploy;
pub mod ingress_gateways;
pub mod lease;
pub mod status;
pub mod token_review;
pub mod waypoints;

pub use lease::LeaderElection;
pub use status::StatusWriter;
pub use token_review::TokenReviewer;
pub use waypoints::WaypointDeployer;
