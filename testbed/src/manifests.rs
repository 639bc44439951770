//! What the mesh is told: Kubernetes YAML in the controller's manifest directory, or the
//! node proxies' mesh config file when no controller runs.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use weft_core::mesh::{MeshConfig, Protocol, Workload};

use crate::bed::TestBed;

impl TestBed {
    /// The manifest directory the bed's controller reads.
    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Writes (atomically) one more manifest file for the controller.
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        let tmp = self.dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests_dir().join(file))?;
        Ok(())
    }

    /// Removes a manifest file written with [`write_manifest`](Self::write_manifest).
    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.manifests_dir().join(file))?;
        Ok(())
    }

    /// The cluster as Kubernetes YAML: namespaces (ambient where pods are enrolled), pods (with
    /// their node, IP and service account; an unenrolled pod in an ambient namespace opts out),
    /// services (selecting their endpoints by a label).
    pub fn manifests(&self) -> String {
        use std::collections::BTreeSet;
        let mut out = String::new();
        let namespaces: BTreeSet<&str> = self
            .pods
            .iter()
            .map(|p| p.namespace.as_str())
            .chain(self.services.iter().map(|s| s.namespace.as_str()))
            .collect();
        for ns in namespaces {
            let ambient = self
                .ambient
                .get(ns)
                .copied()
                .unwrap_or_else(|| self.pods.iter().any(|p| p.namespace == ns && p.enrolled));
            let labels = if ambient {
                "
  labels:
    weft.io/dataplane-mode: ambient"
            } else {
                ""
            };
            let _ = write!(
                out,
                "---
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}{labels}
"
            );
        }
        for p in &self.pods {
            let ambient = self.ambient.get(&p.namespace).copied().unwrap_or_else(|| {
                self.pods
                    .iter()
                    .any(|q| q.namespace == p.namespace && q.enrolled)
            });
            let mut labels = if p.labels.iter().any(|(k, _)| k == "app") {
                String::new()
            } else {
                format!(
                    "
    app: {}",
                    p.name
                )
            };
            let is_waypoint = self.is_waypoint(p);
            if is_waypoint && self.kube.is_some() {
                // On an API server the waypoint's pod comes from its Deployment.
                continue;
            }
            if ambient && !p.enrolled && !is_waypoint {
                labels.push_str(
                    "
    weft.io/dataplane-mode: none",
                );
            }
            for (k, v) in &p.labels {
                let _ = write!(
                    labels,
                    "
    {k}: \"{v}\""
                );
            }
            for s in self
                .services
                .iter()
                .filter(|s| s.namespace == p.namespace && s.endpoints.contains(&p.name))
            {
                let _ = write!(
                    labels,
                    "
    svc-{}: \"true\"",
                    s.name
                );
            }
            let _ = write!(
                out,
                "---
apiVersion: v1
kind: Pod
metadata:
  name: {}
  namespace: {}
  labels:{labels}
spec:
  nodeName: {}
  serviceAccountName: {}
  containers:
  - name: app
    image: example/app
status:
  phase: Running
  podIP: {}
",
                p.name, p.namespace, self.nodes[p.node].name, p.service_account, p.ip
            );
        }
        for s in &self.services {
            let ports: String = s
                .ports
                .iter()
                .map(|p| {
                    format!(
                        "
  - port: {}
    targetPort: {}",
                        p.port, p.target_port
                    )
                })
                .collect();
            let labels: String = self
                .service_labels
                .get(&(s.namespace.clone(), s.name.clone()))
                .map(|l| {
                    let mut text = String::from("\n  labels:");
                    for (k, v) in l {
                        let _ = write!(text, "\n    {k}: \"{v}\"");
                    }
                    text
                })
                .unwrap_or_default();
            let _ = write!(
                out,
                "---
apiVersion: v1
kind: Service
metadata:
  name: {0}
  namespace: {1}{labels}
spec:
  clusterIP: {2}
  selector:
    svc-{0}: \"true\"
  ports:{ports}
",
                s.name, s.namespace, s.vip
            );
        }
        for w in &self.waypoints {
            if self
                .external_gateways
                .contains(&(w.namespace.clone(), w.name.clone()))
            {
                continue;
            }
            let _ = write!(
                out,
                "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {}
  namespace: {}
spec:
  gatewayClassName: weft-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
",
                w.name, w.namespace
            );
        }
        out
    }

    /// The mesh config for the current pods and services.
    pub fn mesh_config(&self) -> MeshConfig {
        MeshConfig {
            trust_domain: "cluster.local".into(),
            workloads: self
                .pods
                .iter()
                .map(|p| Workload {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    service_account: p.service_account.clone(),
                    ip: p.ip.into(),
                    node: self.nodes[p.node].name.clone(),
                    protocol: if p.enrolled {
                        Protocol::Hbone
                    } else {
                        Protocol::Tcp
                    },
                    netns: None,
                    mtls: Default::default(),
                    authz: Vec::new(),
                    meta: Default::default(),
                })
                .collect(),
            services: self.services.clone(),
            waypoints: Vec::new(),
            outbound: Default::default(),
        }
    }

    /// Writes the config atomically (rename), as a config management tool would.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.config_path())?;
        Ok(())
    }

    /// Publishes the current pods and services: the manifests in controller mode, the config
    /// file otherwise.
    pub(crate) fn sync_mesh(&self) -> Result<()> {
        if self.kube.is_some() {
            self.kube_apply()
        } else if self.with_controller {
            std::fs::create_dir_all(self.manifests_dir())?;
            self.write_manifest("bed.yaml", &self.manifests())
        } else {
            self.write_config(&serde_yaml::to_string(&self.mesh_config())?)
        }
    }
}
