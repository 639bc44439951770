//! The bed's kubelet running a pod from its own spec: the waypoint Deployments' pods. The
//! image names the workspace binary, its volumes become files (a projected ServiceAccount
//! token from TokenRequest, ConfigMaps, emptyDirs), mount paths in its arguments point at
//! them, and the controller's Service address is reached through a DNAT rule in the pod's
//! namespace, as kube-proxy would do it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::bed::TestBed;
use crate::cluster::ControlPlane;
use crate::kubelet::{GATEWAY_NAME, POD_APPEARS_WITHIN, bind, pod_name, pods, set_status};
use crate::pod::Pod;
use crate::traffic::http_get_in;

impl TestBed {
    /// Runs the pod of a waypoint whose Gateway someone else created on the running bed (`weft
    /// waypoint apply`, kubectl): a network namespace on `node`, then the pod of the Deployment
    /// the controller made for it, from its spec, as for a declared waypoint.
    pub fn run_created_waypoint(
        &mut self,
        name: &str,
        namespace: &str,
        node: usize,
    ) -> Result<Pod> {
        ensure!(
            self.kube.is_some() && self.started,
            "run_created_waypoint needs a started bed in Kubernetes mode"
        );
        let node_ref = self.nodes.get(node).context("no such node")?.clone();
        let netns = format!("{}-p{}", self.id, self.pods.len() + 1);
        self.add_netns(&netns)?;
        let result = self.cni(&node_ref, &netns, "ADD")?;
        let ip = crate::net::parse_cni_ip(&result)?;
        let pod = Pod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: name.to_owned(),
            node,
            netns,
            ip,
            enrolled: false,
            cni_result: result,
            labels: vec![(GATEWAY_NAME.to_owned(), name.to_owned())],
        };
        self.pods.push(pod.clone());
        self.waypoints.push(pod.clone());
        self.external_gateways
            .insert((namespace.to_owned(), name.to_owned()));
        self.run_waypoint_pod(&pod)?;
        Ok(pod)
    }

    /// Runs the pod of `w`'s waypoint Deployment (created by the controller, its ReplicaSet by
    /// kube-controller-manager) in `w`'s network namespace, from the pod's own spec; returns
    /// once it reports ready, and reports it Ready.
    pub(crate) fn run_waypoint_pod(&mut self, w: &Pod) -> Result<()> {
        let (name, mut command, probe) = self.waypoint_pod_command(w)?;
        let log = std::fs::File::create(self.waypoint_log_path(w))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting pod {name}'s container"))?;
        self.waypoint_pids
            .insert((w.namespace.clone(), w.name.clone()), child.id());
        self.children.push(child);
        let port = probe["port"]
            .as_u64()
            .context("readiness probe without a port number")?;
        let path = probe["path"].as_str().unwrap_or("/");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::try_from(port)?));
            if let Ok((200, _)) = http_get_in(&w.netns_path(), addr, path) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "waypoint pod {name} not ready in 20 s; its log:\n{}",
                std::fs::read_to_string(self.waypoint_log_path(w)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let plane = self.control_plane().context("not in Kubernetes mode")?;
        set_status(plane, &self.dir, &w.namespace, &name, w.ip, true)
    }

    /// Finds, binds and prepares the waypoint's pod: its name, the command running its
    /// container in `w`'s namespace, and its readiness probe (`httpGet`).
    fn waypoint_pod_command(&self, w: &Pod) -> Result<(String, Command, Value)> {
        let plane = self.control_plane().context("not in Kubernetes mode")?;
        let selector = format!("{GATEWAY_NAME}={}", w.name);
        let deadline = Instant::now() + POD_APPEARS_WITHIN;
        let pod = loop {
            if let Some(pod) = pods(plane, &w.namespace, &selector)?.into_iter().next() {
                break pod;
            }
            ensure!(
                Instant::now() < deadline,
                "no pod for waypoint {}/{} after {POD_APPEARS_WITHIN:?} (did the controller apply its Deployment?); controller log:\n{}",
                w.namespace,
                w.name,
                self.controller_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let name = pod_name(&pod)?;
        let node = &self.nodes[w.node];
        bind(plane, &self.dir, &w.namespace, &name, &node.name)?;
        let spec = &pod["spec"];
        let container = &spec["containers"][0];
        let image = container["image"]
            .as_str()
            .context("container without image")?;
        let binary = self.bin_dir.join(image_binary(image)?);
        let root = self
            .dir
            .join("kubelet")
            .join(format!("{}.{name}", w.namespace));
        let account = spec["serviceAccountName"].as_str().unwrap_or("default");
        let mut mounts = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = mount["name"].as_str().context("mount without name")?;
            let volume = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == volume_name)
                .with_context(|| format!("no volume {volume_name}"))?;
            let host = root.join(volume_name);
            self.fill_volume(plane, volume, &host, &w.namespace, account, &name)?;
            let path = mount["mountPath"].as_str().context("mount without path")?;
            mounts.push((path.to_owned(), host));
        }
        // Longest mount path first, so a nested mount wins.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|arg| in_mounts(arg, &mounts))
            .collect();
        self.route_services(plane, w)?;
        set_status(plane, &self.dir, &w.namespace, &name, w.ip, false)?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", w.netns_path().display()))
            .arg(&binary)
            .args(&args)
            .env("RUST_LOG", "info");
        Ok((
            name,
            command,
            container["readinessProbe"]["httpGet"].clone(),
        ))
    }

    /// Writes `volume`'s files under `host`.
    fn fill_volume(
        &self,
        plane: &ControlPlane,
        volume: &Value,
        host: &std::path::Path,
        namespace: &str,
        account: &str,
        pod: &str,
    ) -> Result<()> {
        std::fs::create_dir_all(host)?;
        if volume.get("emptyDir").is_some() {
            return Ok(());
        }
        if let Some(config_map) = volume["configMap"]["name"].as_str() {
            let data = config_map_data(plane, namespace, config_map)?;
            for (key, value) in data.as_object().into_iter().flatten() {
                std::fs::write(host.join(key), value.as_str().unwrap_or_default())?;
            }
            return Ok(());
        }
        if let Some(sources) = volume["projected"]["sources"].as_array() {
            for source in sources {
                if let Some(token) = source.get("serviceAccountToken") {
                    let seconds = token["expirationSeconds"].as_u64().unwrap_or(3600);
                    let file = token["path"].as_str().context("token without path")?;
                    let mut args = vec![
                        "create".to_owned(),
                        "token".to_owned(),
                        account.to_owned(),
                        format!("--namespace={namespace}"),
                        format!("--duration={seconds}s"),
                        "--bound-object-kind=Pod".to_owned(),
                        format!("--bound-object-name={pod}"),
                    ];
                    // Without an audience the token is for the API server.
                    if let Some(audience) = token["audience"].as_str() {
                        args.push(format!("--audience={audience}"));
                    }
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    std::fs::write(host.join(file), plane.run(&args)?.trim())?;
                } else if let Some(config_map) = source.get("configMap") {
                    let name = config_map["name"]
                        .as_str()
                        .context("configMap without name")?;
                    let data = config_map_data(plane, namespace, name)?;
                    for item in config_map["items"].as_array().into_iter().flatten() {
                        let key = item["key"].as_str().context("item without key")?;
                        let file = item["path"].as_str().unwrap_or(key);
                        let value = data[key].as_str().unwrap_or_default();
                        std::fs::write(host.join(file), value)?;
                    }
                } else if let Some(downward) = source.get("downwardAPI") {
                    for item in downward["items"].as_array().into_iter().flatten() {
                        let field = item["fieldRef"]["fieldPath"].as_str();
                        ensure!(
                            field == Some("metadata.namespace"),
                            "the bed's kubelet projects metadata.namespace only: {item}"
                        );
                        let file = item["path"].as_str().context("item without path")?;
                        std::fs::write(host.join(file), namespace)?;
                    }
                } else {
                    bail!("projected source not run by the bed's kubelet: {source}");
                }
            }
            return Ok(());
        }
        bail!("volume kind not run by the bed's kubelet: {volume}")
    }

    /// The controller's Service as the pod reaches it: DNAT from its cluster IP and ports to
    /// where the bed's controller listens, in the pod's namespace (kube-proxy's job).
    fn route_services(&self, plane: &ControlPlane, w: &Pod) -> Result<()> {
        let svc: Value = serde_json::from_str(&plane.run(&[
            "get",
            "service",
            "weft-controller",
            "-n",
            "weft-system",
            "-o",
            "json",
        ])?)?;
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .context("controller Service without IP")?;
        let target = self.controller_addr();
        let mut rules = String::from(
            "table ip weft-bed-kube-proxy {\n chain out {\n  type nat hook output priority -100;\n",
        );
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let port = port["port"].as_u64().context("service port")?;
            rules.push_str(&format!(
                "  ip daddr {ip} tcp dport {port} dnat to {target}\n"
            ));
        }
        rules.push_str(" }\n}\n");
        let file = self.dir.join(format!("kube-proxy-{}.nft", w.netns));
        std::fs::write(&file, rules)?;
        let out = Command::new("nsenter")
            .arg(format!("--net={}", w.netns_path().display()))
            .args(["nft", "-f"])
            .arg(&file)
            .output()?;
        ensure!(
            out.status.success(),
            "nft in {}: {}",
            w.netns,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// The `data` of ConfigMap `namespace/name`.
fn config_map_data(plane: &ControlPlane, namespace: &str, name: &str) -> Result<Value> {
    let cm: Value = serde_json::from_str(&plane.run(&[
        "get",
        "configmap",
        name,
        "-n",
        namespace,
        "-o",
        "json",
    ])?)?;
    Ok(cm["data"].clone())
}

/// The workspace binary an image runs: `weft/waypoint:0.1.0` → `weft-waypoint`.
fn image_binary(image: &str) -> Result<String> {
    let repo = image.split(':').next().unwrap_or(image);
    let Some(component) = repo.strip_prefix("weft/") else {
        bail!("the bed runs Weft's images only, not {image}");
    };
    Ok(format!("weft-{component}"))
}

/// `arg` with a mount path (a whole path component prefix) replaced by its host directory.
fn in_mounts(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, host) in mounts {
        if let Some(rest) = arg.strip_prefix(path.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{}{rest}", host.display());
        }
    }
    arg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_name_workspace_binaries_and_mount_paths_become_host_paths() -> Result<()> {
        assert_eq!(image_binary("weft/waypoint:0.1.0")?, "weft-waypoint");
        assert!(image_binary("nginx:1").is_err());
        let mounts = vec![
            (
                "/var/run/weft/root".to_owned(),
                PathBuf::from("/tmp/x/root"),
            ),
            ("/var/run/weft".to_owned(), PathBuf::from("/tmp/x/run")),
        ];
        assert_eq!(
            in_mounts("/var/run/weft/root/root-cert.pem", &mounts),
            "/tmp/x/root/root-cert.pem"
        );
        assert_eq!(
            in_mounts("/var/run/weft/certs", &mounts),
            "/tmp/x/run/certs"
        );
        assert_eq!(in_mounts("/var/run/weftish", &mounts), "/var/run/weftish");
        assert_eq!(in_mounts("--name", &mounts), "--name");
        Ok(())
    }
}
