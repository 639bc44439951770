//! Load balancing over a backend's endpoints: power of two choices by requests in flight,
//! skipping endpoints ejected by outlier detection; pool limits (circuit breaking) and the
//! per-endpoint failure counters that eject. Runtime state outlives config updates: an
//! endpoint keeps its counters and ejection while it stays in the backend.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::info;
use weft_core::config::Workload;
use weft_core::identity::SpiffeId;
use weft_core::l7::{Outlier, PoolLimits};

use crate::upstream::Conns;

/// One endpoint of a backend.
pub(crate) struct Endpoint {
    pub(crate) workload: Arc<Workload>,
    pub(crate) identity: SpiffeId,
    in_flight: AtomicUsize,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    ejections: AtomicU32,
    pub(crate) conns: Conns,
}

impl Endpoint {
    fn new(workload: Arc<Workload>, identity: SpiffeId) -> Self {
        Self {
            workload,
            identity,
            in_flight: AtomicUsize::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            ejections: AtomicU32::new(0),
            conns: Conns::default(),
        }
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| until > now)
    }
}

/// How a try ended, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The endpoint could not be reached or reset the request.
    ConnectFailure,
}

/// The runtime of one backend.
pub(crate) struct Backend {
    pub(crate) name: String,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    pub(crate) limits: ArcSwap<(PoolLimits, Option<Outlier>)>,
    /// Open upstream connections, pending requests, requests in flight.
    pub(crate) connections: AtomicUsize,
    pub(crate) pending: AtomicUsize,
    requests: AtomicUsize,
    /// Told when a connection is released.
    pub(crate) released: Notify,
}

/// A request's hold on a backend's request budget (`maxRequests`) and an endpoint's
/// in-flight count; released on drop.
pub(crate) struct InFlight {
    backend: Arc<Backend>,
    endpoint: Arc<Endpoint>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.requests.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no endpoint was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PickError {
    /// No endpoint at all, or all ejected (`UH`).
    NoHealthy,
    /// `maxRequests` reached (`UO`).
    Overflow,
}

impl Backend {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            limits: ArcSwap::from_pointee((PoolLimits::default(), None)),
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    pub(crate) fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Picks an endpoint (only `pinned`, when the client addressed one pod; avoiding `avoid`
    /// when another is healthy) and takes a request slot.
    pub(crate) fn pick(
        self: &Arc<Self>,
        rng: &mut crate::Rng,
        avoid: Option<IpAddr>,
        pinned: Option<IpAddr>,
    ) -> Result<(Arc<Endpoint>, InFlight), PickError> {
        let now = Instant::now();
        let all = self.endpoints.load();
        let mut healthy: Vec<&Arc<Endpoint>> = all
            .iter()
            .filter(|e| pinned.is_none_or(|ip| e.workload.ip == ip))
            .filter(|e| !e.ejected(now))
            .collect();
        if healthy.is_empty() {
            return Err(PickError::NoHealthy);
        }
        if healthy.len() > 1
            && let Some(avoid) = avoid
        {
            healthy.retain(|e| e.workload.ip != avoid);
        }
        let limits = self.limits.load();
        if let Some(max) = limits.0.max_requests
            && self.requests.load(Ordering::Relaxed) >= max as usize
        {
            return Err(PickError::Overflow);
        }
        let a = healthy[rng.below(healthy.len())];
        let b = healthy[rng.below(healthy.len())];
        let chosen = if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
            b
        } else {
            a
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok((
            chosen.clone(),
            InFlight {
                backend: self.clone(),
                endpoint: chosen.clone(),
            },
        ))
    }

    /// Records a try's outcome; ejects the endpoint when its consecutive failures reach the
    /// threshold, within `maxEjectionPercent` and `minHealthPercent`.
    pub(crate) fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        let limits = self.limits.load();
        let Some(outlier) = &limits.1 else { return };
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::ConnectFailure => (true, true),
        };
        if !is_5xx {
            endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
            endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
            return;
        }
        let n5 = endpoint.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let ngw = if is_gateway {
            endpoint.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let tripped = outlier.consecutive_5xx.is_some_and(|t| n5 >= t)
            || outlier.consecutive_gateway.is_some_and(|t| ngw >= t);
        if !tripped {
            return;
        }
        let now = Instant::now();
        let all = self.endpoints.load();
        let total = all.len().max(1);
        let ejected = all.iter().filter(|e| e.ejected(now)).count();
        // At least one endpoint may always be ejected (as Envoy does).
        let max = (total * outlier.max_ejection_percent as usize / 100).max(1);
        let healthy_after = (total - ejected - 1) * 100 / total;
        if ejected >= max || (healthy_after as u32) < outlier.min_health_percent {
            return;
        }
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = Duration::from_millis(
            outlier
                .base_ejection_ms
                .saturating_mul(u64::from(times.min(10))),
        );
        *endpoint
            .ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(now + duration);
        endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        info!(backend = %self.name, endpoint = %endpoint.workload.name, ejected_for = ?duration, "endpoint ejected by outlier detection");
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
        endpoints: Vec<(Arc<Workload>, SpiffeId)>,
        limits: PoolLimits,
        outlier: Option<Outlier>,
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
            .map(|(w, id)| {
                old.iter()
                    .find(|e| e.workload.ip == w.ip && e.identity == id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(w, id)))
            })
            .collect();
        backend.endpoints.store(Arc::new(next));
        backend.limits.store(Arc::new((limits, outlier)));
        backend
    }
}
