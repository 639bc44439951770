//! Translation of the objects into what the proxies apply, one API per file: the mesh itself
//! (`mesh`: workloads, services, endpoints from `endpoints`), waypoints and their services
//! (`waypoints`), and the users' policies — Istio (`istio`, `peer_auth`, `authz`), Linkerd
//! (`linkerd`), SMI (`smi`), Gateway API (`gateway_api`) — into routes and `backends`; and
//! each waypoint's tracing from Telemetry, IstioOperator and linkerd-config (`tracing`).

mod authz;
mod backends;
mod common;
mod endpoints;
mod findings;
mod gateway_api;
mod ingress;
mod istio;
mod linkerd;
mod mesh;
mod names;
mod outbound;
mod peer_auth;
mod smi;
mod tracing;
mod waypoints;

pub use authz::workload_authz;
pub use common::ROOT_NAMESPACES;
pub use endpoints::Membership;
pub use findings::findings;
pub use ingress::{is_ingress_pod, running_gateways};
pub use mesh::{AMBIENT, DATAPLANE_MODE, OPT_OUT, enrolled, mesh_config};
pub use outbound::{OUTBOUND_POLICY, outbound};
pub use peer_auth::peer_authentication;
pub use tracing::{DEFAULT_SAMPLING_PERCENT, tracing_findings, tracing_for};
pub use waypoints::{
    GATEWAY_NAME, RunningWaypoint, USE_WAYPOINT, is_waypoint_gateway, is_waypoint_pod,
    running_waypoints, waypoint_config, waypoint_gateways, waypoint_of,
};
