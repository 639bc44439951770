//! The controller's gRPC API (`v1`, generated from `proto/weft/v1/mesh.proto`), and the
//! conversions between its resources and the mesh config (`resources`; the L7 and
//! authorization messages in `l7`). Everything travels as typed messages: no field carries
//! text to be parsed again.

mod authz;
mod backend;
mod field;
mod l7;
pub mod otlp;
mod resources;
pub mod v1;

pub use resources::{
    AUTHORIZATION, MESH_RESOURCE, ResourceError, Resources, WAYPOINT_PREFIX, diff, resources,
    to_mesh,
};
