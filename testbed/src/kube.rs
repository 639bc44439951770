//! Kubernetes mode: the bed's cluster lives in a real kube-apiserver (started inside node 1's
//! namespace, see [`crate::cluster`]), Weft is installed from `deploy/` with server-side apply,
//! and the controller watches the API with its own ServiceAccount's token, so the shipped RBAC
//! is what runs. The bed plays kubelet: its pods are created through the API, bound to their
//! nodes, run as network-namespace pods and given their status (IP, Running, Ready); node
//! proxies present tokens bound to a node-proxy pod on their node (audience `weft`), which
//! the controller checks with TokenReview. A waypoint's pod stands in for the one its
//! Deployment would run: it has the Gateway's label, an address and a token of its
//! ServiceAccount.

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
        // A node-proxy pod per node, as the DaemonSet would create, for tokens to be bound to.
        for node in &self.nodes {
            let file = self.dir.join(format!("{}-proxy-pod.yaml", node.name));
            std::fs::write(
                &file,
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: weft-node-proxy-{0}, namespace: weft-system}}\nspec: {{nodeName: {0}, serviceAccountName: weft-node-proxy, automountServiceAccountToken: false, containers: [{{name: node-proxy, image: weft/node-proxy}}]}}\n",
                    node.name
                ),
            )?;
            plane.run(&["apply", "-f", &file.display().to_string()])?;
            let pod = format!("weft-node-proxy-{}", node.name);
            let token = bound_token(&plane, "weft-system", "weft-node-proxy", &pod)?;
            std::fs::write(self.dir.join(format!("{}.credential", node.name)), token)?;
        }
        let token = plane.token("weft-system", "weft-controller", None)?;
        let kubeconfig = plane.token_kubeconfig("weft-controller", &token)?;
        let kube = self.kube.as_mut().context("not in Kubernetes mode")?;
        kube.plane = Some(plane);
        kube.controller_kubeconfig = Some(kubeconfig);
        self.kube_apply()?;
        // Each waypoint pod proves its ServiceAccount with a token bound to it (audience weft),
        // as the projected token in the controller's waypoint Deployment does.
        let plane = self.control_plane().context("not in Kubernetes mode")?;
        for w in &self.waypoints {
            let token = bound_token(plane, &w.namespace, &w.service_account, &w.name)?;
            std::fs::write(
                self.dir
                    .join(format!("waypoint.{}.{}.credential", w.namespace, w.name)),
                token,
            )?;
        }
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
            .map(|p| {
                format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}}}\nstatus: {{phase: Running, podIP: {2}, podIPs: [{{ip: {2}}}], conditions: [{{type: Ready, status: \"True\"}}]}}\n",
                    p.name, p.namespace, p.ip
                )
            })
            .collect();
        if !status.is_empty() {
            let file = self.dir.join("status.yaml");
            std::fs::write(&file, status)?;
            plane.run(&[
                "apply",
                "--server-side",
                "--field-manager=weft-testbed-kubelet",
                "--subresource=status",
                "-f",
                &file.display().to_string(),
            ])?;
        }
        Ok(())
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
