//! Waypoint lifecycle in Kubernetes: for each Gateway of class `weft-waypoint` the leader
//! applies (server-side apply, field manager `weft-controller`) a ServiceAccount (the
//! waypoint's identity), the mesh root in a ConfigMap (its bootstrap trust bundle), a
//! Deployment running `weft-waypoint`, and a Service; all owned by the Gateway, so deleting it
//! removes them. Nothing is re-applied while the Gateway and the inputs stay the same.

use std::collections::HashMap;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use tracing::{info, warn};

pub use super::deploy::{DeploySettings, Owner, ROOT_CONFIG_MAP_SUFFIX, WaypointGateway};
use super::deploy::{container, identity_objects, metrics_annotations, resource, volumes};
use crate::model::ObjectKey;
use crate::model::translate::GATEWAY_NAME;

/// The field manager of what the controller applies.
pub const FIELD_MANAGER: &str = "weft-controller";

/// The objects for one waypoint (or ingress gateway), in apply order.
pub fn manifests(
    gw: &WaypointGateway,
    settings: &DeploySettings,
) -> Vec<(ApiResource, serde_json::Value)> {
    if let Some((owner, component)) = &gw.ingress {
        return super::ingress_gateways::manifests(gw, owner, component, settings);
    }
    let (ns, name) = (&gw.key.namespace, &gw.key.name);
    let owner = gw.uid.as_ref().map(|uid| {
        serde_json::json!([{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": name,
            "uid": uid,
            "controller": true,
        }])
    });
    let metadata = |object_name: &str| {
        let mut m = serde_json::json!({
            "name": object_name,
            "namespace": ns,
            "labels": {
                GATEWAY_NAME: name,
                "app.kubernetes.io/managed-by": "weft",
            },
        });
        if let Some(owner) = &owner {
            m["ownerReferences"] = owner.clone();
        }
        m
    };
    let selector = serde_json::json!({ GATEWAY_NAME: name });
    // Each Gateway owns its own copy: one shared by the waypoints of a namespace would be
    // collected with the first Gateway deleted.
    let root_config_map = format!("{name}{ROOT_CONFIG_MAP_SUFFIX}");
    let mut container = container(name, ns, settings, "waypoint");
    container["ports"] = serde_json::json!([
        {"name": "hbone", "containerPort": 15008},
        {"name": "metrics", "containerPort": 15020},
    ]);
    let mut out = identity_objects(name, &root_config_map, settings, &metadata);
    out.extend([
        (
            resource("apps", "v1", "Deployment", "deployments"),
            serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": metadata(name),
                "spec": {
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {
                            "labels": {GATEWAY_NAME: name, "weft.io/dataplane-mode": "none"},
                            "annotations": metrics_annotations(),
                        },
                        "spec": {
                            "serviceAccountName": name,
                            "containers": [container],
                            "volumes": volumes(&root_config_map),
                        },
                    },
                },
            }),
        ),
        (
            resource("", "v1", "Service", "services"),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": metadata(name),
                "spec": {
                    "selector": selector,
                    "ports": [
                        {"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"},
                        {"name": "http-metrics", "port": 15020, "targetPort": 15020, "protocol": "TCP"},
                    ],
                },
            }),
        ),
    ]);
    out
}

/// Applies waypoint Deployments for Gateways, remembering what it applied.
pub struct WaypointDeployer {
    client: Client,
    applied: HashMap<ObjectKey, (WaypointGateway, DeploySettings)>,
}

impl WaypointDeployer {
    /// A deployer that applied nothing yet.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            applied: HashMap::new(),
        }
    }

    /// Forgets what was applied (leadership lost).
    pub fn forget(&mut self) {
        self.applied.clear();
    }

    /// Applies what changed. Returns the number of objects applied; failures are logged and
    /// retried on the next call.
    pub async fn apply(
        &mut self,
        gateways: &[WaypointGateway],
        settings: &DeploySettings,
    ) -> usize {
        let mut count = 0;
        self.applied
            .retain(|key, _| gateways.iter().any(|g| &g.key == key));
        for gw in gateways {
            if self.applied.get(&gw.key) == Some(&(gw.clone(), settings.clone())) {
                continue;
            }
            let mut ok = true;
            for (resource, object) in manifests(gw, settings) {
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &gw.key.namespace, &resource);
                let params = PatchParams::apply(FIELD_MANAGER).force();
                match api.patch(&name, &params, &Patch::Apply(&object)).await {
                    Ok(_) => count += 1,
                    Err(e) => {
                        ok = false;
                        warn!(gateway = %gw.key, kind = %resource.kind, error = %e, "applying the waypoint failed; will retry");
                        break;
                    }
                }
            }
            if ok {
                info!(gateway = %gw.key, image = %settings.image, "waypoint deployed");
                self.applied
                    .insert(gw.key.clone(), (gw.clone(), settings.clone()));
            }
        }
        count
    }
}

/// What the leader deploys: the waypoint Gateways and how their pods reach the controller
/// (`None` while the controller's Service has no address).
pub type WaypointPlan = Option<(Vec<WaypointGateway>, DeploySettings)>;

impl super::lease::LeaderTask<WaypointPlan> for WaypointDeployer {
    async fn act(&mut self, plan: &WaypointPlan) {
        if let Some((gateways, settings)) = plan {
            self.apply(gateways, settings).await;
        }
    }

    fn forget(&mut self) {
        WaypointDeployer::forget(self);
    }
}
