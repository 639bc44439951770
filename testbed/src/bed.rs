//! The test bed itself: its nodes and fabric, its lifetime (everything it made is torn down
//! when it is dropped, also when a test panics) and what it holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, anyhow, ensure};
use weft_controller::ca::Ca;
use weft_core::mesh::Service;

use crate::net::{CNI_PATH, run, sysctl};
use crate::pod::{Node, Pod};

/// The test bed. Dropping it tears everything down.
pub struct TestBed {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    pub(crate) fabric: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) pods: Vec<Pod>,
    pub(crate) services: Vec<Service>,
    pub(crate) ca: Ca,
    pub(crate) bin_dir: PathBuf,
    pub(crate) proxies: Vec<Option<Child>>,
    pub(crate) children: Vec<Child>,
    pub(crate) netns_created: Vec<String>,
    pub(crate) capture: CaptureMode,
    pub(crate) extra_proxy_args: Vec<String>,
    pub(crate) extra_waypoint_args: Vec<String>,
    /// Flags for one waypoint only, by name.
    pub(crate) one_waypoint_args: std::collections::HashMap<String, Vec<String>>,
    pub(crate) started: bool,
    /// Keep the directory (logs, manifests, certificates) when torn down.
    pub(crate) keep_files: bool,
    /// Whether the proxies take their config from a `weft-controller` fed with manifests.
    pub(crate) with_controller: bool,
    pub(crate) controller: Option<Child>,
    pub(crate) extra_controller_args: Vec<String>,
    pub(crate) ambient: BTreeMap<String, bool>,
    /// Waypoints (Gateways of class weft-waypoint) and their pods.
    pub(crate) waypoints: Vec<Pod>,
    /// Waypoints whose Gateway someone else created (`weft waypoint apply`): the bed applies
    /// no Gateway for them.
    pub(crate) external_gateways: std::collections::BTreeSet<(String, String)>,
    /// Labels on services (`weft.io/use-waypoint`), by (namespace, name).
    pub(crate) service_labels: BTreeMap<(String, String), Vec<(String, String)>>,
    /// Running waypoints' process ids.
    pub(crate) waypoint_pids: BTreeMap<(String, String), u32>,
    /// Kubernetes mode: a real API server the controller watches (see `kube.rs`).
    pub(crate) kube: Option<crate::cluster::Kube>,
}

/// How the node proxies capture pod traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// eBPF programs (the default).
    Ebpf,
    /// The nftables fallback.
    Nftables,
    /// eBPF, falling back to nftables if it cannot be loaded (the proxy's default).
    Auto,
}

impl CaptureMode {
    /// The `--capture` flag value.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Nftables => "nftables",
            Self::Auto => "auto",
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Drop for TestBed {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Directory holding the workspace's binaries: next to the running executable (or its parent,
/// for test binaries in `deps/`), or `WEFT_BIN_DIR`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("executable has no directory"))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

impl TestBed {
    /// Creates `nodes` nodes joined by a fabric. `label` appears in names and logs.
    pub fn new(label: &str, nodes: usize) -> Result<Self> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the network-namespace test bed needs root (network namespaces, nftables)"
        );
        ensure!(
            Path::new(CNI_PATH).join("bridge").exists(),
            "CNI plugins missing in {CNI_PATH}: apt-get install containernetworking-plugins"
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!(
            "wt{:x}{:x}{:x}",
            std::process::id() & 0xfffff,
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos & 0xfff
        );
        let dir = std::env::temp_dir().join(format!("weft-{label}-{id}"));
        std::fs::create_dir_all(dir.join("certs"))?;
        std::fs::create_dir_all(dir.join("ca"))?;
        // On disk, so that a controller started by the bed runs the same CA (plug-in CA).
        let ca = Ca::load_or_generate(&dir.join("ca"), "cluster.local")?;
        let mut bed = Self {
            fabric: format!("{id}-fab"),
            id,
            dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            ca,
            bin_dir: bin_dir()?,
            proxies: Vec::new(),
            children: Vec::new(),
            netns_created: Vec::new(),
            capture: CaptureMode::Ebpf,
            extra_proxy_args: Vec::new(),
            extra_waypoint_args: Vec::new(),
            one_waypoint_args: Default::default(),
            started: false,
            keep_files: false,
            with_controller: false,
            controller: None,
            extra_controller_args: Vec::new(),
            ambient: BTreeMap::new(),
            waypoints: Vec::new(),
            external_gateways: Default::default(),
            service_labels: BTreeMap::new(),
            waypoint_pids: BTreeMap::new(),
            kube: None,
        };
        bed.add_netns(&bed.fabric.clone())?;
        let fabric = bed.fabric.clone();
        run(
            "ip",
            &["-n", &fabric, "link", "add", "br0", "type", "bridge"],
        )?;
        run("ip", &["-n", &fabric, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let node = Node {
                name: format!("node{}", i + 1),
                netns: format!("{}-n{}", bed.id, i + 1),
                ip: Ipv4Addr::new(10, 254, 0, (i + 1) as u8),
                pod_subnet: Ipv4Addr::new(10, 10, (i + 1) as u8, 0),
            };
            bed.add_netns(&node.netns)?;
            let port = format!("n{}", i + 1);
            run(
                "ip",
                &[
                    "-n",
                    &fabric,
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &node.netns,
                ],
            )?;
            run(
                "ip",
                &["-n", &fabric, "link", "set", &port, "master", "br0", "up"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &node.netns,
                    "addr",
                    "add",
                    &format!("{}/24", node.ip),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", &node.netns, "link", "set", "eth0", "up"])?;
            sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
            bed.nodes.push(node);
        }
        // Every node routes the other nodes' pod subnets over the fabric.
        for node in &bed.nodes {
            for other in bed.nodes.iter().filter(|o| o.name != node.name) {
                run(
                    "ip",
                    &[
                        "-n",
                        &node.netns,
                        "route",
                        "add",
                        &format!("{}/24", other.pod_subnet),
                        "via",
                        &other.ip.to_string(),
                    ],
                )?;
            }
        }
        Ok(bed)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The test bed's working directory (config, certificates, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the mesh config the node proxies read.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    /// A summary of the bed for humans.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {} (netns {}, fabric {}, pods {}/24, capture: {}, pods reported by weft-cni)",
                node.name,
                node.netns,
                node.ip,
                node.pod_subnet,
                self.capture.flag()
            );
            let _ = writeln!(
                out,
                "    {:<12} {:<18} {:<15} {:<9} IDENTITY",
                "NAMESPACE", "POD", "IP", "MESH"
            );
            for pod in self.pods.iter().filter(|p| p.node == i) {
                // A waypoint speaks HBONE itself: it is in the mesh, though never captured.
                let (role, identity) = if self.is_waypoint(pod) {
                    ("waypoint", pod.identity().to_string())
                } else if pod.enrolled {
                    ("ambient", pod.identity().to_string())
                } else {
                    ("no mesh", String::new())
                };
                let _ = writeln!(
                    out,
                    "    {:<12} {:<18} {:<15} {:<9} {}",
                    pod.namespace, pod.name, pod.ip, role, identity
                );
            }
        }
        out
    }

    pub(crate) fn teardown(&mut self) {
        let _ = self.kill_controller();
        // The API server and etcd run in node 1's namespace: stopped before it goes.
        if let Some(kube) = self.kube.as_mut() {
            kube.plane = None;
        }
        for i in 0..self.proxies.len() {
            if let Some(mut child) = self.proxies[i].take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.stop_helpers();
        for pod in self.pods.clone() {
            let node = self.nodes[pod.node].clone();
            let _ = self.weft_cni(&pod, "DEL");
            let _ = self.cni(&node, &pod.netns, "DEL");
        }
        for i in 0..self.nodes.len() {
            let _ = std::fs::remove_dir_all(self.pin_dir(i));
        }
        for netns in self.netns_created.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &netns])
                .stderr(Stdio::null())
                .status();
        }
        if !self.keep_files && std::env::var_os("WEFT_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Keeps the bed's directory (logs, manifests, certificates) after it is torn down, as
    /// `WEFT_E2E_KEEP` does for tests.
    pub fn keep_files(&mut self) -> &mut Self {
        self.keep_files = true;
        self
    }
}
