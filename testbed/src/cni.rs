//! Wiring pods the way a kubelet does: a network namespace per pod, the real `bridge` and
//! `host-local` CNI plugins run from the node's namespace, then `weft-cni` chained after them.

use std::io::Write;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, anyhow, ensure};

use crate::bed::TestBed;
use crate::net::{CNI_PATH, run};
use crate::pod::{Node, Pod};

impl TestBed {
    pub(crate) fn add_netns(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.netns_created.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"])
    }

    pub(crate) fn cni_config(&self, node: &Node) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("weft-{}", self.id),
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": format!("{}/24", node.pod_subnet) }]],
                "dataDir": self.dir.join("ipam").join(&node.name),
            }
        })
        .to_string()
    }

    /// Calls the bridge plugin in the node's namespace, as the kubelet's runtime would.
    pub(crate) fn cni(&self, node: &Node, pod_netns: &str, command: &str) -> Result<String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(Path::new(CNI_PATH).join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod_netns)
            .env("CNI_NETNS", Path::new("/run/netns").join(pod_netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running the bridge CNI plugin")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(self.cni_config(node).as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "CNI {command} for {pod_netns} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// Runs `weft-cni` for `pod` as the container runtime does after the primary plugin:
    /// `command` is ADD, DEL or CHECK. Returns the plugin's output, whatever its status.
    pub fn weft_cni(&self, pod: &Pod, command: &str) -> Result<Output> {
        let node = &self.nodes[pod.node];
        let prev: serde_json::Value = serde_json::from_str(&pod.cni_result).unwrap_or_default();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("weft-{}", self.id),
            "type": "weft-cni",
            "socket": self.cni_socket(pod.node),
            "timeoutSeconds": 5,
            "prevResult": prev,
        });
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(self.bin_dir.join("weft-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.netns)
            .env("CNI_NETNS", pod.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    pod.namespace, pod.name
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running weft-cni (run `cargo build --workspace --bins` first)")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(conf.to_string().as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Node `i`'s CNI socket.
    pub fn cni_socket(&self, i: usize) -> PathBuf {
        self.dir.join(&self.nodes[i].name).join("cni.sock")
    }

    /// The bpffs directory node `i`'s proxy pins its capture in.
    pub fn pin_dir(&self, i: usize) -> PathBuf {
        Path::new("/sys/fs/bpf/weft").join(format!("{}-{}", self.id, self.nodes[i].name))
    }
}
