//! The gateways an IstioOperator's `components.ingressGateways` and `egressGateways` ask for
//! (the same deployment; an egress gateway is labelled `istio: egressgateway` and its Service
//! is a ClusterIP by default): a
//! ServiceAccount (the gateway's identity), the mesh root in a ConfigMap, a Deployment running
//! `weft-waypoint` in the gateway role with the entry's replicas, labels and resources, a
//! PodDisruptionBudget when there is more than one replica, and a Service of the entry's type
//! on 80 and 443. Owned by the IstioOperator when in its namespace, so deleting it removes
//! them. The TLS Secrets that the Istio Gateways selecting its pods name (`credentialName`,
//! in the gateway's namespace) are mounted at `/etc/weft/credentials/<name>`.

use std::collections::BTreeMap;

use kube::api::ApiResource;

use super::deploy::{
    DeploySettings, ROOT_CONFIG_MAP_SUFFIX, WaypointGateway, container, identity_objects,
    metrics_annotations, resource, volumes,
};
use crate::model::ObjectKey;
use crate::model::Objects;
use crate::model::policy::istio_operator::GatewayComponent;
use crate::model::policy::{PolicyKind, PolicySpec};

/// The ingress gateways the (first) IstioOperator asks for, owned by it where they share its
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
            WaypointGateway {
                key: ObjectKey::new(ns, &g.name),
                uid: policy.uid.clone().filter(|_| ns == policy.key.namespace),
                ingress: Some((policy.key.name.clone(), g)),
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
    operator: &str,
    component: &GatewayComponent,
    settings: &DeploySettings,
) -> Vec<(ApiResource, serde_json::Value)> {
    let (ns, name) = (&gw.key.namespace, &gw.key.name);
    let owner = gw.uid.as_ref().map(|uid| {
        serde_json::json!([{
            "apiVersion": "install.istio.io/v1alpha1",
            "kind": "IstioOperator",
            "name": operator,
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
    container["ports"] = serde_json::json!([
        {"name": "http", "containerPort": 80},
        {"name": "https", "containerPort": 443},
        {"name": "hbone", "containerPort": 15008},
        {"name": "metrics", "containerPort": 15020},
    ]);
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
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"},
                    {"name": "https", "port": 443, "targetPort": 443, "protocol": "TCP"},
                ],
            },
        }),
    ));
    out
}
