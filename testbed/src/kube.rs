//! Kubernetes mode: the bed's cluster lives in a real kube-apiserver (started inside node 1's
//! namespace, see [`crate::cluster`]), Weft is installed from `deploy/` with server-side apply,
//! and the controller watches the API with its own ServiceAccount's token, so the shipped RBAC
//! is what runs. The bed plays kubelet: its pods are created through the API, bound to their
//! nodes, run as network-namespace pods and given their status (IP, Running, Ready); node
//! proxies present tokens bound to a node-proxy pod on their node (audience `weft`), which
//! the controller checks with TokenReview. Node objects, the node-proxy DaemonSet's pods and
//! the pods of the waypoint Deployments the controller creates are handled by the bed's
//! kubelet ([`crate::kubelet`]).

use std::path::Path;

use anyhow::{Context, Result};

use crate::bed::TestBed;
use crate::cluster::{ControlPlane, Kube};

impl TestBed {
    /// Runs the bed on a real API server from `assets` (see [`crate::cluster::assets`]); the
    /// controller comes with it.
    pub fn with_kubernetes(&mut self, assets: &Path) -> &mut Self {
        self.with_controller = true;
        self.kube = Some(Kube {
            assets: assets.to_owned(),
            plane: None,
            controller_kubeconfig: None,
        });
        self
    }

    /// The control plane, once [`start`](Self::start) has run in Kubernetes mode.
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        self.kube.as_ref().and_then(|k| k.plane.as_ref())
    }

    /// The control plane, to stop and start its components.
    pub fn control_plane_mut(&mut self) -> Option<&mut ControlPlane> {
        self.kube.as_mut().and_then(|k| k.plane.as_mut())
    }

    /// Starts another controller replica beside the bed's (`--identity bed-controller`), in
    /// node 1's namespace on the controller's ServiceAccount token; `n` (1, 2...) picks its
    /// ports. It competes for the Lease; stopped with the bed. Returns its process id.
    pub fn start_controller_replica(&mut self, identity: &str, n: u16) -> Result<u32> {
        let plane = self.control_plane().context("not in Kubernetes mode")?;
        let token = plane.token("weft-system", "weft-controller", None)?;
        let kubeconfig = plane.token_kubeconfig(&format!("weft-controller-{identity}"), &token)?;
        let log = std::fs::File::create(self.dir.join(format!("controller-{identity}.log")))?;
        let node = &self.nodes[0];
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .arg(self.bin_dir.join("weft-controller"))
            .args(["--identity", identity])
            .args(["--listen", &format!("{}:{}", node.ip, 15012 + 100 * n)])
            .args(["--admin-addr", &format!("127.0.0.1:{}", 15014 + 100 * n)])
            .args([
                "--readiness-addr",
                &format!("127.0.0.1:{}", 15022 + 100 * n),
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", 15019 + 100 * n)])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting weft-controller")?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// The Lease's holder (`bed-controller` is the bed's own controller).
    pub fn lease_holder(&self) -> Result<String> {
        self.kubectl(&[
            "get",
            "lease",
            "weft-controller",
            "-n",
            "weft-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    }

    /// Runs kubectl as cluster admin against the bed's API server.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.control_plane()
            .context("not in Kubernetes mode (with_kubernetes, then start)")?
            .run(args)
    }

    /// Starts the control plane, installs Weft, creates the cluster's objects, tokens for the
    /// node proxies and the controller's kubeconfig.
    pub(crate) fn start_kubernetes(&mut self) -> Result<()> {
        let assets = self
            .kube
            .as_ref()
            .map(|k| k.assets.clone())
            .context("not in Kubernetes mode")?;
        let plane = ControlPlane::start_in(&assets, &self.id, Some(&self.nodes[0].netns))?;
        plane.install_crds()?;
        plane.apply_deploy("base")?;
        // The bed's CA as a plug-in CA: the controller loads it instead of generating one, so
        // the trust files the bed wrote stay true.
        plane.run(&[
            "create",
            "secret",
            "generic",
            "weft-ca",
            "-n",
            "weft-system",
            &format!("--from-file={}", self.dir.join("ca").display()),
        ])?;
        // The nodes, as their kubelets register them; the DaemonSet controller then makes a
        // node-proxy pod per node, and each node proxy presents a token bound to its pod.
        self.register_nodes(&plane)?;
        for (node, pod) in self.nodes.iter().zip(self.node_proxy_pods(&plane)?) {
            let token = bound_token(&plane, "weft-system", "weft-node-proxy", &pod)?;
            std::fs::write(self.dir.join(format!("{}.credential", node.name)), token)?;
        }
        let token = plane.token("weft-system", "weft-controller", None)?;
        let kubeconfig = plane.token_kubeconfig("weft-controller", &token)?;
        let kube = self.kube.as_mut().context("not in Kubernetes mode")?;
        kube.plane = Some(plane);
        kube.controller_kubeconfig = Some(kubeconfig);
        // Waypoints' pods come from the Deployments the controller applies (see
        // `run_waypoint_pod`), not from the bed.
        self.kube_apply()?;
        Ok(())
    }

    /// Applies the bed's cluster (namespaces, pods, services) through the API and gives each
    /// pod the status a kubelet would report.
    pub(crate) fn kube_apply(&self) -> Result<()> {
        let Some(plane) = self.control_plane() else {
            return Ok(());
        };
        // Namespaces and the pods' ServiceAccounts first: a pod naming an account that does
        // not exist is refused.
        let mut accounts = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.pods {
            if self.is_waypoint(p) {
                // The controller applies the waypoint's account; its namespace is still needed.
                if seen.insert((p.namespace.clone(), String::new())) {
                    accounts.push_str(&format!(
                        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
                        p.namespace
                    ));
                }
                continue;
            }
            if seen.insert((p.namespace.clone(), p.service_account.clone())) {
                accounts.push_str(&format!(
                    "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {0}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {1}, namespace: {0}}}\n",
                    p.namespace, p.service_account
                ));
            }
        }
        if self.pods.is_empty() && self.services.is_empty() {
            return Ok(());
        }
        let first = self.dir.join("accounts.yaml");
        std::fs::write(&first, &accounts)?;
        if !accounts.is_empty() {
            plane.run(&[
                "apply",
                "--server-side",
                "--field-manager=weft-testbed-accounts",
                "-f",
                &first.display().to_string(),
            ])?;
        }
        let file = self.dir.join("cluster.yaml");
        std::fs::write(&file, self.manifests())?;
        plane.run(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=weft-testbed",
            "-f",
            &file.display().to_string(),
        ])?;
        // What a kubelet reports, for every pod in one server-side apply of the status.
        let status: String = self
            .pods
            .iter()
            .filter(|p| !self.is_waypoint(p))
            .map(|p| crate::kubelet::pod_status(&p.namespace, &p.name, p.ip, true))
            .collect();
        if !status.is_empty() {
            crate::kubelet::kubelet_apply(plane, &self.dir.join("status.yaml"), &status, true)?;
        }
        Ok(())
    }
}

impl TestBed {
    /// Whether `p` is a waypoint's pod.
    pub(crate) fn is_waypoint(&self, p: &crate::Pod) -> bool {
        self.waypoints
            .iter()
            .any(|w| w.name == p.name && w.namespace == p.namespace)
    }
}

/// A token of ServiceAccount `namespace/account` for audience `weft`, bound to `pod` (so it
/// names the pod's node, as a projected token does).
fn bound_token(plane: &ControlPlane, namespace: &str, account: &str, pod: &str) -> Result<String> {
    let token = plane.run(&[
        "create",
        "token",
        account,
        "-n",
        namespace,
        "--audience=weft",
        "--duration=2h",
        "--bound-object-kind=Pod",
        &format!("--bound-object-name={pod}"),
    ])?;
    Ok(token.trim().to_owned())
}
