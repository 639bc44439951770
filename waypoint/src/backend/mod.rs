//! A backend (what a route sends to: a service, or one subset of it) and its endpoints: load
//! balancing (`balance`), outlier detection (`outlier`), and the connection pool with its
//! limits (`pool`). Runtime state outlives config updates: an endpoint keeps its counters,
//! ejection and connections while it stays in the backend.

mod balance;
mod endpoint;
mod outlier;
mod pool;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tracing::info;
use weft_core::mesh::Workload;
use weft_core::mesh::{Outlier, PoolLimits};

pub(crate) use balance::PickError;
pub(crate) use endpoint::{Endpoint, Reach};
pub(crate) use outlier::Outcome;
pub(crate) use pool::{ConnSlot, Http1Conn, Http2Conn, PendingSlot, RequestSlot};

/// A backend's limits, replaced whole on a config update.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limits {
    pub(crate) pool: PoolLimits,
    pub(crate) outlier: Option<Outlier>,
}

/// The runtime of one backend.
pub(crate) struct Backend {
    pub(crate) name: String,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    limits: ArcSwap<Limits>,
    occupancy: Arc<pool::Occupancy>,
}

impl Backend {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            limits: ArcSwap::from_pointee(Limits::default()),
            occupancy: Arc::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    /// Picks an endpoint (only `pinned`, when the client addressed one pod; avoiding `avoid`
    /// when another is healthy) and takes a request slot on it (`maxRequests`).
    pub(crate) fn pick(
        &self,
        rng: &mut weft_core::rng::Rng,
        avoid: Option<IpAddr>,
        pinned: Option<IpAddr>,
    ) -> Result<(Arc<Endpoint>, RequestSlot), PickError> {
        let max = self.limits.load().pool.max_requests;
        balance::pick(&self.endpoints.load(), rng, avoid, pinned, |e| {
            self.occupancy.try_request(max, &e.in_flight)
        })
    }

    /// A request slot on `endpoint`, if `maxRequests` leaves one.
    #[cfg(test)]
    pub(crate) fn try_request(&self, endpoint: &Endpoint) -> Option<RequestSlot> {
        let max = self.limits.load().pool.max_requests;
        self.occupancy.try_request(max, &endpoint.in_flight)
    }

    /// Records a try's outcome for outlier detection (ejecting the endpoint if it trips).
    pub(crate) fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        let limits = self.limits.load();
        let Some(outlier) = &limits.outlier else {
            return;
        };
        let census = |now: Instant| {
            let all = self.endpoints.load();
            let ejected = all.iter().filter(|e| e.health.ejected(now)).count();
            (ejected, all.len())
        };
        if let Some(duration) = endpoint.health.record(outlier, outcome, census) {
            info!(backend = %self.name, endpoint = %endpoint.workload.name, ejected_for = ?duration, "endpoint ejected by outlier detection");
        }
    }

    /// A place for a new connection, if `maxConnections` leaves one.
    pub(crate) fn try_connection(&self) -> Option<ConnSlot> {
        let max = self.limits.load().pool.max_connections;
        self.occupancy.try_connection(max)
    }

    /// A place in the pending queue, if `http1MaxPendingRequests` leaves one.
    pub(crate) fn try_pending(&self) -> Option<PendingSlot> {
        let max = self.limits.load().pool.max_pending;
        self.occupancy.try_pending(max)
    }

    /// Resolves when a connection is released or returned idle.
    pub(crate) async fn released(&self) {
        self.occupancy.released().await;
    }

    /// Tells one waiting request that a connection came back idle.
    pub(crate) fn wake_one(&self) {
        self.occupancy.wake_one();
    }

    /// Closes one idle HTTP/1.1 connection of any endpoint, to make room under the limit.
    pub(crate) fn evict_idle(&self) -> bool {
        self.endpoints
            .load()
            .iter()
            .any(|e| e.conns.pop_idle().is_some())
    }

    /// Open connections, pending requests and requests in flight.
    #[cfg(test)]
    pub(crate) fn occupancy(&self) -> (usize, usize, usize) {
        self.occupancy.counts()
    }

    /// Whether `ip` is one of its endpoints.
    pub(crate) fn has_endpoint(&self, ip: IpAddr) -> bool {
        self.endpoints.load().iter().any(|e| e.workload.ip == ip)
    }
}

/// Backends by name, kept across config updates.
#[derive(Default)]
pub(crate) struct Backends(Mutex<HashMap<String, Arc<Backend>>>);

impl Backends {
    /// The backend `name` with these endpoints and limits (endpoints that stay keep their state).
    pub(crate) fn update(
        &self,
        name: &str,
        endpoints: Vec<(Arc<Workload>, Reach)>,
        limits: Limits,
    ) -> Arc<Backend> {
        let backend = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Backend::new(name)))
            .clone();
        let old = backend.endpoints.load();
        let next: Vec<Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|(w, reach)| {
                old.iter()
                    .find(|e| e.workload.ip == w.ip && e.reach == reach)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(w, reach)))
            })
            .collect();
        backend.endpoints.store(Arc::new(next));
        backend.limits.store(Arc::new(limits));
        backend
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use weft_core::identity::SpiffeId;

    /// A backend with `n` endpoints `10.0.0.1..=n` and these limits.
    pub(crate) fn backend(n: u8, limits: Limits) -> Arc<Backend> {
        let endpoints = (1..=n)
            .map(|i| {
                let workload = Workload {
                    name: format!("ep-{i}"),
                    namespace: "shop".into(),
                    service_account: "web".into(),
                    ip: std::net::IpAddr::from([10, 0, 0, i]),
                    node: "n1".into(),
                    protocol: Default::default(),
                    netns: None,
                    mtls: Default::default(),
                    authz: Vec::new(),
                    meta: Default::default(),
                };
                (
                    Arc::new(workload),
                    Reach::Mesh(SpiffeId::new("cluster.local", "shop", "web")),
                )
            })
            .collect();
        Backends::default().update("shop/web:web", endpoints, limits)
    }
}
