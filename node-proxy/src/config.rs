//! The node proxy's settings: built once from flags (`main.rs`), immutable, dumpable, and
//! constructible directly in tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_core::control::ControllerEndpoint;

use crate::capture;

/// The node proxy's settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The node this proxy serves.
    pub node: String,
    /// The capture mechanism asked for.
    pub capture: capture::Requested,
    /// bpffs directory for this proxy's pinned maps and links.
    pub bpf_pin_dir: PathBuf,
    /// cgroup v2 directory the socket programs attach to (default: the cgroup v2 root).
    pub cgroup: Option<PathBuf>,
    /// Unix socket on which weft-cni reports pods.
    pub cni_socket: PathBuf,
    /// The host's CNI network config directory: on shutdown `weft-cni` is taken out of its
    /// chain (the init container puts it back when a node proxy starts again).
    pub cni_conf_dir: Option<PathBuf>,
    /// State that survives a restart (the pods weft-cni reported).
    pub state_dir: PathBuf,
    /// Where the mesh config comes from.
    pub source: ConfigSource,
    /// Workload certificates: `<dir>/<namespace>/<serviceaccount>/{cert,key}.pem`.
    pub cert_dir: PathBuf,
    /// Trust bundle (PEM).
    pub trust_bundle: PathBuf,
    /// Admin (config dump) address.
    pub admin_addr: SocketAddr,
    /// Prometheus metrics address.
    pub metrics_addr: SocketAddr,
    /// Metric name prefix: `weft`, or `istio` for dashboards and queries written for Istio.
    pub metrics_prefix: String,
    /// Readiness address.
    pub readiness_addr: SocketAddr,
    /// How often the config and certificate files are checked for changes.
    pub reload_interval: Duration,
    /// Time in-flight connections get to finish on SIGTERM.
    pub drain_deadline: Duration,
    /// Time an inbound mTLS handshake may take.
    pub handshake_timeout: Duration,
    /// Where connection spans go (`zipkin:`, `otlp-http:` or `otlp-grpc:HOST:PORT`); none:
    /// no spans, and no trace context on the tunnels this proxy opens.
    pub trace_collector: Option<String>,
    /// Share of new connections traced, in percent (a tunnel's sampled context is kept).
    pub trace_sampling: f64,
    /// Where DNS queries the proxy does not answer go; none: they fail (SERVFAIL).
    pub dns_upstream: Option<SocketAddr>,
}

/// Where the mesh config comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A YAML file, polled for changes.
    File(PathBuf),
    /// The controller's config stream.
    Controller(ControllerEndpoint),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Controller(c) => write!(f, "controller {}", c.addr),
        }
    }
}
