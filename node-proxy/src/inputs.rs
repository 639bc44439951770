//! What every listener of the node proxy shares: its flags, the mesh state, certificates, the
//! HBONE pool and metrics. State read per connection is a lock-free snapshot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use weft_core::config::State;
use weft_core::hbone::{Pool, PoolConfig};
use weft_core::metrics::TcpMetrics;

use crate::capture::Capture;
use crate::identity::CertStore;

/// The node proxy's settings, built once from flags.
#[derive(Clone, Debug)]
pub(crate) struct ProxyConfig {
    pub(crate) node: String,
    pub(crate) capture: crate::capture::Requested,
    pub(crate) bpf_pin_dir: PathBuf,
    pub(crate) cgroup: Option<PathBuf>,
    pub(crate) cni_socket: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) source: ConfigSource,
    pub(crate) cert_dir: PathBuf,
    pub(crate) trust_bundle: PathBuf,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) readiness_addr: SocketAddr,
    pub(crate) reload_interval: Duration,
    pub(crate) drain_deadline: Duration,
    pub(crate) handshake_timeout: Duration,
}

/// Where the mesh config comes from.
#[derive(Clone, Debug)]
pub(crate) enum ConfigSource {
    /// A YAML file, polled for changes.
    File(PathBuf),
    /// The controller's config stream.
    Controller(crate::xds::ControllerSettings),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Controller(c) => write!(f, "controller {}", c.addr),
        }
    }
}

pub(crate) struct Inputs {
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) state: ArcSwap<State>,
    pub(crate) certs: ArcSwap<CertStore>,
    pub(crate) pool: Pool,
    pub(crate) metrics: TcpMetrics,
    pub(crate) registry: Registry,
    pub(crate) capture: Capture,
    pub(crate) ready: AtomicBool,
    next_conn: AtomicU64,
    next_pick: AtomicUsize,
}

impl Inputs {
    pub(crate) fn new(
        config: ProxyConfig,
        state: State,
        certs: CertStore,
        capture: Capture,
    ) -> Self {
        let mut registry = Registry::with_prefix("weft");
        let metrics = TcpMetrics::register(&mut registry);
        let mode = prometheus_client::metrics::family::Family::<
            Vec<(String, String)>,
            prometheus_client::metrics::gauge::Gauge,
        >::default();
        mode.get_or_create(&vec![("mode".to_owned(), capture.mode().to_owned())])
            .set(1);
        registry.register(
            "capture_mode",
            "Active traffic capture mechanism (1 for the mode in use)",
            mode,
        );
        Self {
            config: Arc::new(config),
            state: ArcSwap::from_pointee(state),
            certs: ArcSwap::from_pointee(certs),
            pool: Pool::new(PoolConfig::default()),
            metrics,
            registry,
            capture,
            ready: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            next_pick: AtomicUsize::new(0),
        }
    }

    /// The certificate store once it holds `id` and a trust bundle. A certificate being issued
    /// (a pod just enrolled) is waited for, up to 3 s; `None` after that.
    pub(crate) async fn certs_with(
        &self,
        id: &weft_core::identity::SpiffeId,
    ) -> Option<Arc<CertStore>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let certs = self.certs.load_full();
            if certs.get(id).is_some() && certs.bundle.is_some() {
                return Some(certs);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fresh connection id for log spans.
    pub(crate) fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Round-robin choice among `n` endpoints.
    pub(crate) fn pick(&self, n: usize) -> usize {
        self.next_pick.fetch_add(1, Ordering::Relaxed) % n.max(1)
    }
}

/// One side of a connection, as metrics and access logs name it.
pub(crate) struct Peer<'a> {
    pub(crate) workload: Option<&'a weft_core::config::Workload>,
    pub(crate) identity: Option<&'a weft_core::identity::SpiffeId>,
}

impl Peer<'_> {
    pub(crate) const UNKNOWN: Peer<'static> = Peer {
        workload: None,
        identity: None,
    };
}

pub(crate) fn tcp_labels(
    reporter: weft_core::metrics::Reporter,
    source: &Peer<'_>,
    destination: &Peer<'_>,
    service: Option<&weft_core::config::Service>,
    policy: weft_core::metrics::SecurityPolicy,
) -> weft_core::metrics::TcpLabels {
    let name = |p: &Peer<'_>| {
        p.workload
            .map_or_else(|| "unknown".into(), |w| w.name.clone())
    };
    let ns = |p: &Peer<'_>| {
        p.workload
            .map_or_else(|| "unknown".into(), |w| w.namespace.clone())
    };
    let principal = |p: &Peer<'_>| {
        p.identity
            .map_or_else(|| "unknown".into(), ToString::to_string)
    };
    weft_core::metrics::TcpLabels {
        reporter,
        source_workload: name(source),
        source_workload_namespace: ns(source),
        source_principal: principal(source),
        destination_workload: name(destination),
        destination_workload_namespace: ns(destination),
        destination_principal: principal(destination),
        destination_service: service.map_or_else(
            || "unknown".into(),
            |s| format!("{}.{}.svc.cluster.local", s.name, s.namespace),
        ),
        connection_security_policy: policy,
    }
}
