//! `weft-waypoint`: the per-service L7 proxy. HBONE in (`inbound`), each request through the
//! L7 pipeline (`request`: route → authz → split → timeout → retry → tries), endpoints chosen
//! and pooled by `backend`, reached over HBONE by `upstream`. Config arrives on the
//! controller's stream and is compiled into a `snapshot`; the certificate comes from the
//! controller's CA (`identity`).

mod backend;
mod body;
mod credential;
mod identity;
mod inbound;
mod ingress;
mod ingress_tls;
mod metrics;
mod outside;
mod request;
mod runtime;
mod shared;
mod snapshot;
mod upstream;

pub use runtime::{Settings, run};
