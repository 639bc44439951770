//! The bed as kubelet and scheduler for what the cluster's own controllers create: a Node
//! object per bed node, the node-proxy DaemonSet's pods (bound to their node and reported
//! Running; the bed's node proxies present tokens bound to them), one pod of the controller's
//! Deployment (Ready while the bed's controller runs in its stead), and the pods of the waypoint
//! Deployments that Weft's controller applies (run from their own spec: [`crate::pod_runner`]).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::bed::TestBed;
use crate::cluster::ControlPlane;

/// The label the controller gives a waypoint's pods (the Gateway's name).
pub(crate) const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// The controller Deployment's pod label in `deploy/`.
const CONTROLLER_LABEL: &str = "app.kubernetes.io/name=weft-controller";
/// The node-proxy DaemonSet's pod label in `deploy/`.
const NODE_PROXY_LABEL: &str = "app.kubernetes.io/name=weft-node-proxy";
/// How long the cluster's controllers get to create a pod.
pub(crate) const POD_APPEARS_WITHIN: Duration = Duration::from_secs(30);

impl TestBed {
    /// Registers a Node per bed node, Ready, with its fabric address, as a kubelet does.
    pub(crate) fn register_nodes(&self, plane: &ControlPlane) -> Result<()> {
        let mut nodes = String::new();
        let mut status = String::new();
        for node in &self.nodes {
            nodes.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {0}, labels: {{kubernetes.io/hostname: {0}, kubernetes.io/os: linux}}}}\n",
                node.name
            ));
            status.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{}\"}}], conditions: [{{type: Ready, status: \"True\", reason: KubeletReady, message: weft test bed}}]}}\n",
                node.name, node.ip
            ));
        }
        kubelet_apply(plane, &self.dir.join("nodes.yaml"), &nodes, false)?;
        kubelet_apply(plane, &self.dir.join("nodes-status.yaml"), &status, true)
    }

    /// The node-proxy DaemonSet's pod on each node (by node index), once the DaemonSet
    /// controller has created them: bound to their node and reported Running on the node's
    /// address (host network).
    pub(crate) fn node_proxy_pods(&self, plane: &ControlPlane) -> Result<Vec<String>> {
        let deadline = Instant::now() + POD_APPEARS_WITHIN;
        let mut names = Vec::new();
        for node in &self.nodes {
            let pod = loop {
                let found = pods(plane, "weft-system", NODE_PROXY_LABEL)?
                    .into_iter()
                    .find(|p| daemon_pod_node(p) == Some(node.name.as_str()));
                if let Some(pod) = found {
                    break pod;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the DaemonSet controller made no node-proxy pod for {} in {POD_APPEARS_WITHIN:?}",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            let name = pod_name(&pod)?;
            if pod["spec"]["nodeName"].as_str().is_none() {
                bind(plane, &self.dir, "weft-system", &name, &node.name)?;
            }
            set_status(plane, &self.dir, "weft-system", &name, node.ip, true)?;
            names.push(name);
        }
        Ok(names)
    }

    /// One pod of the controller's Deployment, bound to node 1 and reported Running and Ready
    /// while the bed's controller process (which stands in for its container) is up.
    pub(crate) fn adopt_controller_pod(&self, plane: &ControlPlane) -> Result<()> {
        let deadline = Instant::now() + POD_APPEARS_WITHIN;
        let pod = loop {
            if let Some(pod) = pods(plane, "weft-system", CONTROLLER_LABEL)?
                .into_iter()
                .next()
            {
                break pod;
            }
            ensure!(
                Instant::now() < deadline,
                "kube-controller-manager made no controller pod in {POD_APPEARS_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let name = pod_name(&pod)?;
        let node = &self.nodes[0];
        if pod["spec"]["nodeName"].as_str().is_none() {
            bind(plane, &self.dir, "weft-system", &name, &node.name)?;
        }
        set_status(plane, &self.dir, "weft-system", &name, node.ip, true)
    }

    /// What a kubelet does when Weft is deleted: once the node-proxy DaemonSet's pod on a node
    /// is being deleted (or gone), its node proxy gets SIGTERM and the pod is removed; the
    /// controller, standing in for its Deployment's pods, is stopped with them. Returns when
    /// every node proxy has stopped, `within` at most.
    pub fn stop_deleted_weft_pods(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.proxies.iter().any(Option::is_some) {
            let plane = self.control_plane().context("not in Kubernetes mode")?;
            let list: Value = serde_json::from_str(&plane.run(&[
                "get",
                "pods",
                "-n",
                "weft-system",
                "-l",
                NODE_PROXY_LABEL,
                "-o",
                "json",
                "--ignore-not-found",
            ])?)
            .unwrap_or(Value::Null);
            let live: Vec<(String, bool)> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let node = daemon_pod_node(p)?.to_owned();
                    Some((node, p["metadata"]["deletionTimestamp"].is_null()))
                })
                .collect();
            let mut deleted = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                let running = live.iter().any(|(n, alive)| *n == node.name && *alive);
                if self.proxies[i].is_some() && !running {
                    deleted.push((i, node.name.clone()));
                }
            }
            for (i, node) in deleted {
                self.stop_proxy(i)?;
                let plane = self.control_plane().context("not in Kubernetes mode")?;
                if let Some(pod) = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| daemon_pod_node(p) == Some(node.as_str()))
                {
                    let name = pod_name(pod)?;
                    plane.run(&[
                        "delete",
                        "pod",
                        &name,
                        "-n",
                        "weft-system",
                        "--grace-period=0",
                        "--force",
                        "--ignore-not-found",
                    ])?;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the node-proxy pods were not deleted within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill_controller()
    }
}

/// Pods in `namespace` matching `selector` that are not being deleted.
pub(crate) fn pods(plane: &ControlPlane, namespace: &str, selector: &str) -> Result<Vec<Value>> {
    let list: Value = serde_json::from_str(
        &plane.run(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"])?,
    )?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect())
}

pub(crate) fn pod_name(pod: &Value) -> Result<String> {
    Ok(pod["metadata"]["name"]
        .as_str()
        .context("pod without name")?
        .to_owned())
}

/// The node a DaemonSet pod is for (its node affinity on `metadata.name`).
fn daemon_pod_node(pod: &Value) -> Option<&str> {
    if let Some(node) = pod["spec"]["nodeName"].as_str() {
        return Some(node);
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()?
        .iter()
        .flat_map(|term| term["matchFields"].as_array().into_iter().flatten())
        .find(|f| f["key"] == "metadata.name")?["values"][0]
        .as_str()
}

/// Binds `pod` to `node`, as the scheduler does.
pub(crate) fn bind(
    plane: &ControlPlane,
    dir: &std::path::Path,
    namespace: &str,
    pod: &str,
    node: &str,
) -> Result<()> {
    let file = dir.join(format!("binding-{namespace}-{pod}.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Binding\nmetadata: {{name: {pod}, namespace: {namespace}}}\ntarget: {{apiVersion: v1, kind: Node, name: {node}}}\n"
        ),
    )?;
    plane.run(&["create", "-f", file.to_str().context("path")?])?;
    Ok(())
}

/// Reports `pod` Running at `ip`, Ready or not, as its kubelet would.
pub(crate) fn set_status(
    plane: &ControlPlane,
    dir: &std::path::Path,
    namespace: &str,
    pod: &str,
    ip: std::net::Ipv4Addr,
    ready: bool,
) -> Result<()> {
    kubelet_apply(
        plane,
        &dir.join(format!("status-{namespace}-{pod}.yaml")),
        &pod_status(namespace, pod, ip, ready),
        true,
    )
}

/// A pod's status as its kubelet reports it: Running at `ip`, Ready or not.
pub(crate) fn pod_status(
    namespace: &str,
    pod: &str,
    ip: std::net::Ipv4Addr,
    ready: bool,
) -> String {
    let ready = if ready { "True" } else { "False" };
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {namespace}}}\nstatus: {{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}], conditions: [{{type: Ready, status: \"{ready}\"}}]}}\n"
    )
}

/// Writes `yaml` to `file` and applies it server-side as the bed's kubelet (the status
/// subresource with `status`).
pub(crate) fn kubelet_apply(
    plane: &ControlPlane,
    file: &std::path::Path,
    yaml: &str,
    status: bool,
) -> Result<()> {
    std::fs::write(file, yaml)?;
    let path = file.to_str().context("path")?;
    let mut args = vec![
        "apply",
        "--server-side",
        "--field-manager=weft-testbed-kubelet",
    ];
    if status {
        args.push("--subresource=status");
    }
    args.extend(["-f", path]);
    plane.run(&args)?;
    Ok(())
}
