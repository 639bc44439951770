//! What every listener of the node proxy shares: its settings, the mesh index, certificates,
//! the HBONE pool, metrics and capture. State read per connection is a lock-free snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_core::hbone::{Pool, PoolConfig};
use weft_core::mesh::MeshIndex;
use weft_core::metrics::TcpMetrics;

use crate::capture::Capture;
use crate::config::ProxyConfig;
use crate::identity::CertStore;

/// What every listener of the node proxy shares.
pub(crate) struct Proxy {
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) index: ArcSwap<MeshIndex>,
    pub(crate) certs: ArcSwap<CertStore>,
    pub(crate) pool: Pool,
    pub(crate) metrics: TcpMetrics,
    pub(crate) gauges: NodeGauges,
    pub(crate) registry: Registry,
    pub(crate) capture: Capture,
    pub(crate) ready: AtomicBool,
    next_conn: AtomicU64,
    next_pick: AtomicUsize,
    /// Connection spans (off unless `--trace-collector` is given).
    pub(crate) tracing: weft_core::trace::config::Tracing,
    /// The DNS proxy.
    pub(crate) dns: crate::dns::Dns,
    seed: AtomicU64,
}

impl Proxy {
    pub(crate) fn new(
        config: ProxyConfig,
        index: MeshIndex,
        certs: CertStore,
        capture: Capture,
    ) -> Self {
        let mut registry = Registry::with_prefix(&config.metrics_prefix);
        let metrics = TcpMetrics::register(&mut registry);
        let mode = prometheus_client::metrics::family::Family::<
            Vec<(String, String)>,
            prometheus_client::metrics::gauge::Gauge,
        >::default();
        // Both mechanisms have a series, 1 for the one in use, so "fell back" is a comparison.
        for m in ["ebpf", "nftables"] {
            mode.get_or_create(&vec![("mode".to_owned(), m.to_owned())])
                .set(i64::from(capture.mode() == m));
        }
        registry.register(
            "capture_mode",
            "Active traffic capture mechanism (1 for the mode in use)",
            mode,
        );
        let gauges = NodeGauges::register(&mut registry);
        let dns = crate::dns::Dns::register(&mut registry, config.dns_upstream);
        let tracing = weft_core::trace::config::Tracing::new(
            weft_core::trace::config::Flags {
                // Checked at startup (`run`).
                collector: config
                    .trace_collector
                    .as_deref()
                    .and_then(|c| weft_core::trace::export::Collector::parse(c).ok()),
                sampling_percent: Some(config.trace_sampling),
            },
            format!("weft-node-proxy.{}", config.node),
        );
        if config.trace_collector.is_some() {
            tracing.register(&mut registry);
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self {
            tracing,
            dns,
            seed: AtomicU64::new(seed),
            config: Arc::new(config),
            index: ArcSwap::from_pointee(index),
            certs: ArcSwap::from_pointee(certs),
            // Busy tunnels to one peer are encrypted on as many threads as the proxy runs.
            pool: Pool::new(PoolConfig::per_worker()),
            metrics,
            gauges,
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

    /// Brings the gauges read from live state up to date (before each scrape).
    pub(crate) fn refresh_gauges(&self) {
        let certs = self.certs.load();
        self.gauges.cert_expiry.clear();
        for (id, identity) in &certs.identities {
            let expires = identity
                .cert
                .not_after()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            self.gauges
                .cert_expiry
                .get_or_create(&vec![("identity".to_owned(), id.to_string())])
                .set(expires);
        }
        let pool = self.pool.stats();
        self.gauges.pool_connections.set(pool.connections as i64);
        self.gauges.pool_streams.set(pool.streams as i64);
    }

    /// A random source for one decision (a trace id, a sampling draw).
    pub(crate) fn rng(&self) -> weft_core::rng::Rng {
        weft_core::rng::Rng::seeded(
            self.seed
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
        )
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

/// The node proxy's state, as gauges.
pub(crate) struct NodeGauges {
    /// Pods whose traffic is captured now.
    pub(crate) enrolled: Gauge,
    /// When each local identity's certificate expires (Unix seconds).
    pub(crate) cert_expiry: Family<Vec<(String, String)>, Gauge>,
    /// Outbound HBONE connections open.
    pub(crate) pool_connections: Gauge,
    /// CONNECT streams open over them.
    pub(crate) pool_streams: Gauge,
}

impl NodeGauges {
    fn register(registry: &mut Registry) -> Self {
        let gauges = Self {
            enrolled: Gauge::default(),
            cert_expiry: Family::default(),
            pool_connections: Gauge::default(),
            pool_streams: Gauge::default(),
        };
        registry.register(
            "enrolled_pods",
            "Pods whose traffic this node proxy captures",
            gauges.enrolled.clone(),
        );
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "When each local workload certificate expires",
            gauges.cert_expiry.clone(),
        );
        registry.register(
            "hbone_pool_connections",
            "Outbound HBONE connections open",
            gauges.pool_connections.clone(),
        );
        registry.register(
            "hbone_pool_streams",
            "CONNECT streams open over outbound HBONE connections",
            gauges.pool_streams.clone(),
        );
        gauges
    }
}
