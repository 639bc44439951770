//! One endpoint of a backend: the workload and identity it is reached as, its requests in
//! flight, its health (outlier detection) and its connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use weft_core::identity::SpiffeId;
use weft_core::mesh::Workload;

use super::outlier::Health;
use super::pool::Conns;

/// One endpoint of a backend.
pub(crate) struct Endpoint {
    pub(crate) workload: Arc<Workload>,
    pub(crate) identity: SpiffeId,
    /// Requests in flight to it (what P2C compares), given back by request slots.
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) health: Health,
    pub(crate) conns: Conns,
}

impl Endpoint {
    pub(super) fn new(workload: Arc<Workload>, identity: SpiffeId) -> Self {
        Self {
            workload,
            identity,
            in_flight: Arc::default(),
            health: Health::default(),
            conns: Conns::default(),
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
