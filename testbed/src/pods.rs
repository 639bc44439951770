//! Pods, waypoints and services as a test declares them (a small builder DSL).

use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow, ensure};
use weft_core::identity::SpiffeId;
use weft_core::mesh::{Service, ServicePort};

use crate::bed::TestBed;
use crate::net::parse_cni_ip;
use crate::pod::Pod;

/// Builds a pod: `bed.pod("web").namespace("shop").service_account("web").on_node(1).add()`.
pub struct PodBuilder<'a> {
    bed: &'a mut TestBed,
    name: String,
    namespace: String,
    service_account: Option<String>,
    node: usize,
    enrolled: bool,
    labels: Vec<(String, String)>,
}

impl PodBuilder<'_> {
    /// A label on the pod (as its Deployment's template would set).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Kubernetes namespace (default `default`).
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_owned();
        self
    }

    /// Service account (default: the pod's name).
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = Some(sa.to_owned());
        self
    }

    /// Node index (default 0).
    pub fn on_node(mut self, node: usize) -> Self {
        self.node = node;
        self
    }

    /// Leaves the pod out of the mesh.
    pub fn not_enrolled(mut self) -> Self {
        self.enrolled = false;
        self
    }

    /// Creates the pod's namespace and network (CNI ADD).
    pub fn add(self) -> Result<Pod> {
        let sa = self.service_account.unwrap_or_else(|| self.name.clone());
        self.bed.add_pod(
            &self.name,
            &self.namespace,
            &sa,
            self.node,
            self.enrolled,
            self.labels,
        )
    }
}

impl TestBed {
    /// Starts building a pod.
    pub fn pod(&mut self, name: &str) -> PodBuilder<'_> {
        PodBuilder {
            bed: self,
            name: name.to_owned(),
            namespace: "default".to_owned(),
            service_account: None,
            node: 0,
            enrolled: true,
            labels: Vec::new(),
        }
    }

    pub(crate) fn add_pod(
        &mut self,
        name: &str,
        namespace: &str,
        sa: &str,
        node: usize,
        enrolled: bool,
        labels: Vec<(String, String)>,
    ) -> Result<Pod> {
        let node_ref = self
            .nodes
            .get(node)
            .ok_or_else(|| anyhow!("no node {node}"))?
            .clone();
        let netns = format!("{}-p{}", self.id, self.pods.len() + 1);
        self.add_netns(&netns)?;
        let result = self.cni(&node_ref, &netns, "ADD")?;
        let ip = parse_cni_ip(&result).with_context(|| format!("CNI result: {result}"))?;
        let pod = Pod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: sa.to_owned(),
            node,
            netns,
            ip,
            enrolled,
            cni_result: result,
            labels,
        };
        self.pods.push(pod.clone());
        if self.started {
            // A pod created on a running mesh: the API server knows it (config, certificate)
            // and the runtime finishes the plugin chain with weft-cni.
            if enrolled && !self.with_controller {
                self.issue_cert(&pod.identity())?;
            }
            self.sync_mesh()?;
            let out = self.weft_cni(&pod, "ADD")?;
            ensure!(
                out.status.success(),
                "weft-cni ADD for {name} failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(pod)
    }

    /// Enrolls or unenrolls a running pod (its workload's protocol in the config), as the
    /// controller does when a namespace or pod label changes.
    pub fn set_enrolled(&mut self, pod: &Pod, enrolled: bool) -> Result<()> {
        if enrolled && !self.with_controller {
            self.issue_cert(&pod.identity())?;
        }
        for p in self.pods.iter_mut().filter(|p| p.netns == pod.netns) {
            p.enrolled = enrolled;
        }
        self.sync_mesh()
    }

    /// Labels namespace `ns` ambient (or removes the label), as `kubectl label` would: its pods
    /// are enrolled (or released). Controller mode only.
    pub fn label_namespace(&mut self, ns: &str, ambient: bool) -> Result<()> {
        ensure!(
            self.with_controller,
            "label_namespace needs with_controller()"
        );
        if self.kube.is_some() {
            // As an operator does it: kubectl label.
            let label = if ambient {
                "weft.io/dataplane-mode=ambient".to_owned()
            } else {
                "weft.io/dataplane-mode-".to_owned()
            };
            self.kubectl(&["label", "namespace", ns, &label, "--overwrite"])?;
            self.ambient.insert(ns.to_owned(), ambient);
            for p in self.pods.iter_mut().filter(|p| p.namespace == ns) {
                p.enrolled = ambient;
            }
            // Nothing else changes: the controller watches the label, the CA issues the certs.
            return Ok(());
        }
        self.ambient.insert(ns.to_owned(), ambient);
        for p in self.pods.iter_mut().filter(|p| p.namespace == ns) {
            p.enrolled = ambient;
        }
        let ids: Vec<SpiffeId> = self
            .pods
            .iter()
            .filter(|p| p.enrolled)
            .map(Pod::identity)
            .collect();
        for id in ids {
            self.issue_cert(&id)?;
        }
        self.sync_mesh()
    }

    /// Declares a service with a VIP, one port, and the named pods as endpoints.
    pub fn service(
        &mut self,
        name: &str,
        namespace: &str,
        vip: Ipv4Addr,
        port: u16,
        target_port: u16,
        endpoints: &[&Pod],
    ) {
        self.service_ports(name, namespace, vip, &[(port, target_port)], endpoints);
    }

    /// Declares a service with several (port, target port) pairs.
    pub fn service_ports(
        &mut self,
        name: &str,
        namespace: &str,
        vip: Ipv4Addr,
        ports: &[(u16, u16)],
        endpoints: &[&Pod],
    ) {
        self.services.push(Service {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            vip: vip.into(),
            ports: ports
                .iter()
                .map(|&(port, target_port)| ServicePort { port, target_port })
                .collect(),
            endpoints: endpoints.iter().map(|p| p.name.clone()).collect(),
            waypoint: None,
        });
    }

    /// Declares a waypoint, as a Gateway of class `weft-waypoint` would have the controller
    /// deploy it: its pod (service account = its name, labelled with the gateway name) on
    /// `node`, running `weft-waypoint` once the bed starts. Controller mode, before `start`.
    pub fn waypoint(&mut self, name: &str, namespace: &str, node: usize) -> Result<Pod> {
        ensure!(
            self.with_controller && !self.started,
            "waypoints need with_controller() and are declared before start()"
        );
        let pod = self.add_pod(
            name,
            namespace,
            name,
            node,
            false,
            vec![(
                "gateway.networking.k8s.io/gateway-name".to_owned(),
                name.to_owned(),
            )],
        )?;
        self.waypoints.push(pod.clone());
        Ok(pod)
    }

    /// An ingress gateway's pod (manifest-directory mode), with `labels` for an Istio
    /// Gateway's `selector` to pick: run as `weft-waypoint` (the gateway role) with its
    /// service account `name`, and no waypoint Gateway of its own. The Gateway selecting it
    /// must be in the manifests before [`start`](Self::start) (its certificate is issued
    /// only to a gateway the controller runs): see
    /// [`preload_manifest`](Self::preload_manifest).
    pub fn ingress_gateway(
        &mut self,
        name: &str,
        namespace: &str,
        node: usize,
        labels: &[(&str, &str)],
    ) -> Result<Pod> {
        ensure!(
            self.with_controller && !self.started && self.kube.is_none(),
            "ingress gateways need with_controller() (manifest mode) and are declared before start()"
        );
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let pod = self.add_pod(name, namespace, name, node, false, labels)?;
        self.waypoints.push(pod.clone());
        self.external_gateways
            .insert((namespace.to_owned(), name.to_owned()));
        Ok(pod)
    }

    /// A self-signed certificate for `host` and its key, written as a mounted TLS Secret
    /// would be: `<dir>/<name>/tls.crt` and `tls.key`. Returns the certificate (PEM), for
    /// clients to trust.
    pub fn tls_credential(&self, dir: &std::path::Path, name: &str, host: &str) -> Result<String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
        let cert = params.self_signed(&key)?;
        let at = dir.join(name);
        std::fs::create_dir_all(&at)?;
        std::fs::write(at.join("tls.crt"), cert.pem())?;
        std::fs::write(at.join("tls.key"), key.serialize_pem())?;
        Ok(cert.pem())
    }

    /// Writes a manifest for the controller before the bed starts (it reads it from the
    /// first tick).
    pub fn preload_manifest(&mut self, file: &str, text: &str) -> Result<()> {
        std::fs::create_dir_all(self.manifests_dir())?;
        self.write_manifest(file, text)
    }

    /// Labels a service `weft.io/use-waypoint=<waypoint>` (or removes the label with `None`),
    /// as `kubectl label service` would.
    pub fn use_waypoint(
        &mut self,
        namespace: &str,
        service: &str,
        waypoint: Option<&str>,
    ) -> Result<()> {
        let labels = self
            .service_labels
            .entry((namespace.to_owned(), service.to_owned()))
            .or_default();
        labels.retain(|(k, _)| k != "weft.io/use-waypoint");
        if let Some(w) = waypoint {
            labels.push(("weft.io/use-waypoint".to_owned(), w.to_owned()));
        }
        if self.started {
            self.sync_mesh()?;
        }
        Ok(())
    }
}
