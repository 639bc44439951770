//! Services: a VIP and ports load-balanced over endpoints, and the waypoint their traffic
//! must pass.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

/// The waypoint a service's traffic goes through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRef {
    /// `namespace/name` of the waypoint (its Gateway).
    pub name: String,
    /// The waypoint's address (HBONE on 15008).
    pub ip: IpAddr,
    /// The identity it proves.
    pub identity: SpiffeId,
}

/// A service port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port on the VIP.
    pub port: u16,
    /// Port on the endpoints.
    pub target_port: u16,
}

/// A service: a VIP load-balanced over endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Cluster IP.
    pub vip: IpAddr,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Names of the backing workloads, in the service's namespace.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The waypoint its traffic must pass (`weft.io/use-waypoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointRef>,
}
