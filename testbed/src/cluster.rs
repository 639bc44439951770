//! A private Kubernetes control plane on loopback, as controller-runtime's envtest starts one:
//! etcd, kube-apiserver (RBAC enforced, ServiceAccount tokens signed) and
//! kube-controller-manager (namespaces' default ServiceAccounts, garbage collection,
//! Deployments → Pods, EndpointSlices), with the controllers that need kubelets turned off.
//! Nothing schedules or runs pods; tests play kubelet. The binaries come from
//! `WEFT_KUBE_ASSETS` (kube-apiserver, kube-controller-manager; etcd from Debian's
//! etcd-server); certificates are made here with rcgen.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};

/// Where the Kubernetes binaries are: `WEFT_KUBE_ASSETS`, else `../shared/k8s/bin` beside the
/// workspace. `None` when neither holds kube-apiserver.
pub fn assets() -> Option<PathBuf> {
    let dir = std::env::var_os("WEFT_KUBE_ASSETS")
        .map(PathBuf::from)
        .or_else(|| Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s/bin")))?;
    dir.join("kube-apiserver").exists().then_some(dir)
}

/// [`assets`], or `None` after printing the one line that says the cluster tier did not run
/// and how to enable it (what every cluster-tier test does without the binaries).
pub fn tier_assets() -> Option<PathBuf> {
    let found = assets();
    if found.is_none() {
        eprintln!(
            "cluster tier did not run: no kube-apiserver in WEFT_KUBE_ASSETS or ../shared/k8s/bin \
             (set WEFT_KUBE_ASSETS to a directory holding kube-apiserver and kube-controller-manager)"
        );
    }
    found
}

/// A test bed's Kubernetes mode (see `kube.rs`).
pub(crate) struct Kube {
    pub(crate) assets: PathBuf,
    pub(crate) plane: Option<ControlPlane>,
    /// The controller's kubeconfig (its ServiceAccount's token).
    pub(crate) controller_kubeconfig: Option<PathBuf>,
}

/// A running control plane; stopped (and its directory removed) when dropped.
pub struct ControlPlane {
    dir: PathBuf,
    /// The network namespace everything runs in (`None`: the test's own).
    netns: Option<String>,
    children: Vec<(&'static str, Child)>,
    /// How each component was started (program, arguments), to start it again.
    commands: Vec<(&'static str, PathBuf, Vec<String>)>,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// An admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// The cluster CA (PEM): what clients trust the API server by.
    pub ca_pem: String,
}

/// The tier drives the cluster with kubectl 1.24 or newer (`create token`, `apply
/// --subresource`); an older one is named rather than failing somewhere later.
fn check_kubectl() -> Result<()> {
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .context("kubectl is missing (scripts/deps.sh installs it)")?;
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let minor: u32 = version["clientVersion"]["minor"]
        .as_str()
        .unwrap_or("0")
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0);
    ensure!(
        minor >= 24,
        "kubectl 1.{minor} is too old for the cluster tier: 1.24 or newer is needed"
    );
    Ok(())
}

/// A loopback port free now, for a process started next. Picked below the kernel's ephemeral
/// range (32768 and up by default): a port the kernel hands out for a port-0 bind or an outgoing
/// connection can be taken again by anyone before the process binds it, and on a busy machine
/// it was. Ports here are only taken by picks like this one: start at a place of this process'
/// own and move on, so parallel test processes rarely meet.
fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(7, Ordering::Relaxed);
        let port = u16::try_from(LOW + (seed + offset) % SPAN)?;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port between {LOW} and {}", LOW + SPAN)
}

struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "weft-test-cluster-ca");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    /// A certificate and key (PEM) for `cn` (organisation `org`), serving or client.
    fn issue(&self, cn: &str, org: Option<&str>, serving: bool) -> Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        if let Some(org) = org {
            dn.push(DnType::OrganizationName, org);
        }
        params.distinguished_name = dn;
        if serving {
            params.subject_alt_names = vec![
                SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
                SanType::IpAddress(Ipv4Addr::new(10, 96, 0, 1).into()),
                SanType::DnsName("localhost".try_into()?),
                SanType::DnsName("kubernetes.default.svc".try_into()?),
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager from `assets` in a fresh
    /// directory; returns once the API server is ready (`/readyz`).
    pub fn start(assets: &Path, label: &str) -> Result<Self> {
        Self::start_in(assets, label, None)
    }

    /// [`start`](Self::start) inside network namespace `netns` (a test bed's node): its
    /// loopback is the API server's address, for the processes run there.
    pub fn start_in(assets: &Path, label: &str, netns: Option<&str>) -> Result<Self> {
        check_kubectl()?;
        let dir = std::env::temp_dir().join(format!(
            "weft-k8s-{label}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().subsec_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        let pki = Pki::new()?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let ca = write("ca.crt", &pki.ca_pem)?;
        let (cert, key) = pki.issue("kube-apiserver", None, true)?;
        let (server_crt, server_key) = (
            write("apiserver.crt", &cert)?,
            write("apiserver.key", &key)?,
        );
        let sa_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let sa_private = write("sa.key", &sa_key.serialize_pem())?;
        let sa_public = write("sa.pub", &sa_key.public_key_pem())?;
        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = |user: &str, cn: &str, org: Option<&str>| -> Result<PathBuf> {
            let (cert, key) = pki.issue(cn, org, false)?;
            let crt = write(&format!("{user}.crt"), &cert)?;
            let key = write(&format!("{user}.key"), &key)?;
            write(
                &format!("{user}.kubeconfig"),
                &format!(
                    "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{server}\", certificate-authority: {}}}}}]\nusers: [{{name: {user}, user: {{client-certificate: {}, client-key: {}}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: {user}}}}}]\ncurrent-context: test\n",
                    ca.display(),
                    crt.display(),
                    key.display()
                ),
            )
        };
        let admin = kubeconfig("admin", "admin", Some("system:masters"))?;
        let kcm = kubeconfig("kcm", "system:kube-controller-manager", None)?;

        let mut plane = Self {
            netns: netns.map(str::to_owned),
            dir: dir.clone(),
            children: Vec::new(),
            commands: Vec::new(),
            server: server.clone(),
            kubeconfig: admin,
            ca_pem: pki.ca_pem.clone(),
        };
        let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
        plane.launch(
            "etcd",
            Command::new("etcd").args([
                "--name",
                "test",
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-cluster",
                &format!("test=http://127.0.0.1:{etcd_peer}"),
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", free_port()?),
            ]),
        )?;
        plane.launch(
            "apiserver",
            Command::new(assets.join("kube-apiserver")).args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={port}"),
                &format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                &format!("--tls-cert-file={}", server_crt.display()),
                &format!("--tls-private-key-file={}", server_key.display()),
                &format!("--client-ca-file={}", ca.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", sa_public.display()),
                &format!(
                    "--service-account-signing-key-file={}",
                    sa_private.display()
                ),
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ]),
        )?;
        plane.wait_ready(Duration::from_secs(90))?;
        plane.launch(
            "kcm",
            Command::new(assets.join("kube-controller-manager")).args([
                &format!("--kubeconfig={}", kcm.display()),
                &format!("--authentication-kubeconfig={}", kcm.display()),
                &format!("--authorization-kubeconfig={}", kcm.display()),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()?),
                "--leader-elect=false",
                &format!("--root-ca-file={}", ca.display()),
                &format!("--service-account-private-key-file={}", sa_private.display()),
                "--use-service-account-credentials=true",
                "--service-cluster-ip-range=10.96.0.0/16",
                // Without kubelets these would mark nodes unready and delete hand-made pods.
                "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller,-pod-garbage-collector-controller,-node-ipam-controller",
                "--v=1",
            ]),
        )?;
        Ok(plane)
    }

    fn launch(&mut self, name: &'static str, command: &mut Command) -> Result<()> {
        self.commands.retain(|(n, _, _)| *n != name);
        self.commands.push((
            name,
            PathBuf::from(command.get_program()),
            command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        ));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{name}.log")))?;
        let mut wrapped = self.command(command.get_program());
        wrapped.args(command.get_args());
        let child = wrapped
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// A component's log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(out) = self.kubectl(&["get", "--raw", "/readyz"])
                && out.status.success()
            {
                return Ok(());
            }
            let exited = self
                .children
                .iter_mut()
                .find_map(|(name, child)| Some((*name, child.try_wait().ok()??)));
            if let Some((name, status)) = exited {
                bail!("{name} exited ({status}):\n{}", self.log(name));
            }
            ensure!(
                Instant::now() < deadline,
                "kube-apiserver not ready after {within:?}:\n{}",
                self.log("apiserver")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs kubectl as cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_as(&self.kubeconfig, args)
    }

    /// `program`, run in the control plane's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}")).arg(program);
                c
            }
        }
    }

    /// Runs kubectl with `kubeconfig`.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        self.command("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl as admin and returns its stdout; fails with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A kubeconfig that authenticates with `token` (a ServiceAccount's, say).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{}\", certificate-authority: {}}}}}]\nusers: [{{name: {name}, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: {name}}}}}]\ncurrent-context: test\n",
                self.server,
                self.dir.join("ca.crt").display()
            ),
        )?;
        Ok(path)
    }

    /// A token of ServiceAccount `namespace/name` (TokenRequest), for `audience` if given.
    pub fn token(&self, namespace: &str, name: &str, audience: Option<&str>) -> Result<String> {
        let mut args = vec!["create", "token", name, "-n", namespace, "--duration=1h"];
        let audience_arg;
        if let Some(a) = audience {
            audience_arg = format!("--audience={a}");
            args.push(&audience_arg);
        }
        Ok(self.run(&args)?.trim().to_owned())
    }

    /// Runs `deploy/crds/install-missing.sh` (the CRDs the cluster lacks) and waits until they
    /// are served; returns what the script said.
    pub fn install_crds(&self) -> Result<String> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = self
            .command(workspace.join("deploy/crds/install-missing.sh"))
            .env("KUBECONFIG", &self.kubeconfig)
            .output()?;
        ensure!(
            out.status.success(),
            "installing the CRDs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for crd in [
            "virtualservices.networking.istio.io",
            "httproutes.gateway.networking.k8s.io",
        ] {
            self.wait_established(crd)?;
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits (30 s at most) until CRD `name` is served. Polls its condition: `kubectl wait`
    /// fails at once on a CRD so new it has no conditions yet, which a busy machine hit.
    pub fn wait_established(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self
                .run(&[
                    "get",
                    "crd",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                ])
                .unwrap_or_default();
            if status == "True" {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "CRD {name} not established within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Applies `deploy/<path>` (a kustomization) server-side, as field manager `weft`.
    pub fn apply_deploy(&self, path: &str) -> Result<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(path);
        self.run(&[
            "apply",
            "--server-side",
            "--field-manager=weft",
            "-k",
            &dir.display().to_string(),
        ])
    }

    /// The network namespace it runs in (`None`: this process's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The directory holding its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A free loopback address for a process a test starts beside it.
    pub fn free_addr() -> Result<SocketAddr> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
    }

    /// Stops one component (`apiserver`, to test recovery).
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| anyhow!("no {name}"))?;
        let (_, mut child) = self.children.remove(i);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts a component stopped by [`kill`](Self::kill) again, as it was first started;
    /// for the API server, waits until it is ready.
    pub fn start_again(&mut self, name: &str) -> Result<()> {
        let (name, program, args) = self
            .commands
            .iter()
            .find(|(n, _, _)| *n == name)
            .cloned()
            .ok_or_else(|| anyhow!("{name} was never started"))?;
        self.launch(name, Command::new(program).args(args))?;
        if name == "apiserver" {
            // kube-controller-manager exits when it loses the API server for long: it comes
            // back after the server, as a kubelet would restart it.
            let mut exited = Vec::new();
            self.children.retain_mut(|(n, child)| {
                let gone = matches!(child.try_wait(), Ok(Some(_)));
                if gone {
                    exited.push(*n);
                }
                !gone
            });
            self.wait_ready(Duration::from_secs(90))?;
            for component in exited {
                self.start_again(component)?;
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("WEFT_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
