//! The Weft controller: a pure core (`model`: objects and what the proxies are told), sources
//! of objects (`source`: the Kubernetes API or a manifest directory), the Kubernetes layer (`k8s`:
//! node authentication, leader lease, the CA Secret), and the mesh
//! certificate authority (`ca`).

pub mod admin;
pub mod ca;
pub mod grpc;
pub mod k8s;
pub mod metrics;
pub mod model;
pub mod source;
