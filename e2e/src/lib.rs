//! The network-namespace test bed: "nodes" and "pods" as network namespaces on one Linux
//! machine, wired the way a cluster is. Every node is joined to a fabric (a bridge in a namespace
//! of its own); pods are created by calling the real `bridge` and `host-local` CNI plugins from
//! inside the node's namespace, as a kubelet would. One real `weft-node-proxy` runs per node.
//!
//! Names are unique per test bed, traffic stays inside its namespaces, and everything is torn
//! down when the [`TestBed`] is dropped — also when a test panics.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let mut bed = weft_e2e::TestBed::new("demo", 2)?;
//! let client = bed.pod("client").namespace("shop").on_node(0).add()?;
//! let server = bed.pod("web").namespace("shop").on_node(1).add()?;
//! bed.start()?;
//! let out = bed.exec(&client, &["curl", "-s", &format!("http://{}:8080/", server.ip)])?;
//! # Ok(()) }
//! ```

pub mod pcap;
pub mod rogue;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use weft_controller::ca::{Ca, DEFAULT_WORKLOAD_TTL};
use weft_core::identity::{SpiffeId, WorkloadCsr};
use weft_core::mesh::{MeshConfig, Protocol, Service, ServicePort, Workload};

/// Where Debian's containernetworking-plugins put the CNI plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// A node of the test bed.
#[derive(Clone, Debug)]
pub struct Node {
    /// Logical name (`node1`...), as workloads refer to it.
    pub name: String,
    /// The network namespace.
    pub netns: String,
    /// Its address on the fabric.
    pub ip: Ipv4Addr,
    /// Pod subnet (`/24`).
    pub pod_subnet: Ipv4Addr,
}

/// A pod of the test bed.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Index of its node.
    pub node: usize,
    /// The network namespace.
    pub netns: String,
    /// The IP the CNI plugin gave it.
    pub ip: Ipv4Addr,
    /// Whether it is enrolled in the mesh.
    pub enrolled: bool,
    /// The primary (bridge) plugin's result, the `prevResult` weft-cni is chained on.
    pub cni_result: String,
    /// Extra labels (e.g. `version: v1`).
    pub labels: Vec<(String, String)>,
}

impl Pod {
    /// `/run/netns/<netns>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Its SPIFFE identity.
    pub fn identity(&self) -> SpiffeId {
        SpiffeId::new("cluster.local", &self.namespace, &self.service_account)
    }
}

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

/// The test bed. Dropping it tears everything down.
pub struct TestBed {
    id: String,
    dir: PathBuf,
    fabric: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    ca: Ca,
    bin_dir: PathBuf,
    proxies: Vec<Option<Child>>,
    children: Vec<Child>,
    netns_created: Vec<String>,
    capture: CaptureMode,
    extra_proxy_args: Vec<String>,
    started: bool,
    /// Whether the proxies take their config from a `weft-controller` fed with manifests.
    with_controller: bool,
    controller: Option<Child>,
    extra_controller_args: Vec<String>,
    ambient: BTreeMap<String, bool>,
    /// Waypoints (Gateways of class weft-waypoint) and their pods.
    waypoints: Vec<Pod>,
    /// Labels on services (`weft.io/use-waypoint`), by (namespace, name).
    service_labels: BTreeMap<(String, String), Vec<(String, String)>>,
    /// Running waypoints' process ids.
    waypoint_pids: BTreeMap<(String, String), u32>,
}

/// A long-lived connection started by [`TestBed::long_lived_connection`].
pub struct LongLived(std::thread::JoinHandle<std::io::Result<Output>>);

impl LongLived {
    /// Waits for the run to end; an error (with the load generator's stderr) if the connection
    /// broke, else its JSON measurement.
    pub fn finish(self) -> Result<serde_json::Value> {
        let out = self
            .0
            .join()
            .map_err(|_| anyhow!("load thread panicked"))?
            .context("running weft-bench load")?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }
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
            started: false,
            with_controller: false,
            controller: None,
            extra_controller_args: Vec::new(),
            ambient: BTreeMap::new(),
            waypoints: Vec::new(),
            service_labels: BTreeMap::new(),
            waypoint_pids: BTreeMap::new(),
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
        self.services.push(Service {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            vip: vip.into(),
            ports: vec![ServicePort { port, target_port }],
            endpoints: endpoints.iter().map(|p| p.name.clone()).collect(),
            waypoint: None,
        });
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

    /// The mesh CA of this bed.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    fn add_pod(
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

    /// Chooses how the node proxies capture traffic (before [`start`](Self::start)); the
    /// default is eBPF.
    pub fn capture_mode(&mut self, mode: CaptureMode) -> &mut Self {
        self.capture = mode;
        self
    }

    /// Extra flags for every node proxy (before [`start`](Self::start)).
    pub fn proxy_args(&mut self, args: &[&str]) -> &mut Self {
        self.extra_proxy_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
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

    fn pin_dir(&self, i: usize) -> PathBuf {
        Path::new("/sys/fs/bpf/weft").join(format!("{}-{}", self.id, self.nodes[i].name))
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

    /// Runs the proxies from a `weft-controller` (in node 1's namespace, fed with Kubernetes
    /// manifests the bed writes) instead of a config file. Call before [`start`](Self::start).
    pub fn with_controller(&mut self) -> &mut Self {
        self.with_controller = true;
        self
    }

    /// Extra flags for the controller (before [`start`](Self::start)).
    pub fn controller_args(&mut self, args: &[&str]) -> &mut Self {
        self.extra_controller_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Node `i`'s credential for the controller.
    pub fn node_credential(&self, i: usize) -> Result<String> {
        Ok(std::fs::read_to_string(
            self.dir.join(format!("{}.credential", self.nodes[i].name)),
        )?)
    }

    /// The controller's gRPC address.
    pub fn controller_address(&self) -> SocketAddr {
        self.controller_addr()
    }

    /// Labels namespace `ns` ambient (or removes the label), as `kubectl label` would: its pods
    /// are enrolled (or released). Controller mode only.
    pub fn label_namespace(&mut self, ns: &str, ambient: bool) -> Result<()> {
        ensure!(
            self.with_controller,
            "label_namespace needs with_controller()"
        );
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
            let is_waypoint = self
                .waypoints
                .iter()
                .any(|w| w.name == p.name && w.namespace == p.namespace);
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

    /// Publishes the current pods and services: the manifests in controller mode, the config
    /// file otherwise.
    fn sync_mesh(&self) -> Result<()> {
        if self.with_controller {
            std::fs::create_dir_all(self.manifests_dir())?;
            self.write_manifest("bed.yaml", &self.manifests())
        } else {
            self.write_config(&serde_yaml::to_string(&self.mesh_config())?)
        }
    }

    fn controller_addr(&self) -> SocketAddr {
        SocketAddr::from((self.nodes[0].ip, 15012))
    }

    fn spawn_controller(&self) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.controller_log_path())?;
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.nodes[0].netns))
            .arg(self.bin_dir.join("weft-controller"))
            .arg("--manifests")
            .arg(self.manifests_dir())
            .arg("--ca-dir")
            .arg(self.dir.join("ca"))
            .arg("--node-credentials")
            .arg(self.dir.join("node-credentials.yaml"))
            .args(["--listen", &self.controller_addr().to_string()])
            .args(["--refresh-interval-ms", "50"])
            .args(&self.extra_controller_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting weft-controller (run `cargo build --workspace --bins` first)")
    }

    fn start_controller(&mut self) -> Result<()> {
        let child = self.spawn_controller()?;
        self.controller = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = self.controller_get("/healthz/ready") {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "controller not ready in 10 s; its log:\n{}",
                self.controller_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the controller (SIGKILL).
    pub fn kill_controller(&mut self) -> Result<()> {
        if let Some(mut child) = self.controller.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the controller again.
    pub fn restart_controller(&mut self) -> Result<()> {
        self.kill_controller()?;
        self.start_controller()
    }

    /// GET on the controller's admin endpoint (127.0.0.1:15014 in node 1's namespace).
    pub fn controller_get(&self, path: &str) -> Result<(u16, String)> {
        http_get_in(
            &Path::new("/run/netns").join(&self.nodes[0].netns),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 15014)),
            path,
        )
    }

    /// Path of the controller's log.
    pub fn controller_log_path(&self) -> PathBuf {
        self.dir.join("controller.log")
    }

    /// The controller's log so far.
    pub fn controller_log(&self) -> String {
        std::fs::read_to_string(self.controller_log_path()).unwrap_or_default()
    }

    fn cni_config(&self, node: &Node) -> String {
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
    fn cni(&self, node: &Node, pod_netns: &str, command: &str) -> Result<String> {
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

    fn add_netns(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.netns_created.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"])
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
                })
                .collect(),
            services: self.services.clone(),
            waypoints: Vec::new(),
        }
    }

    /// Writes the config atomically (rename), as a config management tool would.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.config_path())?;
        Ok(())
    }

    /// Issues a certificate for `identity` (a CSR signed by the bed's CA, as the node proxy's CA
    /// client will do) into every node's certificate directory.
    pub fn issue_cert(&self, identity: &SpiffeId) -> Result<()> {
        let csr = WorkloadCsr::generate(identity)?;
        let issued = self
            .ca
            .sign_csr(&csr.csr_pem, identity, DEFAULT_WORKLOAD_TTL)?;
        for i in 0..self.nodes.len() {
            let dir = self
                .node_cert_dir(i)
                .join(identity.namespace())
                .join(identity.service_account());
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("key.pem"), &csr.key_pem)?;
            std::fs::write(dir.join("cert.pem"), &issued.chain_pem)?;
        }
        Ok(())
    }

    /// Node `i`'s certificate directory (each node proxy has its own, as on real nodes).
    pub fn node_cert_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("certs-{}", self.nodes[i].name))
    }

    fn waypoint_cert_dir(&self, w: &Pod) -> PathBuf {
        self.dir.join(format!("certs-waypoint-{}", w.name))
    }

    /// Writes config and certificates and starts one node proxy per node; returns when all
    /// report ready.
    pub fn start(&mut self) -> Result<()> {
        // The bootstrap trust bundle: for the bed's own clients, each node, each waypoint.
        std::fs::write(self.dir.join("certs/root-cert.pem"), self.ca.root_pem())?;
        let mut cert_dirs: Vec<PathBuf> = (0..self.nodes.len())
            .map(|i| self.node_cert_dir(i))
            .collect();
        cert_dirs.extend(self.waypoints.iter().map(|w| self.waypoint_cert_dir(w)));
        for dir in cert_dirs {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("root-cert.pem"), self.ca.root_pem())?;
        }
        let identities: std::collections::BTreeSet<_> = self
            .pods
            .iter()
            .filter(|p| p.enrolled)
            .map(Pod::identity)
            .collect();
        // With a controller, the node proxies get their certificates from its CA.
        if !self.with_controller {
            for id in &identities {
                self.issue_cert(id)?;
            }
        }
        self.sync_mesh()?;
        if self.with_controller {
            let credentials: BTreeMap<String, String> = self
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .chain(
                    self.waypoints
                        .iter()
                        .map(|w| format!("waypoint.{}.{}", w.namespace, w.name)),
                )
                .map(|name| {
                    let token = format!("{}-{name}-credential", self.id);
                    (name, token)
                })
                .collect();
            for (node, token) in &credentials {
                std::fs::write(self.dir.join(format!("{node}.credential")), token)?;
            }
            std::fs::write(
                self.dir.join("node-credentials.yaml"),
                serde_yaml::to_string(&credentials)?,
            )?;
            self.start_controller()?;
        }
        for i in 0..self.nodes.len() {
            let child = self.spawn_proxy(i)?;
            self.proxies.push(Some(child));
        }
        for i in 0..self.nodes.len() {
            self.wait_ready(i)?;
        }
        self.started = true;
        // Pods created before the proxies: the runtime retries the chain until weft-cni
        // succeeds, as a kubelet does while the node proxy DaemonSet starts.
        for pod in self.pods.clone() {
            let out = self.weft_cni(&pod, "ADD")?;
            ensure!(
                out.status.success(),
                "weft-cni ADD for {} failed: {}\nproxy log:\n{}",
                pod.name,
                String::from_utf8_lossy(&out.stdout),
                self.proxy_log(pod.node)
            );
        }
        for w in self.waypoints.clone() {
            self.start_waypoint(&w)?;
        }
        Ok(())
    }

    /// Runs `weft-waypoint` in its pod (it gets its certificate from the controller's CA);
    /// returns when it reports ready.
    fn start_waypoint(&mut self, w: &Pod) -> Result<()> {
        let credential = self
            .dir
            .join(format!("waypoint.{}.{}.credential", w.namespace, w.name));
        let log = std::fs::File::create(self.waypoint_log_path(w))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", w.netns_path().display()))
            .arg(self.bin_dir.join("weft-waypoint"))
            .args(["--name", &w.name, "--namespace", &w.namespace])
            .args(["--service-account", &w.service_account])
            .args(["--controller", &self.controller_addr().to_string()])
            .arg("--controller-credential")
            .arg(&credential)
            .arg("--cert-dir")
            .arg(self.waypoint_cert_dir(w))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting weft-waypoint (run `cargo build --workspace --bins` first)")?;
        self.waypoint_pids
            .insert((w.namespace.clone(), w.name.clone()), child.id());
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http_get_in(
                &w.netns_path(),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 15020)),
                "/healthz/ready",
            );
            if let Ok((200, _)) = ready {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "waypoint {} not ready in 20 s; its log:\n{}",
                w.name,
                std::fs::read_to_string(self.waypoint_log_path(w)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the controller's certificate service for `identity` with `credential`, from node
    /// 1's namespace: the chain (PEM), or the refusal's code and message.
    pub fn ask_for_cert(
        &self,
        credential: &str,
        identity: &weft_core::identity::SpiffeId,
    ) -> Result<Result<String, (tonic::Code, String)>> {
        use weft_core::api::v1;
        let bundle =
            weft_core::identity::TrustBundle::load(&self.dir().join("certs/root-cert.pem"))?;
        let addr = self.controller_address();
        let identity = identity.clone();
        let credential = credential.to_owned();
        let netns = std::path::Path::new("/run/netns").join(&self.nodes()[0].netns);
        in_netns(
            &netns,
            move || -> Result<Result<String, (tonic::Code, String)>> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let channel = weft_core::control::channel(
                        addr,
                        weft_core::control::controller_identity("cluster.local"),
                        &bundle,
                    )?;
                    let csr = weft_core::identity::WorkloadCsr::generate(&identity)?;
                    let mut request = tonic::Request::new(v1::SignRequest {
                        csr_pem: csr.csr_pem,
                        identity: identity.to_string(),
                    });
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {credential}").parse()?);
                    let answer = v1::certificates_client::CertificatesClient::new(channel)
                        .sign(request)
                        .await;
                    Ok(answer
                        .map(|r| r.into_inner().chain_pem)
                        .map_err(|s| (s.code(), s.message().to_owned())))
                })
            },
        )?
    }

    /// The waypoint's process id, once started.
    pub fn waypoint_pid(&self, w: &Pod) -> Option<u32> {
        self.waypoint_pids
            .get(&(w.namespace.clone(), w.name.clone()))
            .copied()
    }

    /// The waypoint's log file.
    pub fn waypoint_log_path(&self, w: &Pod) -> PathBuf {
        self.dir.join(format!("waypoint-{}.log", w.name))
    }

    /// The waypoint's metrics.
    pub fn waypoint_metrics(&self, w: &Pod) -> Result<BTreeMap<String, f64>> {
        let (_, text) = http_get_in(
            &w.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 15020)),
            "/metrics",
        )?;
        Ok(parse_metrics(&text))
    }

    /// Runs `weft-testsrv serve --name <name>` on port 8080 in `pod` and waits for it.
    pub fn serve_testsrv(&mut self, pod: &Pod, name: &str) -> Result<()> {
        let bin = self.bin_dir.join("weft-testsrv").display().to_string();
        self.spawn_in(
            &pod.netns.clone(),
            &[&bin, "serve", "--name", name],
            &format!("testsrv-{}.log", pod.name),
        )?;
        wait_listening(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        )
    }

    /// Changes a `weft-testsrv` backend's behaviour (`fail=30&status=503`, `delay_ms=5000`,
    /// `grpc_unavailable=100`, `reset=1`), over its own loopback (not through the mesh).
    pub fn testsrv_set(&self, pod: &Pod, query: &str) -> Result<()> {
        let (code, _) = http_get_in(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            &format!("/__set?{query}"),
        )?;
        ensure!(
            code == 200,
            "setting {query} on {} answered {code}",
            pod.name
        );
        Ok(())
    }

    /// How many requests a `weft-testsrv` backend served.
    pub fn testsrv_count(&self, pod: &Pod) -> Result<u64> {
        let (_, body) = http_get_in(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            "/__count",
        )?;
        Ok(body.trim().parse()?)
    }

    /// Runs `weft-testsrv load <args>` in `pod` (its traffic is captured like any app's) and
    /// returns its JSON tally.
    pub fn load(&self, pod: &Pod, args: &[&str]) -> Result<serde_json::Value> {
        let bin = self.bin_dir.join("weft-testsrv").display().to_string();
        let mut argv = vec![bin.as_str(), "load"];
        argv.extend_from_slice(args);
        let out = self.exec(pod, &argv)?;
        ensure!(
            out.status.success(),
            "weft-testsrv load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("weft-testsrv output")
    }

    fn spawn_proxy(&self, i: usize) -> Result<Child> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.proxy_log_path(i))?;
        // nsenter, not `ip netns exec`: the latter gives the process a private mount namespace,
        // and bpffs pins made there would vanish with it.
        let source: Vec<String> = if self.with_controller {
            vec![
                "--controller".into(),
                self.controller_addr().to_string(),
                "--controller-credential".into(),
                self.dir
                    .join(format!("{}.credential", node.name))
                    .display()
                    .to_string(),
            ]
        } else {
            vec!["--config".into(), self.config_path().display().to_string()]
        };
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .arg(self.bin_dir.join("weft-node-proxy"))
            .args(["--node", &node.name])
            .args(&source)
            .arg("--cert-dir")
            .arg(self.node_cert_dir(i))
            .args(["--reload-interval-ms", "100", "--drain-deadline-secs", "2"])
            .args(["--capture", self.capture.flag()])
            .arg("--bpf-pin-dir")
            .arg(self.pin_dir(i))
            .arg("--cni-socket")
            .arg(self.cni_socket(i))
            .arg("--state-dir")
            .arg(self.dir.join(&node.name).join("state"))
            .args(&self.extra_proxy_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {}/weft-node-proxy (run `cargo build --workspace --bins` first)",
                    self.bin_dir.display()
                )
            })
    }

    /// Stops node `i`'s proxy (SIGKILL).
    pub fn kill_proxy(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.proxies[i].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts node `i`'s proxy again after [`kill_proxy`](Self::kill_proxy).
    pub fn restart_proxy(&mut self, i: usize) -> Result<()> {
        self.kill_proxy(i)?;
        let child = self.spawn_proxy(i)?;
        self.proxies[i] = Some(child);
        self.wait_ready(i)
    }

    /// Process id of node `i`'s proxy (nsenter execs it, so it keeps the child's pid).
    pub fn proxy_pid(&self, i: usize) -> Option<u32> {
        self.proxies.get(i)?.as_ref().map(Child::id)
    }

    /// Whether node `i`'s proxy process is still running.
    pub fn proxy_running(&mut self, i: usize) -> bool {
        match self.proxies[i].as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn wait_ready(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.http_get_node(i, 15021, "/healthz/ready") {
                return Ok(());
            }
            if !self.proxy_running(i) {
                bail!(
                    "node proxy on {} exited; its log:\n{}",
                    self.nodes[i].name,
                    self.proxy_log(i)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "node proxy on {} not ready in 20 s; its log:\n{}",
                self.nodes[i].name,
                self.proxy_log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Path of node `i`'s proxy log.
    pub fn proxy_log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}-proxy.log", self.nodes[i].name))
    }

    /// Node `i`'s proxy log so far.
    pub fn proxy_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.proxy_log_path(i)).unwrap_or_default()
    }

    /// Waits until node `i`'s proxy log contains `needle` (after `from` bytes).
    pub fn wait_log(
        &self,
        i: usize,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.proxy_log(i);
            if let Some(line) = log
                .get(from..)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains(needle))
            {
                return Ok(line.to_owned());
            }
            ensure!(
                Instant::now() < deadline,
                "{:?} not logged by {}'s proxy within {timeout:?}; log:\n{log}",
                needle,
                self.nodes[i].name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` from node `i`'s proxy on `port` (inside the node's namespace).
    pub fn http_get_node(&self, i: usize, port: u16, path: &str) -> Result<(u16, String)> {
        http_get_in(
            &Path::new("/run/netns").join(&self.nodes[i].netns),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            path,
        )
    }

    /// Node `i`'s metrics, parsed into (series → value).
    pub fn metrics(&self, i: usize) -> Result<BTreeMap<String, f64>> {
        let (status, body) = self.http_get_node(i, 15020, "/metrics")?;
        ensure!(status == 200, "metrics answered {status}");
        Ok(parse_metrics(&body))
    }

    /// Runs a program inside a pod and waits for it.
    pub fn exec(&self, pod: &Pod, argv: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &pod.netns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in pod {}", pod.name))
    }

    /// Runs a program inside a namespace of the bed (a node's, say) and waits for it.
    pub fn exec_in(&self, netns: &str, argv: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {argv:?} in {netns}"))
    }

    /// Starts a long-running program inside a namespace; it is killed on teardown.
    pub fn spawn_in(&mut self, netns: &str, argv: &[&str], log: &str) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(log))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {argv:?} in {netns}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Serves `files` (name → contents) over plain HTTP on `port` in `pod`, with Python's
    /// http.server, and waits until it accepts connections.
    pub fn serve_http(&mut self, pod: &Pod, port: u16, files: &[(&str, &str)]) -> Result<()> {
        let root = self.dir.join(format!("www-{}", pod.name));
        std::fs::create_dir_all(&root)?;
        for (name, contents) in files {
            std::fs::write(root.join(name), contents)?;
        }
        let root_str = root.display().to_string();
        let port_str = port.to_string();
        self.spawn_in(
            &pod.netns.clone(),
            &[
                "python3",
                "-m",
                "http.server",
                &port_str,
                "--bind",
                "0.0.0.0",
                "--directory",
                &root_str,
            ],
            &format!("http-{}.log", pod.name),
        )?;
        wait_listening(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        )
    }

    /// `curl http://<to>:8080/<path>` from `from` with a short connect timeout (a captured
    /// connection that fails closed should fail fast): (success, stdout, stderr).
    pub fn fetch(&self, from: &Pod, to: &Pod, path: &str) -> Result<(bool, String, String)> {
        let url = format!("http://{}:8080/{path}", to.ip);
        let out = self.exec(
            from,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "--connect-timeout",
                "1",
                &url,
            ],
        )?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Starts `weft-bench load --kind pingpong` from `client` to `server:5002` (where
    /// `weft-bench serve` runs) for `secs`: one long-lived connection.
    pub fn long_lived_connection(&self, client: &Pod, server: &Pod, secs: u64) -> LongLived {
        let bench = self.bin_dir.join("weft-bench");
        let target = format!("{}:5002", server.ip);
        let netns = client.netns.clone();
        LongLived(std::thread::spawn(move || {
            Command::new("ip")
                .args(["netns", "exec", &netns])
                .arg(&bench)
                .args(["load", "--kind", "pingpong", "--target", &target])
                .args(["--secs", &secs.to_string()])
                .output()
        }))
    }

    /// Runs `weft-bench serve` in `pod` (sink 5001, echo 5002, accept 5003) and waits for it.
    pub fn serve_bench(&mut self, pod: &Pod) -> Result<()> {
        let bench = self.bin_dir.join("weft-bench").display().to_string();
        self.spawn_in(
            &pod.netns,
            &[&bench, "serve"],
            &format!("bench-{}.log", pod.name),
        )?;
        wait_listening(
            &pod.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 5002)),
        )
    }

    /// `curl` from `pod`: returns (exit status success, stdout, stderr).
    pub fn curl(&self, pod: &Pod, url: &str) -> Result<(bool, String, String)> {
        let out = self.exec(
            pod,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--connect-timeout",
                "3",
                url,
            ],
        )?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Starts a packet capture on node `i`'s fabric link, written to `file` in the bed's dir.
    pub fn capture(&mut self, i: usize, file: &str) -> Result<PathBuf> {
        let path = self.dir.join(file);
        let netns = self.nodes[i].netns.clone();
        let path_str = path.display().to_string();
        self.spawn_in(
            &netns,
            &[
                "tcpdump",
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-n",
                "-Z",
                "root",
                "-s",
                "0",
                "-w",
                &path_str,
                "tcp",
            ],
            &format!("{file}.log"),
        )?;
        // tcpdump says "listening on" once the capture is armed.
        let log = self.dir.join(format!("{file}.log"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            ensure!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(path)
    }

    /// Stops running helper programs (servers, captures) so their output is complete.
    pub fn stop_helpers(&mut self) {
        for child in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
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
            for pod in self.pods.iter().filter(|p| p.node == i) {
                let _ = writeln!(
                    out,
                    "    {:<14} {:<15} {} {}",
                    pod.name,
                    pod.ip,
                    if pod.enrolled { "ambient " } else { "no mesh " },
                    if pod.enrolled {
                        pod.identity().to_string()
                    } else {
                        String::new()
                    }
                );
            }
        }
        out
    }

    fn teardown(&mut self) {
        let _ = self.kill_controller();
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
        if std::env::var_os("WEFT_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

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

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ],
    )
}

fn parse_cni_ip(result: &str) -> Result<Ipv4Addr> {
    let v: serde_json::Value = serde_json::from_str(result)?;
    let addr = v["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no ips[0].address"))?;
    let ip = addr.split('/').next().unwrap_or_default();
    Ok(ip.parse()?)
}

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

/// A minimal HTTP/1.0 GET made from inside a namespace.
pub fn http_get_in(netns: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    in_netns(netns, move || -> Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })?
}

/// Waits until something accepts TCP connections on `addr` inside the namespace.
pub fn wait_listening(netns: &Path, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = in_netns(netns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses the Prometheus text format into `name{labels}` → value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sums the series of `name` whose labels contain every `key="value"` in `labels`.
pub fn metric_sum(metrics: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Defines each listed test (a `fn(CaptureMode) -> Result<()>` in the calling module) twice:
/// `ebpf::<name>` and `nftables::<name>`, so every capture suite runs under both mechanisms.
#[macro_export]
macro_rules! in_both_capture_modes {
    ($($name:ident),* $(,)?) => {
        mod ebpf {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    super::$name($crate::CaptureMode::Ebpf)
                }
            )*
        }
        mod nftables {
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    super::$name($crate::CaptureMode::Nftables)
                }
            )*
        }
    };
}
