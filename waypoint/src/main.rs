//! `weft-waypoint`: flags, then the waypoint (`weft_waypoint::run`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use weft_core::telemetry::{self, LogFormat};

/// The waypoint.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Name of the waypoint (its Gateway).
    #[arg(long)]
    name: String,
    /// Namespace of the waypoint.
    #[arg(long)]
    namespace: String,
    /// Service account the waypoint runs as (its identity).
    #[arg(long)]
    service_account: String,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The controller's gRPC address.
    #[arg(long)]
    controller: SocketAddr,
    /// File holding the credential for the controller.
    #[arg(long)]
    controller_credential: PathBuf,
    /// Certificates: `<dir>/<ns>/<sa>/{cert,key}.pem` and `<dir>/root-cert.pem`.
    #[arg(long)]
    cert_dir: PathBuf,
    /// Trust bundle (default `<cert-dir>/root-cert.pem`).
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    listen: SocketAddr,
    /// Metrics (`/metrics`) and readiness (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// Metric name prefix: `istio` names the metrics as Istio does (istio_requests_total...),
    /// so existing Istio dashboards and Kiali queries read them unchanged.
    #[arg(long, default_value = "weft", value_parser = ["weft", "istio"])]
    metrics_prefix: String,
    /// `/config_dump`, on loopback (reach it with `kubectl port-forward`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Time in-flight requests get to finish on SIGTERM, in seconds.
    #[arg(long, default_value_t = 10)]
    drain_deadline_secs: u64,
    /// Log format: plain or json.
    #[arg(long, default_value = "plain")]
    log_format: LogFormat,
    /// Where spans go: `zipkin:HOST:PORT` (Zipkin v2 JSON, also Jaeger's Zipkin port),
    /// `otlp-http:HOST:PORT` (OTLP/HTTP JSON) or `otlp-grpc:HOST:PORT`. Without it, where the
    /// users' tracing config says (Telemetry, IstioOperator, linkerd-config), if anywhere.
    #[arg(long, value_name = "COLLECTOR")]
    trace_collector: Option<String>,
    /// Share of new traces sampled, in percent (a request's own sampled flag is kept).
    /// Without it, the config's rate, else 1.
    #[arg(long)]
    trace_sampling: Option<f64>,
    /// As an ingress gateway: the TLS credentials an HTTPS server's `credentialName` names,
    /// as `<dir>/<name>/tls.crt` and `tls.key` (a TLS Secret mounted under its name).
    #[arg(long, default_value = "/etc/weft/credentials")]
    credential_dir: PathBuf,
    /// Threads serving requests: 1 serves everything on one thread (no wakeups between
    /// threads; the cheapest per request, up to one core's worth of requests), 0 one per CPU
    /// the process may use. More requests than one core serves: more replicas, or more threads.
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _log = telemetry::init(args.log_format, "info");
    match weft_core::accept::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let settings = weft_waypoint::Settings {
        trust_bundle: args
            .trust_bundle
            .unwrap_or_else(|| args.cert_dir.join("root-cert.pem")),
        name: args.name,
        namespace: args.namespace,
        service_account: args.service_account,
        trust_domain: args.trust_domain,
        controller: args.controller,
        controller_credential: args.controller_credential,
        cert_dir: args.cert_dir,
        listen: args.listen,
        metrics_addr: args.metrics_addr,
        metrics_prefix: args.metrics_prefix,
        admin_addr: args.admin_addr,
        drain_deadline: std::time::Duration::from_secs(args.drain_deadline_secs),
        trace_collector: args.trace_collector,
        trace_sampling: args.trace_sampling,
        credential_dir: args.credential_dir,
    };
    let mut runtime = match args.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut multi = tokio::runtime::Builder::new_multi_thread();
            multi.worker_threads(n);
            multi
        }
    };
    runtime
        .enable_all()
        .build()?
        .block_on(weft_waypoint::run(settings))
}
