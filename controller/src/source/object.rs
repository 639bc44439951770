//! One Kubernetes object as Weft reads it, from its YAML or JSON value (a manifest document,
//! or what the API server sent): the kinds Weft uses, typed; the policy kinds through their
//! typed specs; every other kind ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::policy::{self, Meta, PolicyKind};
use crate::model::{
    EndpointSlice, Namespace, Object, Pod, PodPort, Service, ServicePortSpec, TargetPort,
};

/// One manifest as an object Weft reads; `None` for kinds it does not.
pub fn parse_object(value: &serde_yaml::Value) -> Result<Option<Object>, String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    let label = format!("({kind} {namespace}/{name})");
    if let Some(policy_kind) = PolicyKind::of_object(kind, api_version, name) {
        return policy::parse(policy_kind, value)
            .map(|p| Some(Object::Policy(Box::new(p))))
            .map_err(|e| format!("{label}: {e}"));
    }
    let object = match kind {
        "Namespace" => {
            let doc: NamespaceDoc = typed(value, &format!("(Namespace {name})"))?;
            Object::Namespace(Namespace {
                name: doc.metadata.name,
                labels: doc.metadata.labels,
            })
        }
        "Pod" => {
            let doc: PodDoc = typed(value, &label)?;
            let ip = match doc.status.pod_ip.as_deref() {
                None | Some("") => None,
                Some(ip) => Some(ip.parse::<IpAddr>().map_err(|e| {
                    format!("{label}: status.podIP: {ip:?} is not an IP address: {e}")
                })?),
            };
            let owner = doc
                .metadata
                .owner_references
                .iter()
                .find(|o| o.controller)
                .or(doc.metadata.owner_references.first())
                .map(|o| (o.kind.clone(), o.name.clone()));
            Object::Pod(Pod {
                terminating: doc.metadata.deletion_timestamp.is_some(),
                owner,
                name: doc.metadata.name,
                namespace: doc.metadata.namespace.unwrap_or_else(|| "default".into()),
                labels: doc.metadata.labels,
                service_account: doc
                    .spec
                    .service_account_name
                    .unwrap_or_else(|| "default".into()),
                node: doc.spec.node_name,
                ip,
                ports: doc
                    .spec
                    .containers
                    .into_iter()
                    .flat_map(|c| c.ports)
                    .map(|p| PodPort {
                        name: p.name,
                        container_port: p.container_port,
                    })
                    .collect(),
            })
        }
        "Service" => {
            let doc: ServiceDoc = typed(value, &label)?;
            let cluster_ip = match doc.spec.cluster_ip.as_deref() {
                None | Some("") | Some("None") => None,
                Some(ip) => Some(ip.parse::<IpAddr>().map_err(|e| {
                    format!("{label}: spec.clusterIP: {ip:?} is not an IP address: {e}")
                })?),
            };
            Object::Service(Service {
                name: doc.metadata.name,
                namespace: doc.metadata.namespace.unwrap_or_else(|| "default".into()),
                labels: doc.metadata.labels,
                selector: doc.spec.selector,
                cluster_ip,
                ports: doc
                    .spec
                    .ports
                    .into_iter()
                    .map(|p| ServicePortSpec {
                        port: p.port,
                        target_port: match p.target_port {
                            None => TargetPort::Number(p.port),
                            Some(IntOrString::Int(n)) => TargetPort::Number(n),
                            Some(IntOrString::Str(s)) => match s.parse() {
                                Ok(n) => TargetPort::Number(n),
                                Err(_) => TargetPort::Name(s),
                            },
                        },
                    })
                    .collect(),
            })
        }
        "EndpointSlice" => {
            let doc: EndpointSliceDoc = typed(value, &label)?;
            let service = doc
                .metadata
                .labels
                .get("kubernetes.io/service-name")
                .cloned()
                .unwrap_or_default();
            let mut addresses = Vec::new();
            for (i, e) in doc.endpoints.iter().enumerate() {
                if e.conditions.ready == Some(false) {
                    continue;
                }
                for (j, a) in e.addresses.iter().enumerate() {
                    addresses.push(a.parse::<IpAddr>().map_err(|err| {
                        format!("{label}: endpoints[{i}].addresses[{j}]: {a:?} is not an IP address: {err}")
                    })?);
                }
            }
            Object::EndpointSlice(EndpointSlice {
                name: doc.metadata.name,
                namespace: doc.metadata.namespace.unwrap_or_else(|| "default".into()),
                service,
                addresses,
            })
        }
        "" => return Err(format!("{label}: no kind")),
        // Other kinds (Deployments, ConfigMaps, install resources) are not Weft's to read.
        _ => return Ok(None),
    };
    Ok(Some(object))
}

fn typed<T: DeserializeOwned>(value: &serde_yaml::Value, label: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        format!("{label}: {path}: {}", e.into_inner())
    })
}

// === Kubernetes shapes (only the fields Weft reads; others are ignored, as kubectl's objects
// carry many) ===

#[derive(Deserialize)]
struct NamespaceDoc {
    metadata: Meta,
}

#[derive(Deserialize)]
struct PodDoc {
    metadata: Meta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default)]
    containers: Vec<Container>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    ports: Vec<ContainerPort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    #[serde(default)]
    name: Option<String>,
    container_port: u16,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
}

#[derive(Deserialize)]
struct ServiceDoc {
    metadata: Meta,
    spec: ServiceSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default)]
    ports: Vec<ServicePortDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePortDoc {
    port: u16,
    #[serde(default)]
    target_port: Option<IntOrString>,
}

#[derive(Deserialize)]
struct EndpointSliceDoc {
    metadata: Meta,
    #[serde(default)]
    endpoints: Vec<EndpointDoc>,
}

#[derive(Deserialize)]
struct EndpointDoc {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: EndpointConditions,
}

#[derive(Deserialize, Default)]
struct EndpointConditions {
    #[serde(default)]
    ready: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u16),
    Str(String),
}
