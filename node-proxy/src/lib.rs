//! The Weft node proxy: the per-node L4 proxy of the mesh. It captures enrolled pods'
//! traffic (`capture`, reported by `cni`, enrolled by `enrollment`), carries it over HBONE
//! (`outbound`, `inbound`), judges every inbound connection in one place (`inbound::admit`)
//! and forwards every connection through one tail (`forward`). Its settings are `config`,
//! its shared state `proxy`; mesh config arrives from a file or the controller
//! (`config_stream`), certificates from the controller's CA (`ca_client`).

mod admin;
mod ca_client;
pub mod capture;
mod cni;
pub mod config;
mod config_stream;
mod dns;
mod enrollment;
mod forward;
mod identity;
mod inbound;
mod outbound;
mod pod;
mod proxy;

pub use dns::nameserver;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use weft_core::drain;
use weft_core::mesh::{MeshConfig, MeshIndex};

use crate::capture::Capture;
use crate::config::{ConfigSource, ProxyConfig};
use crate::enrollment::Pods;
use crate::identity::CertStore;
use crate::proxy::Proxy;

/// Gives the pages the allocator holds free back to the kernel. Loading the eBPF programs parses
/// their object and BTF on the heap and frees it; with one malloc arena those pages would stay
/// in the proxy's resident set for its lifetime (measured in docs/benchmarks.md).
fn return_freed_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs the node proxy until SIGTERM or SIGINT, then drains.
pub async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    if let Some(c) = &config.trace_collector {
        weft_core::trace::export::Collector::parse(c)
            .map_err(|e| anyhow::anyhow!("--trace-collector {e}"))?;
    }
    if !(0.0..=100.0).contains(&config.trace_sampling) {
        anyhow::bail!(
            "--trace-sampling {}: a percentage from 0 to 100",
            config.trace_sampling
        );
    }
    // From a file: no first config, no proxy (a clear error names the file and field). From
    // the controller: nothing is captured or swept until the first config has arrived.
    let index = match &config.source {
        ConfigSource::File(path) => MeshIndex::new(MeshConfig::load(path)?),
        ConfigSource::Controller(_) => MeshIndex::default(),
    };
    let certs = load_certs(&config, &index, &CertStore::default());
    let capture = Capture::start(
        config.capture,
        &config.bpf_pin_dir,
        config.cgroup.as_deref(),
    )
    .context("starting eBPF capture (use --capture nftables to run without eBPF)")?;
    return_freed_heap();
    info!(node = %config.node, source = %config.source, workloads = index.config().workloads.len(), services = index.config().services.len(), capture = capture.mode(), "node proxy starting");
    let proxy = Arc::new(Proxy::new(config.clone(), index, certs, capture));
    let changed = Arc::new(tokio::sync::Notify::new());

    let (signal_drain, watch) = drain::channel();
    let enrolled = Arc::new(Mutex::new(Vec::new()));
    for (addr, handler, what) in [
        (
            config.metrics_addr,
            admin::metrics(proxy.clone()),
            "metrics",
        ),
        (
            config.readiness_addr,
            admin::readiness(proxy.clone()),
            "readiness",
        ),
        (
            config.admin_addr,
            admin::config_dump(proxy.clone(), enrolled.clone()),
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
        tokio::spawn(config_stream::run(
            proxy.clone(),
            settings.clone(),
            changed.clone(),
            first_tx,
            cert_changed.clone(),
        ));
        tokio::spawn(ca_client::run(
            proxy.clone(),
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
        proxy.certs.store(Arc::new(load_certs(
            &config,
            &proxy.index.load(),
            &proxy.certs.load(),
        )));
    }
    let mut registry = cni::Registry::load(&config.state_dir);
    let mut pods = Pods::default();
    let keep = pods.reconcile(&proxy, &registry, &watch).await;
    // Whatever an earlier run captured for pods that are gone or left the mesh is released;
    // pods still wanted stay captured even if they failed to enroll (fail closed).
    proxy.capture.sweep(&keep);
    *enrolled.lock().unwrap_or_else(|e| e.into_inner()) = pods.enrolled();

    let (cni_tx, mut cni_rx) = tokio::sync::mpsc::channel::<cni::Call>(64);
    cni::serve(&config.cni_socket, cni_tx, watch.clone())
        .with_context(|| format!("listening for weft-cni on {}", config.cni_socket.display()))?;
    proxy.ready.store(true, Ordering::Relaxed);
    info!(capture = proxy.capture.mode(), cni_socket = %config.cni_socket.display(), "node proxy ready");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(config.reload_interval);
    // What the config file held when last read (a digest, not the text: it may be large).
    let mut last_read: Option<u64> = match &config.source {
        ConfigSource::File(path) => weft_core::mesh::read_config(path).ok().map(|t| digest(&t)),
        ConfigSource::Controller(_) => None,
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
        let changed = streamed || reload_config(&proxy, &mut last_read);
        let stamp = identity::stamp(&config.cert_dir, &config.trust_bundle);
        if changed || stamp != proxy.certs.load().stamp {
            let mut next = load_certs(&config, &proxy.index.load(), &proxy.certs.load());
            // An identity that failed to load (a renewal caught half-written) keeps its last
            // good certificate while that is still valid.
            for (id, identity) in &proxy.certs.load().identities {
                if !next.identities.contains_key(id) && identity.cert.remaining() > Duration::ZERO {
                    next.identities.insert(id.clone(), identity.clone());
                }
            }
            proxy.certs.store(Arc::new(next));
        }
        if let Some((request, reply)) = call {
            let response = handle_cni(&proxy, &mut registry, &mut pods, &watch, request).await;
            let _ = reply.send(response);
        } else {
            // Reconciling every tick also retries pods that failed to enroll.
            pods.reconcile(&proxy, &registry, &watch).await;
        }
        *enrolled.lock().unwrap_or_else(|e| e.into_inner()) = pods.enrolled();
    }

    info!(deadline = ?config.drain_deadline, "draining: no new connections, GOAWAY to HBONE peers");
    proxy.ready.store(false, Ordering::Relaxed);
    if let Some(dir) = &config.cni_conf_dir {
        match weft_cni::install::uninstall(dir) {
            Ok(changed) => info!(?changed, "weft-cni taken out of the CNI chain"),
            Err(e) => warn!(error = %e, "could not take weft-cni out of the CNI chain"),
        }
    }
    // Captured pods stay captured while the node proxy is away (a restart must not open them
    // up: they fail closed). With none left, the node's capture state goes with it: an
    // uninstall (namespaces out of the mesh first) leaves no program, map or link behind.
    let still_captured = pods.enrolled();
    if still_captured.is_empty() {
        match proxy.capture.remove_all() {
            Ok(()) => info!("no pod captured on this node: capture state removed"),
            Err(e) => warn!(error = %e, "removing the node's capture state"),
        }
    } else {
        info!(
            pods = still_captured.len(),
            "pods in the mesh stay captured until this node proxy is back (fail closed); take their namespaces out of the mesh before uninstalling"
        );
    }
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
fn reload_config(proxy: &Proxy, last_read: &mut Option<u64>) -> bool {
    let ConfigSource::File(path) = &proxy.config.source else {
        return false;
    };
    let text = match weft_core::mesh::read_config(path) {
        Ok(text) => text,
        Err(e) => {
            if last_read.take().is_some() {
                error!("{e}; keeping the last good config");
            }
            return false;
        }
    };
    let read = digest(&text);
    if *last_read == Some(read) {
        return false;
    }
    *last_read = Some(read);
    match MeshConfig::parse(path, &text) {
        Ok(mesh) => {
            info!(
                workloads = mesh.workloads.len(),
                services = mesh.services.len(),
                "config reloaded"
            );
            proxy.index.store(Arc::new(MeshIndex::new(mesh)));
            true
        }
        Err(e) => {
            error!("{e}; keeping the last good config");
            false
        }
    }
}

/// A digest of a config file's text, to tell whether it changed.
fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Answers weft-cni: the pod is captured before the ADD returns, or the ADD fails.
async fn handle_cni(
    proxy: &Arc<Proxy>,
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
    pods.reconcile(proxy, registry, watch).await;
    let response = match (label, pods.enrollment(proxy, &namespace, &name)) {
        ("del", _) => Response::Ok {
            captured: false,
            message: "released".into(),
        },
        (_, enrollment::Enrollment::Captured) => Response::Ok {
            captured: true,
            message: format!("captured ({})", proxy.capture.mode()),
        },
        (_, enrollment::Enrollment::NotInMesh) => Response::Ok {
            captured: false,
            message: "not in the mesh on this node: not captured".into(),
        },
        (_, enrollment::Enrollment::Failed(why)) => Response::Error { message: why },
    };
    info!(op = label, pod = %name, namespace = %namespace, ?response, "CNI request");
    response
}

fn load_certs(config: &ProxyConfig, index: &MeshIndex, previous: &CertStore) -> CertStore {
    // Only enrolled workloads have certificates: the others would log a missing one on every
    // reload.
    let wanted = index
        .workloads_on(&config.node)
        .filter(|w| w.protocol == weft_core::mesh::Protocol::Hbone)
        .map(|w| index.identity(w))
        .collect::<Vec<_>>();
    let (store, errors) = CertStore::load(
        &config.cert_dir,
        &config.trust_bundle,
        wanted.into_iter(),
        previous,
    );
    // Each failure once: a failed identity is retried every tick until it loads.
    for e in errors {
        if !previous.failed.contains(&e.to_string()) {
            error!(error = %e, "certificate not loaded; pods with this identity are refused until it is fixed");
        }
    }
    store
}
