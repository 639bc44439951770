//! The waypoint's settings, built once from flags (`main.rs`), and the runtime that wires its
//! parts: the certificate and config streams from the controller, the metrics and readiness
//! listener, and the HBONE listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use arc_swap::ArcSwap;
use tracing::{info, warn};
use weft_core::config_client::{self, StreamSettings};
use weft_core::hbone::{Pool, PoolConfig};
use weft_core::identity::SpiffeId;

use crate::shared::Waypoint;
use crate::{identity, inbound, metrics, snapshot};

/// The waypoint's settings, built once from flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Name of the waypoint (its Gateway).
    pub name: String,
    /// Namespace of the waypoint.
    pub namespace: String,
    /// Service account the waypoint runs as (its identity).
    pub service_account: String,
    pub trust_domain: String,
    /// The controller's gRPC address.
    pub controller: SocketAddr,
    /// File holding the credential for the controller.
    pub controller_credential: PathBuf,
    /// Certificates: `<dir>/<ns>/<sa>/{cert,key}.pem`.
    pub cert_dir: PathBuf,
    /// Trust bundle (PEM).
    pub trust_bundle: PathBuf,
    /// HBONE listener.
    pub listen: SocketAddr,
    /// Metrics (`/metrics`) and readiness (`/healthz/ready`).
    pub metrics_addr: SocketAddr,
    /// Metric name prefix (`weft` or `istio`).
    pub metrics_prefix: String,
    /// `/config_dump` (loopback: reach it with a port-forward).
    pub admin_addr: SocketAddr,
    /// Time in-flight requests get to finish on SIGTERM.
    pub drain_deadline: std::time::Duration,
    /// Where spans go (`zipkin:`, `otlp-http:` or `otlp-grpc:HOST:PORT`); none: where the
    /// config's tracing says, if anywhere.
    pub trace_collector: Option<String>,
    /// Share of new traces sampled, in percent (a request's incoming decision is kept); none:
    /// the config's rate, else 1%.
    pub trace_sampling: Option<f64>,
    /// As an ingress gateway: where TLS credentials are (`<dir>/<name>/tls.crt`, `tls.key`).
    pub credential_dir: PathBuf,
}

/// Runs the waypoint until SIGTERM or SIGINT.
pub async fn run(args: Settings) -> anyhow::Result<()> {
    let id = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account);
    let bundle = args.trust_bundle.clone();
    let certs = identity::Certs::new(&args.cert_dir, &bundle, id.clone());
    tokio::spawn(certs.clone().watch());
    let mut registry = prometheus_client::registry::Registry::with_prefix(&args.metrics_prefix);
    let metrics = metrics::RequestMetrics::register(&mut registry);
    let tcp = weft_core::metrics::TcpMetrics::register(&mut registry);
    let collector = args
        .trace_collector
        .as_deref()
        .map(weft_core::trace::export::Collector::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--trace-collector {e}"))?;
    if let Some(p) = args.trace_sampling
        && !(0.0..=100.0).contains(&p)
    {
        anyhow::bail!("--trace-sampling {p}: a percentage from 0 to 100");
    }
    let tracing = weft_core::trace::config::Tracing::new(
        weft_core::trace::config::Flags {
            collector,
            sampling_percent: args.trace_sampling,
        },
        format!("{}.{}", args.name, args.namespace),
    );
    tracing.register(&mut registry);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let waypoint = Arc::new(Waypoint {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        snapshot: ArcSwap::from_pointee(snapshot::Snapshot::default()),
        certs,
        // Busy tunnels to one peer are encrypted on as many threads as the waypoint runs.
        pool: Arc::new(Pool::new(PoolConfig::per_worker())),
        metrics,
        tcp,
        seed: AtomicU64::new(seed),
        mirrors: Arc::new(tokio::sync::Semaphore::new(
            crate::request::MIRRORS_IN_FLIGHT,
        )),
        tracing,
    });
    // As an ingress gateway: listeners for clients outside the mesh, as the config names them.
    let listeners = Arc::new(crate::ingress::Listeners::new(args.credential_dir.clone()));
    let (signal, serving_drain) = weft_core::drain::channel();
    listeners.open(serving_drain.clone());

    let retained = Arc::new(snapshot::Retained::new(args.credential_dir.clone()));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let controller = weft_core::control::ControllerEndpoint {
        addr: args.controller,
        credential_file: args.controller_credential.clone(),
        identity: weft_core::control::controller_identity(&args.trust_domain),
    };
    let settings = StreamSettings {
        controller: controller.clone(),
        node: format!("waypoint.{}.{}", args.namespace, args.name),
        trust_bundle: bundle.clone(),
        about: [
            ("role".to_owned(), "waypoint".to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]
        .into(),
    };
    // Its own certificate, from the controller's CA, renewed at half-life.
    let ca = weft_core::ca_client::CaSettings {
        controller,
        cert_dir: args.cert_dir.clone(),
        trust_bundle: bundle,
    };
    let own = id.clone();
    tokio::spawn(weft_core::ca_client::run(
        ca,
        move || [own.clone()].into(),
        Arc::new(tokio::sync::Notify::new()),
    ));
    let applying = waypoint.clone();
    let reconciling = listeners.clone();
    let mut first = Some(first_tx);
    tokio::spawn(config_client::follow(settings, move |mesh, _bundle| {
        let snapshot =
            snapshot::Snapshot::build(mesh, &applying.namespace, &applying.name, &retained)?;
        applying.tracing.apply(snapshot.config.tracing.as_ref());
        let ports = snapshot.listener_ports();
        applying.snapshot.store(Arc::new(snapshot));
        reconciling.reconcile(&applying, &ports);
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        Ok(())
    }));

    let registry = Arc::new(registry);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler: weft_core::admin::Handler = {
        let ready = ready.clone();
        Arc::new(move |path| match path {
            "/metrics" => {
                let mut text = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                weft_core::admin::Reply::text(text)
            }
            "/healthz/ready" if ready.load(Ordering::Relaxed) => {
                weft_core::admin::Reply::text("ready\n")
            }
            "/healthz/ready" => weft_core::admin::Reply::status(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the first config\n",
            ),
            _ => weft_core::admin::Reply::status(http::StatusCode::NOT_FOUND, "try /metrics\n"),
        })
    };
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding {}", args.admin_addr))?;
    let dumped = waypoint.clone();
    let dump: weft_core::admin::Handler = Arc::new(move |path| match path {
        "/config_dump" => {
            let snapshot = dumped.snapshot.load();
            let certificate = dumped.certs.get().map(|c| {
                serde_json::json!({
                    "identity": c.id.to_string(),
                    "expires_in_secs": c.cert.remaining().as_secs(),
                })
            });
            let dump = serde_json::json!({
                "waypoint": format!("{}/{}", dumped.namespace, dumped.name),
                "certificates": certificate.into_iter().collect::<Vec<_>>(),
                "tracing": dumped.tracing.describe(),
                "config": snapshot.config,
            });
            weft_core::admin::Reply::json(serde_json::to_string_pretty(&dump).unwrap_or_default())
        }
        _ => weft_core::admin::Reply::status(http::StatusCode::NOT_FOUND, "try /config_dump\n"),
    });
    let (_admin_stop, admin_drain) = weft_core::drain::channel();
    tokio::spawn(weft_core::admin::serve(admin_listener, dump, admin_drain));
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let (_stop, drain) = weft_core::drain::channel();
    tokio::spawn(weft_core::admin::serve(metrics_listener, handler, drain));

    info!(waypoint = %format!("{}/{}", args.namespace, args.name), identity = %id, controller = %args.controller, "waiting for the first config and a certificate");
    let _ = first_rx.await;
    while waypoint.certs.get().is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the HBONE port {}", args.listen))?;
    ready.store(true, Ordering::Relaxed);
    info!(listen = %args.listen, "waypoint ready");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let serving = tokio::spawn(inbound::run(waypoint.clone(), listener, serving_drain));
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!(deadline = ?args.drain_deadline, "draining: no new connections, GOAWAY to HBONE peers, in-flight requests finish");
    ready.store(false, Ordering::Relaxed);
    listeners.close();
    drop(waypoint);
    let finished = signal.drain(args.drain_deadline).await;
    serving.abort();
    if finished {
        info!("waypoint stopped");
    } else {
        warn!("drain deadline passed with requests still in flight; waypoint stopped");
    }
    Ok(())
}
