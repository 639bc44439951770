//! What the leader deploys for gateways, whatever asks for them: the objects' owner and
//! settings (waypoints: `waypoints.rs`; an IstioOperator's ingress gateways:
//! `ingress_gateways.rs`).

use std::net::SocketAddr;

use kube::api::ApiResource;

use crate::model::ObjectKey;
use crate::model::policy::istio_operator::GatewayComponent;

/// Suffix of the ConfigMap (`<gateway>-root-cert`) holding the mesh root for one waypoint.
pub const ROOT_CONFIG_MAP_SUFFIX: &str = "-root-cert";

/// A waypoint Gateway to deploy, or an ingress gateway an IstioOperator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointGateway {
    /// Namespace and name of the Gateway (of the Deployment, for an ingress gateway).
    pub key: ObjectKey,
    /// Its owner's uid (the owner reference): the Gateway's, or the IstioOperator's.
    pub uid: Option<String>,
    /// Set: an ingress gateway (`components.ingressGateways[]`), owned by this IstioOperator
    /// (its name) when in the same namespace.
    pub ingress: Option<(String, GatewayComponent)>,
}

/// What every waypoint Deployment gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploySettings {
    /// The `weft-waypoint` image.
    pub image: String,
    /// The controller's address as waypoints reach it (its Service's cluster IP).
    pub controller: SocketAddr,
    pub trust_domain: String,
    /// The mesh root (PEM).
    pub root_pem: String,
}

/// An API resource by group, version, kind and plural.
pub(crate) fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}
