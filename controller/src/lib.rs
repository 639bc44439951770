//! The Weft controller: a pure core (`model`: objects and what the proxies are told), sources
//! of objects (`source`: a manifest directory; the Kubernetes API comes next), and the mesh
//! certificate authority (`ca`).

pub mod ca;
pub mod grpc;
pub mod model;
pub mod source;
