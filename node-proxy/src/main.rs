//! `weft-node-proxy`: the per-node L4 proxy of the Weft mesh.

mod admin;
mod ca_client;
mod capture;
mod cni;
mod identity;
mod inbound;
mod inbound_plaintext;
mod inputs;
mod outbound;
mod pods;
mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use weft_core::config::{MeshConfig, State};
use weft_core::drain;
use weft_core::telemetry::{self, LogFormat};

use crate::capture::Capture;
use crate::identity::CertStore;
use crate::inputs::{ConfigSource, Inputs, ProxyConfig};
use crate::pods::Pods;

/// The Weft node proxy: captures enrolled pods' traffic and carries it over HBONE (mTLS).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Name of the node this proxy serves.
    #[arg(long, env = "WEFT_NODE")]
    node: String,
    /// Mesh config (workloads and services), YAML, re-read when it changes. Either this or
    /// --controller.
    #[arg(
        long,
        env = "WEFT_CONFIG",
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    config: Option<PathBuf>,
    /// The controller's gRPC address: config arrives over its stream.
    #[arg(long, env = "WEFT_CONTROLLER")]
    controller: Option<SocketAddr>,
    /// File holding this node's credential for the controller.
    #[arg(long, env = "WEFT_CONTROLLER_CREDENTIAL", requires = "controller")]
    controller_credential: Option<PathBuf>,
    /// Trust domain (the controller must prove spiffe://<trust-domain>/ns/weft-system/sa/weft-controller).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Directory of workload certificates: <dir>/<namespace>/<serviceaccount>/{cert,key}.pem.
    #[arg(long, env = "WEFT_CERT_DIR")]
    cert_dir: PathBuf,
    /// Trust bundle (PEM). Default: <cert-dir>/root-cert.pem.
    #[arg(long, env = "WEFT_TRUST_BUNDLE")]
    trust_bundle: Option<PathBuf>,
    /// Admin address (config dump).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics address.
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// Readiness address.
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// How often the config and certificate files are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    reload_interval_ms: u64,
    /// Time in-flight connections get to finish on SIGTERM, in seconds.
    #[arg(long, default_value_t = 10)]
    drain_deadline_secs: u64,
    /// Log format: plain or json.
    #[arg(long, default_value = "plain")]
    log_format: LogFormat,
    /// Traffic capture: ebpf, nftables, or auto (eBPF, falling back to nftables).
    #[arg(long, env = "WEFT_CAPTURE", value_enum, default_value = "auto")]
    capture: capture::Requested,
    /// bpffs directory for this proxy's pinned maps and links. Default: /sys/fs/bpf/weft/<node>.
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// cgroup v2 directory the socket programs attach to. Default: the cgroup v2 root.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Unix socket on which weft-cni reports pods.
    #[arg(long, env = "WEFT_CNI_SOCKET", default_value = weft_cni::DEFAULT_SOCKET)]
    cni_socket: PathBuf,
    /// Directory for state that must survive a restart (the pods weft-cni reported).
    /// Default: /var/run/weft/<node>.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format, "info");
    let bpf_pin_dir = args.bpf_pin_dir.clone().unwrap_or_else(|| {
        PathBuf::from(weft_ebpf::BPFFS)
            .join("weft")
            .join(&args.node)
    });
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/run/weft").join(&args.node));
    let config = ProxyConfig {
        capture: args.capture,
        bpf_pin_dir,
        cgroup: args.cgroup,
        cni_socket: args.cni_socket,
        state_dir,
        trust_bundle: args
            .trust_bundle
            .clone()
            .unwrap_or_else(|| args.cert_dir.join("root-cert.pem")),
        source: match (args.config, args.controller) {
            (Some(path), _) => ConfigSource::File(path),
            (None, Some(addr)) => ConfigSource::Controller(xds::ControllerSettings {
                addr,
                credential_file: args
                    .controller_credential
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/var/run/weft/credential")),
                identity: weft_core::control::controller_identity(&args.trust_domain),
            }),
            (None, None) => anyhow::bail!("give --config or --controller"),
        },
        node: args.node,
        cert_dir: args.cert_dir,
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        readiness_addr: args.readiness_addr,
        reload_interval: Duration::from_millis(args.reload_interval_ms),
        drain_deadline: Duration::from_secs(args.drain_deadline_secs),
        handshake_timeout: Duration::from_secs(10),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    // From a file: no first config, no proxy (a clear error names the file and field). From
    // the controller: nothing is captured or swept until the first config has arrived.
    let state = match &config.source {
        ConfigSource::File(path) => State::new(MeshConfig::load(path)?),
        ConfigSource::Controller(_) => State::default(),
    };
    let certs = load_certs(&config, &state);
    let capture = Capture::start(
        config.capture,
        &config.bpf_pin_dir,
        config.cgroup.as_deref(),
    )
    .context("starting eBPF capture (use --capture nftables to run without eBPF)")?;
    info!(node = %config.node, source = %config.source, workloads = state.config().workloads.len(), services = state.config().services.len(), capture = capture.mode(), "node proxy starting");
    let inputs = Arc::new(Inputs::new(config.clone(), state, certs, capture));
    let changed = Arc::new(tokio::sync::Notify::new());

    let (signal_drain, watch) = drain::channel();
    let enrolled = Arc::new(Mutex::new(Vec::new()));
    for (addr, handler, what) in [
        (
            config.metrics_addr,
            admin::metrics(inputs.clone()),
            "metrics",
        ),
        (
            config.readiness_addr,
            admin::readiness(inputs.clone()),
            "readiness",
        ),
        (
            config.admin_addr,
            admin::config_dump(inputs.clone(), enrolled.clone()),
            "admin",
        ),
    ] {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {what} port {addr}"))?;
        tokio::spawn(weft_core::admin::serve(listener, handler, watch.clone()));
    }

    if let ConfigSource::Controller(settings) = &config.source {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let cert_changed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(xds::run(
            inputs.clone(),
            settings.clone(),
            changed.clone(),
            first_tx,
            cert_changed.clone(),
        ));
        tokio::spawn(ca_client::run(
            inputs.clone(),
            settings.clone(),
            cert_changed,
        ));
        info!(controller = %settings.addr, "waiting for the first config from the controller");
        let mut sigterm = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = first_rx => {}
            _ = sigterm.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        inputs
            .certs
            .store(Arc::new(load_certs(&config, &inputs.state.load())));
    }
    let mut registry = cni::Registry::load(&config.state_dir);
    let mut pods = Pods::default();
    let keep = pods.reconcile(&inputs, &registry, &watch).await;
    // Whatever an earlier run captured for pods that are gone or left the mesh is released;
    // pods still wanted stay captured even if they failed to enroll (fail closed).
    inputs.capture.sweep(&keep);
    *enrolled.lock().unwrap_or_else(|e| e.into_inner()) = pods.enrolled();

    let (cni_tx, mut cni_rx) = tokio::sync::mpsc::channel::<cni::Call>(64);
    cni::serve(&config.cni_socket, cni_tx, watch.clone())
        .with_context(|| format!("listening for weft-cni on {}", config.cni_socket.display()))?;
    inputs.ready.store(true, Ordering::Relaxed);
    info!(capture = inputs.capture.mode(), cni_socket = %config.cni_socket.display(), "node proxy ready");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(config.reload_interval);
    let mut last_text = match &config.source {
        ConfigSource::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        ConfigSource::Controller(_) => String::new(),
    };
    loop {
        let mut call = None;
        let mut streamed = false;
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {}
            Some(c) = cni_rx.recv() => call = Some(c),
            _ = changed.notified() => streamed = true,
        }
        let changed = streamed || reload_config(&inputs, &mut last_text);
        let stamp = identity::stamp(&config.cert_dir, &config.trust_bundle);
        if changed || stamp != inputs.certs.load().stamp {
            let mut next = load_certs(&config, &inputs.state.load());
            // An identity that failed to load (a renewal caught half-written) keeps its last
            // good certificate while that is still valid.
            for (id, identity) in &inputs.certs.load().identities {
                if !next.identities.contains_key(id) && identity.cert.remaining() > Duration::ZERO {
                    next.identities.insert(id.clone(), identity.clone());
                }
            }
            inputs.certs.store(Arc::new(next));
        }
        if let Some((request, reply)) = call {
            let response = handle_cni(&inputs, &mut registry, &mut pods, &watch, request).await;
            let _ = reply.send(response);
        } else {
            // Reconciling every tick also retries pods that failed to enroll.
            pods.reconcile(&inputs, &registry, &watch).await;
        }
        *enrolled.lock().unwrap_or_else(|e| e.into_inner()) = pods.enrolled();
    }

    info!(deadline = ?config.drain_deadline, "draining: no new connections, GOAWAY to HBONE peers");
    inputs.ready.store(false, Ordering::Relaxed);
    pods.stop_all();
    drop(watch);
    if !signal_drain.drain(config.drain_deadline).await {
        warn!("drain deadline passed with connections still open");
    }
    info!("node proxy stopped");
    Ok(())
}

/// Re-reads the config file if its text changed. A bad version is reported and the last good
/// config stays in force.
fn reload_config(inputs: &Inputs, last_text: &mut String) -> bool {
    let ConfigSource::File(path) = &inputs.config.source else {
        return false;
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            if !last_text.is_empty() {
                error!(
                    "config {}: {e}; keeping the last good config",
                    path.display()
                );
                last_text.clear();
            }
            return false;
        }
    };
    if text == *last_text {
        return false;
    }
    *last_text = text;
    match MeshConfig::parse(path, last_text) {
        Ok(mesh) => {
            info!(
                workloads = mesh.workloads.len(),
                services = mesh.services.len(),
                "config reloaded"
            );
            inputs.state.store(Arc::new(State::new(mesh)));
            true
        }
        Err(e) => {
            error!("{e}; keeping the last good config");
            false
        }
    }
}

/// Answers weft-cni: the pod is captured before the ADD returns, or the ADD fails.
async fn handle_cni(
    inputs: &Arc<Inputs>,
    registry: &mut cni::Registry,
    pods: &mut Pods,
    watch: &drain::Watch,
    request: weft_cni::Request,
) -> weft_cni::Response {
    use weft_cni::{Request, Response};
    let (namespace, name, label) = match &request {
        Request::Add(pod) | Request::Check(pod) => (pod.namespace.clone(), pod.name.clone(), "add"),
        Request::Del {
            namespace, name, ..
        } => (namespace.clone(), name.clone(), "del"),
    };
    match request {
        Request::Add(pod) => registry.add(pod),
        Request::Del { container_id, .. } => registry.remove(&namespace, &name, &container_id),
        Request::Check(_) => {}
    }
    pods.reconcile(inputs, registry, watch).await;
    let response = match (label, pods.enrollment(inputs, &namespace, &name)) {
        ("del", _) => Response::Ok {
            captured: false,
            message: "released".into(),
        },
        (_, pods::Enrollment::Captured) => Response::Ok {
            captured: true,
            message: format!("captured ({})", inputs.capture.mode()),
        },
        (_, pods::Enrollment::NotInMesh) => Response::Ok {
            captured: false,
            message: "not in the mesh on this node: not captured".into(),
        },
        (_, pods::Enrollment::Failed(why)) => Response::Error { message: why },
    };
    info!(op = label, pod = %name, namespace = %namespace, ?response, "CNI request");
    response
}

fn load_certs(config: &ProxyConfig, state: &State) -> CertStore {
    let wanted = state
        .workloads_on(&config.node)
        .map(|w| state.identity(w))
        .collect::<Vec<_>>();
    let (store, errors) =
        CertStore::load(&config.cert_dir, &config.trust_bundle, wanted.into_iter());
    for e in errors {
        error!(error = %e, "certificate not loaded; pods with this identity are refused until it is fixed");
    }
    store
}
