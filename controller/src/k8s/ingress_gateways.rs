//! Gateways for clients outside the mesh, deployed by the leader: those an IstioOperator's
//! `components.ingressGateways` and `egressGateways` ask for (an egress gateway is labelled
//! `istio: egressgateway` and its Service is a ClusterIP by default), and those Gateway API
//! Gateways of class `weft` ask for. Each gets a ServiceAccount (its identity), the mesh root in
//! a ConfigMap, a Deployment running `weft-waypoint` in the gateway role (replicas, labels and
//! resources), a PodDisruptionBudget with more than one replica, and a Service on its ports (80
//! and 443 for an IstioOperator's; the served listeners' for a Gateway). Owned by the
//! IstioOperator when in its namespace, or by the Gateway, so deleting it removes them. The TLS
//! Secrets it serves (`credentialName` of the Istio Gateways selecting its pods, a Gateway's
//! `certificateRefs`) are mounted at `/etc/weft/credentials/<name>`.

use std::collections::BTreeMap;

use kube::api::ApiResource;

use super::deploy::{
    DeploySettings, Owner, ROOT_CONFIG_MAP_SUFFIX, WaypointGateway, container, identity_objects,
    metrics_annotations, resource, volumes,
};
use crate::model::ObjectKey;
use crate::model::Objects;
use crate::model::policy::gateway::INGRESS_CLASS;
use crate::model::policy::istio_operator::GatewayComponent;
use crate::model::policy::{PolicyKind, PolicySpec};
use crate::model::translate::GATEWAY_NAME;

/// The gateways the (first) IstioOperator asks for, owned by it where they share its
/// namespace.
pub fn planned(objects: &Objects) -> Vec<WaypointGateway> {
    let Some((policy, operator)) = objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::IstioOperator(o) if p.kind == PolicyKind::IstioOperator => Some((p, o)),
        _ => None,
    }) else {
        return Vec::new();
    };
    operator
        .gateways
        .iter()
        .map(|g| {
            let ns = g.namespace.as_deref().unwrap_or(&policy.key.namespace);
            let mut g = g.clone();
            g.credentials = credentials(objects, &g.labels);
            let owner = Owner {
                api_version: "install.istio.io/v1alpha1",
                kind: "IstioOperator",
                name: policy.key.name.clone(),
            };
            WaypointGateway {
                key: ObjectKey::new(ns, &g.name),
                uid: policy.uid.clone().filter(|_| ns == policy.key.namespace),
                ingress: Some((owner, g)),
            }
        })
        .collect()
}

/// The gateways Gateway API Gateways of class `weft` ask for, as Gateway API implementations
/// deploy them: named after the Gateway and owned by it, 2 replicas (with a
/// PodDisruptionBudget), pods labelled `gateway.networking.k8s.io/gateway-name`, a
/// LoadBalancer Service on the served listeners' ports, and their `certificateRefs` mounted.
pub fn planned_api(objects: &Objects) -> Vec<WaypointGateway> {
    objects
        .policies
        .values()
        .filter_map(|p| match &p.spec {
            PolicySpec::Gateway(g) if g.gateway_class_name == INGRESS_CLASS => Some((p, g)),
            _ => None,
        })
        .map(|(p, g)| {
            let served = || g.listeners.iter().filter(|l| l.served());
            let mut ports: Vec<u16> = served().map(|l| l.port).collect();
            ports.sort_unstable();
            ports.dedup();
            let mut credentials: Vec<String> = served()
                .filter_map(|l| l.credential().map(str::to_owned))
                .collect();
            credentials.sort();
            credentials.dedup();
            let component = GatewayComponent {
                name: p.key.name.clone(),
                namespace: Some(p.key.namespace.clone()),
                labels: [(GATEWAY_NAME.to_owned(), p.key.name.clone())].into(),
                replicas: 2,
                resources: None,
                service_type: "LoadBalancer".to_owned(),
                credentials,
                egress: false,
                ports,
            };
            let owner = Owner {
                api_version: "gateway.networking.k8s.io/v1",
                kind: "Gateway",
                name: p.key.name.clone(),
            };
            WaypointGateway {
                key: p.key.clone(),
                uid: p.uid.clone(),
                ingress: Some((owner, component)),
            }
        })
        .collect()
}

/// The `credentialName`s of the Istio Gateways whose selector picks pods labelled `labels`.
fn credentials(objects: &Objects, labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = objects
        .policies
        .values()
        .filter_map(|p| match &p.spec {
            PolicySpec::IstioGateway(g)
                if !g.selector.is_empty()
                    && g.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) =>
            {
                Some(
                    g.servers
                        .iter()
                        .filter_map(|s| s.tls.as_ref().and_then(|t| t.credential_name.clone())),
                )
            }
            _ => None,
        })
        .flatten()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The objects for one ingress gateway, in apply order.
pub fn manifests(
    gw: &WaypointGateway,
    owner: &Owner,
    component: &GatewayComponent,
    settings: &DeploySettings,
) -> Vec<(ApiResource, serde_json::Value)> {
    let (ns, name) = (&gw.key.namespace, &gw.key.name);
    let owner = gw.uid.as_ref().map(|uid| {
        serde_json::json!([{
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "uid": uid,
            "controller": true,
        }])
    });
    let metadata = |object_name: &str| {
        let mut m = serde_json::json!({
            "name": object_name,
            "namespace": ns,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "weft"},
        });
        if let Some(owner) = &owner {
            m["ownerReferences"] = owner.clone();
        }
        m
    };
    let mut pod_labels = serde_json::json!(component.labels);
    pod_labels["weft.io/dataplane-mode"] = "none".into();
    let selector = serde_json::json!(component.labels);
    let root_config_map = format!("{name}{ROOT_CONFIG_MAP_SUFFIX}");
    let mut container = container(name, ns, settings, "gateway");
    if let Some(args) = container["args"].as_array_mut() {
        args.extend(["--credential-dir".into(), "/etc/weft/credentials".into()]);
    }
    let mut ports: Vec<serde_json::Value> = component
        .ports
        .iter()
        .map(|p| serde_json::json!({"name": port_name(*p), "containerPort": p}))
        .collect();
    ports.push(serde_json::json!({"name": "hbone", "containerPort": 15008}));
    ports.push(serde_json::json!({"name": "metrics", "containerPort": 15020}));
    container["ports"] = serde_json::Value::Array(ports);
    // Each TLS Secret a Gateway selecting it names, under its name (optional: a Secret made
    // later appears in the pod when kubelet next syncs it).
    let mut pod_volumes = volumes(&root_config_map);
    for (i, credential) in component.credentials.iter().enumerate() {
        let volume = format!("credential-{i}");
        if let (Some(list), Some(mounts)) = (
            pod_volumes.as_array_mut(),
            container["volumeMounts"].as_array_mut(),
        ) {
            list.push(serde_json::json!({"name": volume, "secret": {"secretName": credential, "optional": true}}));
            mounts.push(serde_json::json!({"name": volume, "mountPath": format!("/etc/weft/credentials/{credential}"), "readOnly": true}));
        }
    }
    container["securityContext"] = serde_json::json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
    });
    if let Some(resources) = &component.resources {
        container["resources"] = resources.clone();
    }
    let mut out = identity_objects(name, &root_config_map, settings, &metadata);
    out.push((
        resource("apps", "v1", "Deployment", "deployments"),
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(name),
            "spec": {
                "replicas": component.replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": metrics_annotations(),
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [container],
                        "volumes": pod_volumes,
                    },
                },
            },
        }),
    ));
    if component.replicas > 1 {
        out.push((
            resource(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
            ),
            serde_json::json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": metadata(name),
                "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}},
            }),
        ));
    }
    out.push((
        resource("", "v1", "Service", "services"),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": metadata(name),
            "spec": {
                "type": component.service_type,
                "selector": selector,
                "ports": component.ports.iter().map(|p| serde_json::json!({
                    "name": port_name(*p), "port": p, "targetPort": p, "protocol": "TCP",
                })).collect::<Vec<_>>(),
            },
        }),
    ));
    out
}

/// A port's name in the Service and the container: Istio's for 80 and 443, else by number.
fn port_name(port: u16) -> String {
    match port {
        80 => "http".to_owned(),
        443 => "https".to_owned(),
        p => format!("port-{p}"),
    }
}
