//! The processes under test: the controller, one node proxy per node, waypoints; starting,
//! killing and restarting them, and reading their logs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::bed::{CaptureMode, TestBed};
use crate::pod::Pod;
use crate::traffic::http_get_in;

impl TestBed {
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

    /// Chooses how the node proxies capture traffic (before [`start`](Self::start)); the
    /// default is eBPF.
    pub fn capture_mode(&mut self, mode: CaptureMode) -> &mut Self {
        self.capture = mode;
        self
    }

    /// Extra flags for every node proxy (before [`start`](Self::start)); `{node}` in one
    /// becomes the node's name.
    pub fn proxy_args(&mut self, args: &[&str]) -> &mut Self {
        self.extra_proxy_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Extra flags for every waypoint the bed runs itself (manifest-directory mode; before
    /// [`start`](Self::start)).
    pub fn waypoint_args(&mut self, args: &[&str]) -> &mut Self {
        self.extra_waypoint_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Extra flags for the waypoint named `name` only.
    pub fn waypoint_args_for(&mut self, name: &str, args: &[&str]) -> &mut Self {
        self.one_waypoint_args
            .entry(name.to_owned())
            .or_default()
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The controller's gRPC address.
    pub fn controller_address(&self) -> SocketAddr {
        self.controller_addr()
    }

    pub(crate) fn controller_addr(&self) -> SocketAddr {
        SocketAddr::from((self.nodes[0].ip, 15012))
    }

    pub(crate) fn spawn_controller(&self) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.controller_log_path())?;
        if let Some(kubeconfig) = self
            .kube
            .as_ref()
            .and_then(|k| k.controller_kubeconfig.clone())
        {
            // Kubernetes mode: the API is its source and its CA's home (the bed's CA, as a
            // plug-in CA in the Secret); node proxies are checked by TokenReview.
            return Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.nodes[0].netns))
                .arg(self.bin_dir.join("weft-controller"))
                .args(["--identity", "bed-controller"])
                .args(["--listen", &self.controller_addr().to_string()])
                .args(["--readiness-addr", "127.0.0.1:15022"])
                .args(["--metrics-addr", "127.0.0.1:15019"])
                .args(&self.extra_controller_args)
                .env("KUBECONFIG", kubeconfig)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting weft-controller (run `cargo build --workspace --bins` first)");
        }
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
            // The node proxy of node 0 holds 15020 and 15021 in this namespace.
            .args(["--readiness-addr", "127.0.0.1:15022"])
            .args(["--metrics-addr", "127.0.0.1:15019"])
            .args(["--refresh-interval-ms", "50"])
            .args(&self.extra_controller_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting weft-controller (run `cargo build --workspace --bins` first)")
    }

    pub(crate) fn start_controller(&mut self) -> Result<()> {
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

    /// Process id of the controller.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(Child::id)
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
        if self.kube.is_some() {
            self.start_kubernetes()?;
            self.start_controller()?;
            let plane = self.control_plane().context("Kubernetes mode")?;
            self.adopt_controller_pod(plane)?;
        } else if self.with_controller {
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
        if self.with_controller {
            // Like a kubelet's readiness gate: the bed is up once every enrolled pod's node
            // has its certificate from the controller's CA (a test's first request must not
            // race the first issuance).
            let wanted: Vec<std::path::PathBuf> = self
                .pods
                .iter()
                .filter(|p| p.enrolled)
                .map(|p| {
                    self.node_cert_dir(p.node)
                        .join(&p.namespace)
                        .join(&p.service_account)
                        .join("cert.pem")
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(15);
            while let Some(missing) = wanted.iter().find(|path| !path.exists()) {
                ensure!(
                    Instant::now() < deadline,
                    "no certificate at {} after 15 s; proxy logs:\n{}",
                    missing.display(),
                    (0..self.nodes.len())
                        .map(|i| self.proxy_log(i))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Runs `weft-waypoint` in its pod (it gets its certificate from the controller's CA);
    /// returns when it reports ready.
    pub(crate) fn start_waypoint(&mut self, w: &Pod) -> Result<()> {
        if self.kube.is_some() {
            return self.run_waypoint_pod(w);
        }
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
            .args(&self.extra_waypoint_args)
            .args(self.one_waypoint_args.get(&w.name).into_iter().flatten())
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

    /// The waypoint's process id, once started.
    pub fn waypoint_pid(&self, w: &Pod) -> Option<u32> {
        self.waypoint_pids
            .get(&(w.namespace.clone(), w.name.clone()))
            .copied()
    }

    /// How many config updates the waypoint has applied so far (from its log).
    pub fn waypoint_updates(&self, w: &Pod) -> usize {
        std::fs::read_to_string(self.waypoint_log_path(w))
            .unwrap_or_default()
            .matches("config update applied")
            .count()
    }

    /// The waypoint's log file.
    pub fn waypoint_log_path(&self, w: &Pod) -> PathBuf {
        self.dir.join(format!("waypoint-{}.log", w.name))
    }

    pub(crate) fn spawn_proxy(&self, i: usize) -> Result<Child> {
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
            .args(
                self.extra_proxy_args
                    .iter()
                    .map(|a| a.replace("{node}", &node.name)),
            )
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

    /// Stops node `i`'s proxy as the kubelet does (SIGTERM), and waits for it to exit.
    pub fn stop_proxy(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        let mut child = self.proxies[i]
            .take()
            .ok_or_else(|| anyhow::anyhow!("no proxy on node {i}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(child.wait()?)
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

    pub(crate) fn wait_ready(&mut self, i: usize) -> Result<()> {
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
}
