//! The controller's pure core: the Kubernetes objects Weft reads (as plain Rust types, no
//! client), and what the proxies are told, computed from them. Both sources (the Kubernetes API
//! and a manifest directory) fill the same [`Objects`].

mod key;
mod objects;
pub mod policy;
pub mod status;
pub mod translate;

pub use key::ObjectKey;
pub use objects::{
    EndpointSlice, Namespace, Object, Objects, Pod, PodPort, Service, ServicePortSpec, TargetPort,
};
pub use translate::{AMBIENT, DATAPLANE_MODE, OPT_OUT, enrolled, mesh_config};
