//! `weft-node-proxy`: the per-node L4 proxy of the Weft mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weft_core::control::ControllerEndpoint;
use weft_core::telemetry::{self, LogFormat};
use weft_node_proxy::capture;
use weft_node_proxy::config::{ConfigSource, ProxyConfig};

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
    /// Metric name prefix: `istio` names the metrics as Istio does (istio_requests_total...),
    /// so existing Istio dashboards and Kiali queries read them unchanged.
    #[arg(long, default_value = "weft", value_parser = ["weft", "istio"])]
    metrics_prefix: String,
    /// Readiness address.
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// How often the config and certificate files are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    reload_interval_ms: u64,
    /// Time in-flight connections get to finish on SIGTERM, in seconds.
    #[arg(long, default_value_t = 10)]
    drain_deadline_secs: u64,
    /// Threads carrying connections (0: one per CPU the process may use, as for the
    /// waypoint's flag of the same name).
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
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
    /// The host's CNI network config directory; on shutdown `weft-cni` is taken out of its
    /// chain, so a node without a node proxy creates pods as if Weft were not installed.
    #[arg(long, env = "WEFT_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// A span per connection (off by default), sent to `zipkin:HOST:PORT`,
    /// `otlp-http:HOST:PORT` or `otlp-grpc:HOST:PORT`; the tunnels this proxy opens then carry
    /// the trace context (`traceparent` on the CONNECT), and the destination's span joins it.
    #[arg(long, value_name = "COLLECTOR")]
    trace_collector: Option<String>,
    /// Share of new connections traced, in percent.
    #[arg(long, default_value_t = 1.0)]
    trace_sampling: f64,
    /// Where DNS queries the proxy does not answer go (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long, env = "WEFT_DNS_UPSTREAM")]
    dns_upstream: Option<std::net::SocketAddr>,
    /// Directory for state that must survive a restart (the pods weft-cni reported).
    /// Default: /var/run/weft/<node>.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// One malloc arena for the whole process, unless the operator set `MALLOC_ARENA_MAX`. glibc
/// otherwise gives each thread that allocates an arena of its own (workers, pod namespace
/// threads) and each keeps its high-water mark: peak RSS under load was 21.4 MiB with the
/// default and 16.7 MiB with one arena, with no CPU cost measured (docs/benchmarks.md).
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> anyhow::Result<()> {
    one_malloc_arena();
    let args = Args::parse();
    let args_workers = args.worker_threads;
    let _log = telemetry::init(args.log_format, "info");
    match weft_core::accept::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
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
        cni_conf_dir: args.cni_conf_dir,
        state_dir,
        trust_bundle: args
            .trust_bundle
            .clone()
            .unwrap_or_else(|| args.cert_dir.join("root-cert.pem")),
        source: match (args.config, args.controller) {
            (Some(path), _) => ConfigSource::File(path),
            (None, Some(addr)) => ConfigSource::Controller(ControllerEndpoint {
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
        metrics_prefix: args.metrics_prefix,
        readiness_addr: args.readiness_addr,
        reload_interval: Duration::from_millis(args.reload_interval_ms),
        drain_deadline: Duration::from_secs(args.drain_deadline_secs),
        handshake_timeout: Duration::from_secs(10),
        trace_collector: args.trace_collector,
        trace_sampling: args.trace_sampling,
        dns_upstream: args.dns_upstream.or_else(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|text| weft_node_proxy::nameserver(&text))
        }),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args_workers > 0 {
        runtime.worker_threads(args_workers);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(weft_node_proxy::run(config))
}
