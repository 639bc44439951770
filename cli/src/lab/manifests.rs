//! `weft lab --manifests DIR`: the lab on a user's own YAML. Namespaces, Pods, Deployments
//! (and StatefulSets, ReplicaSets), Services and waypoint Gateways become the lab's pods,
//! services and waypoints; every other object (the policies) goes to the lab controller's
//! manifest directory unchanged, as `kubectl apply` would send it to a cluster.
//!
//! Each pod runs `weft-testsrv`, which answers every request with the pod's name, on each of
//! its container ports and on every port a service sends it.

use std::collections::{BTreeMap, BTreeSet};

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_yaml::Value;

/// Most pods made from one Deployment's replicas.
const MAX_REPLICAS: u64 = 4;
/// Most pods in all: each is a network namespace with a server.
const MAX_PODS: usize = 24;
/// The label that puts a namespace in the mesh (or, `none`, leaves a pod out).
pub(super) const DATAPLANE_MODE: &str = "weft.io/dataplane-mode";
const USE_WAYPOINT: &str = "weft.io/use-waypoint";

/// A pod to run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserPod {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) labels: BTreeMap<String, String>,
    /// Container ports, by name where named.
    pub(crate) ports: Vec<(Option<String>, u16)>,
}

impl UserPod {
    fn opted_out(&self) -> bool {
        self.labels.get(DATAPLANE_MODE).map(String::as_str) == Some("none")
    }
}

/// A service port's target: a number or a container port's name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    Number(u16),
    Name(String),
}

/// A service to declare.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserService {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) cluster_ip: Option<Ipv4Addr>,
    pub(crate) selector: BTreeMap<String, String>,
    pub(crate) ports: Vec<(u16, Target)>,
    pub(crate) waypoint: Option<String>,
}

/// What a manifest directory holds, sorted into what the lab runs and what it passes on.
#[derive(Debug, Default)]
pub(crate) struct UserMesh {
    /// Namespaces labelled into the mesh.
    pub(crate) ambient: BTreeSet<String>,
    pub(crate) pods: Vec<UserPod>,
    pub(crate) services: Vec<UserService>,
    /// Waypoints (Gateways of class `weft-waypoint`): (namespace, name).
    pub(crate) waypoints: Vec<(String, String)>,
    /// The rest, per source file: (file name, YAML documents).
    pub(crate) passed_on: Vec<(String, String)>,
    /// What the lab does not carry, said once each.
    pub(crate) notes: Vec<String>,
}

impl UserMesh {
    /// Whether a pod is in the mesh: its namespace is, and it did not opt out.
    pub(crate) fn enrolled(&self, pod: &UserPod) -> bool {
        self.ambient.contains(&pod.namespace) && !pod.opted_out()
    }

    /// The pods a service selects.
    pub(crate) fn endpoints(&self, svc: &UserService) -> Vec<&UserPod> {
        if svc.selector.is_empty() {
            return Vec::new();
        }
        self.pods
            .iter()
            .filter(|p| {
                p.namespace == svc.namespace
                    && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect()
    }

    /// The port a service's target resolves to on `pod` (None: a name the pod lacks).
    pub(crate) fn target_port(pod: &UserPod, target: &Target) -> Option<u16> {
        match target {
            Target::Number(n) => Some(*n),
            Target::Name(name) => pod
                .ports
                .iter()
                .find(|(n, _)| n.as_deref() == Some(name))
                .map(|(_, p)| *p),
        }
    }

    /// Every port a pod serves: its container ports and what services send it (8080 when
    /// nothing names one).
    pub(crate) fn serving_ports(&self, pod: &UserPod) -> BTreeSet<u16> {
        let mut ports: BTreeSet<u16> = pod.ports.iter().map(|(_, p)| *p).collect();
        for svc in &self.services {
            if self
                .endpoints(svc)
                .iter()
                .any(|p| p.name == pod.name && p.namespace == pod.namespace)
            {
                ports.extend(
                    svc.ports
                        .iter()
                        .filter_map(|(_, t)| Self::target_port(pod, t)),
                );
            }
        }
        if ports.is_empty() {
            ports.insert(8080);
        }
        ports
    }
}

/// Reads every `.yaml`/`.yml` file of `dir` (not recursing). Errors name the file and the
/// document; nothing is run until all of it reads.
pub(crate) fn read(dir: &Path) -> Result<UserMesh> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--manifests {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("--manifests {}: no .yaml or .yml file there", dir.display());
    }
    let mut mesh = UserMesh::default();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        mesh.add_file(&name, &text)
            .with_context(|| format!("{}", file.display()))?;
    }
    if mesh.pods.is_empty() {
        bail!(
            "--manifests {}: no Pod or Deployment: the lab needs workloads to run",
            dir.display()
        );
    }
    if mesh.pods.len() > MAX_PODS {
        bail!(
            "--manifests {}: {} pods; the lab runs at most {MAX_PODS} (lower replicas)",
            dir.display(),
            mesh.pods.len()
        );
    }
    Ok(mesh)
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str().map(str::to_owned)
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.as_str()?.to_owned(), value))
        })
        .collect()
}

fn port(v: &Value, what: &str) -> Result<u16> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
        .with_context(|| format!("{what}: {v:?} is not a port"))
}

impl UserMesh {
    fn add_file(&mut self, file: &str, text_in: &str) -> Result<()> {
        let mut passed = String::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text_in).enumerate() {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .with_context(|| format!("document {}", i + 1))?;
            if value.is_null() {
                continue;
            }
            let kind = text(&value, &["kind"]).unwrap_or_default();
            let name = text(&value, &["metadata", "name"])
                .with_context(|| format!("document {} ({kind}): no metadata.name", i + 1))?;
            let namespace =
                text(&value, &["metadata", "namespace"]).unwrap_or_else(|| "default".into());
            let label = format!("{kind} {namespace}/{name}");
            match kind.as_str() {
                "Namespace" => {
                    let labels = string_map(value["metadata"].get("labels"));
                    if labels.get(DATAPLANE_MODE).map(String::as_str) == Some("ambient") {
                        self.ambient.insert(name.clone());
                    }
                    if labels.contains_key(USE_WAYPOINT) {
                        self.notes.push(format!(
                            "Namespace {name}: {USE_WAYPOINT} on a namespace is not carried by the \
                             lab; label the Services"
                        ));
                    }
                }
                "Pod" => {
                    let pod = pod_from(&name, &namespace, &value["metadata"], &value["spec"])
                        .with_context(|| label.clone())?;
                    self.pods.push(pod);
                }
                "Deployment" | "StatefulSet" | "ReplicaSet" => {
                    let spec = &value["spec"];
                    let replicas = spec.get("replicas").and_then(Value::as_u64).unwrap_or(1);
                    if replicas > MAX_REPLICAS {
                        self.notes.push(format!(
                            "{label}: {replicas} replicas; the lab runs {MAX_REPLICAS}"
                        ));
                    }
                    let template = &spec["template"];
                    for r in 0..replicas.min(MAX_REPLICAS) {
                        let pod_name = format!("{name}-{r}");
                        let pod = pod_from(
                            &pod_name,
                            &namespace,
                            &template["metadata"],
                            &template["spec"],
                        )
                        .with_context(|| format!("{label}: spec.template"))?;
                        self.pods.push(pod);
                    }
                }
                "Service" => {
                    let svc =
                        service_from(&name, &namespace, &value).with_context(|| label.clone())?;
                    self.services.push(svc);
                }
                "Gateway"
                    if text(&value, &["spec", "gatewayClassName"]).as_deref()
                        == Some("weft-waypoint") =>
                {
                    self.waypoints.push((namespace, name));
                }
                _ => {
                    passed.push_str("---\n");
                    passed.push_str(&serde_yaml::to_string(&value)?);
                }
            }
        }
        if !passed.is_empty() {
            self.passed_on.push((file.to_owned(), passed));
        }
        Ok(())
    }
}

fn pod_from(name: &str, namespace: &str, metadata: &Value, spec: &Value) -> Result<UserPod> {
    let mut ports = Vec::new();
    for (c, container) in spec
        .get("containers")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for p in container
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let number = port(
                &p["containerPort"],
                &format!("spec.containers[{c}].ports[].containerPort"),
            )?;
            ports.push((text(p, &["name"]), number));
        }
    }
    Ok(UserPod {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        service_account: text(spec, &["serviceAccountName"]).unwrap_or_else(|| "default".into()),
        labels: string_map(metadata.get("labels")),
        ports,
    })
}

fn service_from(name: &str, namespace: &str, value: &Value) -> Result<UserService> {
    let spec = &value["spec"];
    let cluster_ip = match text(spec, &["clusterIP"]).as_deref() {
        None | Some("") | Some("None") => None,
        Some(ip) => Some(
            ip.parse()
                .with_context(|| format!("spec.clusterIP: {ip:?} is not an IPv4 address"))?,
        ),
    };
    let mut ports = Vec::new();
    for (i, p) in spec
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let number = port(&p["port"], &format!("spec.ports[{i}].port"))?;
        let target = match p.get("targetPort") {
            None => Target::Number(number),
            Some(Value::String(s)) => match s.parse() {
                Ok(n) => Target::Number(n),
                Err(_) => Target::Name(s.clone()),
            },
            Some(v) => Target::Number(port(v, &format!("spec.ports[{i}].targetPort"))?),
        };
        ports.push((number, target));
    }
    if ports.is_empty() {
        bail!("spec.ports: a Service needs at least one port");
    }
    Ok(UserService {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        cluster_ip,
        selector: string_map(spec.get("selector")),
        ports,
        waypoint: string_map(value["metadata"].get("labels")).remove(USE_WAYPOINT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    weft.io/dataplane-mode: ambient
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: example/web
        ports: [{name: http, containerPort: 8000}]
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, labels: {weft.io/dataplane-mode: none}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {weft.io/use-waypoint: shop-waypoint}}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-waypoint, namespace: shop}
spec: {gatewayClassName: weft-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec: {hosts: [web], http: [{route: [{destination: {host: web}}]}]}
"#;

    #[test]
    fn a_directory_becomes_pods_services_waypoints_and_policies_passed_on() {
        let mut mesh = UserMesh::default();
        mesh.add_file("shop.yaml", SHOP).expect("reads");
        let names: Vec<&str> = mesh.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["web-0", "web-1", "legacy"]);
        assert!(mesh.enrolled(&mesh.pods[0]));
        assert!(!mesh.enrolled(&mesh.pods[2]), "opted out");
        let svc = &mesh.services[0];
        assert_eq!(svc.waypoint.as_deref(), Some("shop-waypoint"));
        let endpoints: Vec<&str> = mesh
            .endpoints(svc)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(endpoints, ["web-0", "web-1"]);
        assert_eq!(
            mesh.serving_ports(&mesh.pods[0])
                .into_iter()
                .collect::<Vec<_>>(),
            [8000]
        );
        assert_eq!(
            mesh.serving_ports(&mesh.pods[2])
                .into_iter()
                .collect::<Vec<_>>(),
            [8080]
        );
        assert_eq!(
            mesh.waypoints,
            [("shop".to_owned(), "shop-waypoint".to_owned())]
        );
        assert_eq!(mesh.passed_on.len(), 1);
        assert!(mesh.passed_on[0].1.contains("kind: VirtualService"));
        assert!(!mesh.passed_on[0].1.contains("kind: Service\n"));
    }

    #[test]
    fn a_bad_document_is_named_with_its_field() {
        let mut mesh = UserMesh::default();
        let err = mesh
            .add_file(
                "bad.yaml",
                "kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}\n",
            )
            .expect_err("a port above 65535");
        assert!(format!("{err:#}").contains("spec.ports[0].port"), "{err:#}");
        let err = UserMesh::default()
            .add_file("x.yaml", "kind: Pod\nmetadata: {}\n")
            .expect_err("no name");
        assert!(format!("{err:#}").contains("no metadata.name"), "{err:#}");
    }
}
