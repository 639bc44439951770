//! Istio's traffic and security APIs (`networking.istio.io`, `security.istio.io`), as users
//! write them. Every field of the real API is known: the ones Weft acts on are typed, the rest
//! are accepted and reported as not honoured; a field the API does not have is an error.

mod authorization_policy;
mod destination_rule;
mod gateway;
mod peer_authentication;
mod service_entry;
mod virtual_service;

pub use authorization_policy::*;
pub use destination_rule::*;
pub use gateway::*;
pub use peer_authentication::*;
pub use service_entry::*;
pub use virtual_service::*;
