//! What every request shares: the waypoint (its config snapshot, certificate, HBONE pool,
//! metrics), the tunnel a request arrived in, the body type, and a random source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use weft_core::hbone::Pool;
use weft_core::identity::SpiffeId;

use crate::identity::Certs;
use crate::metrics::RequestMetrics;
use crate::snapshot::Snapshot;
use weft_core::rng::Rng;

/// What every request shares.
pub(crate) struct Waypoint {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) certs: Arc<Certs>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) metrics: RequestMetrics,
    /// The tunnels, as TCP connections.
    pub(crate) tcp: weft_core::metrics::TcpMetrics,
    pub(crate) seed: AtomicU64,
    /// Places for mirrored requests in flight.
    pub(crate) mirrors: Arc<Semaphore>,
    /// Sampling and the export queue (swapped when the config's tracing changes).
    pub(crate) tracing: weft_core::trace::config::Tracing,
}

impl Waypoint {
    /// A random source for one decision (split, endpoint choice, jitter).
    pub(crate) fn rng(&self) -> Rng {
        Rng::seeded(
            self.seed
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
        )
    }
}

/// The tunnel a request arrived in.
pub(crate) struct Tunnel {
    pub(crate) waypoint: Arc<Waypoint>,
    /// The client's proven identity (its node proxy presented the source workload's cert).
    pub(crate) peer: SpiffeId,
    /// The original client address (`forwarded`).
    pub(crate) client: SocketAddr,
    /// The original destination (service VIP:port or endpoint:port).
    pub(crate) target: SocketAddr,
}
