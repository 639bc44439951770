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

/// The tunnel a request arrived in, or (as an ingress gateway) the connection of a client
/// outside the mesh.
pub(crate) struct Tunnel {
    pub(crate) waypoint: Arc<Waypoint>,
    /// The client's proven identity (its node proxy presented the source workload's cert);
    /// `None`: a client outside the mesh, at an ingress gateway's listener.
    pub(crate) peer: Option<SpiffeId>,
    /// The original client address (`forwarded`; the outside client's own address).
    pub(crate) client: SocketAddr,
    /// The original destination (service VIP:port or endpoint:port; at a gateway, the
    /// listener's own address and port).
    pub(crate) target: SocketAddr,
    /// Addressed to one of the gateway's listeners (an outside client's connection, or a
    /// mesh client's tunnel to an egress gateway): requests are routed by host.
    pub(crate) at_listener: bool,
}

impl Tunnel {
    /// Whether the client is outside the mesh (an ingress gateway's listener).
    pub(crate) fn outside(&self) -> bool {
        self.peer.is_none()
    }

    /// The address the tunnels upstream say they are for (`forwarded`): the mesh client, or
    /// at a gateway's listener the gateway itself (the workload whose identity it proves).
    pub(crate) fn forwarded(&self) -> SocketAddr {
        if self.at_listener {
            SocketAddr::new(self.target.ip(), self.client.port())
        } else {
            self.client
        }
    }
}
