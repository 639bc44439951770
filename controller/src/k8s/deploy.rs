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
    /// Set: a gateway for clients outside the mesh (an IstioOperator's
    /// `components.ingressGateways[]` or `egressGateways[]`, or a Gateway API Gateway of class
    /// `weft`), and the kind of what owns it.
    pub ingress: Option<(Owner, GatewayComponent)>,
}

/// What owns a gateway's objects (with [`WaypointGateway::uid`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
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

/// The ServiceAccount (the gateway's identity) and the root ConfigMap (its bootstrap trust
/// bundle) every gateway pod needs, with `metadata` for each name.
pub(crate) fn identity_objects(
    name: &str,
    root_config_map: &str,
    settings: &DeploySettings,
    metadata: &dyn Fn(&str) -> serde_json::Value,
) -> Vec<(ApiResource, serde_json::Value)> {
    vec![
        (
            resource("", "v1", "ServiceAccount", "serviceaccounts"),
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(name)}),
        ),
        (
            resource("", "v1", "ConfigMap", "configmaps"),
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": metadata(root_config_map),
                "data": {"root-cert.pem": settings.root_pem},
            }),
        ),
    ]
}

/// What every `weft-waypoint` container gets: its identity and the controller (args), the
/// readiness probe, and the token, root and certificate mounts.
pub(crate) fn container(
    name: &str,
    namespace: &str,
    settings: &DeploySettings,
    container_name: &str,
) -> serde_json::Value {
    serde_json::json!({
        "name": container_name,
        "image": settings.image,
        "args": [
            "--name", name, "--namespace", namespace,
            "--service-account", name,
            "--trust-domain", settings.trust_domain,
            "--controller", settings.controller.to_string(),
            "--controller-credential", "/var/run/secrets/weft/token",
            "--cert-dir", "/var/run/weft/certs",
            "--trust-bundle", "/var/run/weft/root/root-cert.pem",
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15020}},
        "volumeMounts": [
            {"name": "token", "mountPath": "/var/run/secrets/weft", "readOnly": true},
            {"name": "root", "mountPath": "/var/run/weft/root", "readOnly": true},
            {"name": "certs", "mountPath": "/var/run/weft/certs"},
        ],
    })
}

/// The volumes [`container`] mounts: a projected token (audience `weft`), the root ConfigMap,
/// and an emptyDir for certificates.
pub(crate) fn volumes(root_config_map: &str) -> serde_json::Value {
    serde_json::json!([
        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "weft", "expirationSeconds": 3600, "path": "token"}}]}},
        {"name": "root", "configMap": {"name": root_config_map}},
        {"name": "certs", "emptyDir": {}},
    ])
}

/// Prometheus' usual pod discovery finds the request metrics by these.
pub(crate) fn metrics_annotations() -> serde_json::Value {
    serde_json::json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "15020",
        "prometheus.io/path": "/metrics",
    })
}
