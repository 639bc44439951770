//! One endpoint of a backend: the workload it is and how it is reached (over HBONE proving an
//! identity, or directly outside the mesh), its requests in flight, its health (outlier
//! detection) and its connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use weft_core::identity::SpiffeId;
use weft_core::mesh::Workload;

use super::outlier::Health;
use super::pool::Conns;
use crate::outside::Outside;

/// How an endpoint is reached.
#[derive(Clone)]
pub(crate) enum Reach {
    /// In an HBONE tunnel to its node proxy, which must prove this identity.
    Mesh(SpiffeId),
    /// Directly: a destination outside the mesh.
    Outside(Arc<Outside>),
}

impl PartialEq for Reach {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Mesh(a), Self::Mesh(b)) => a == b,
            (Self::Outside(a), Self::Outside(b)) => a.spec == b.spec,
            _ => false,
        }
    }
}

impl Reach {
    /// The identity it proves, as metrics and spans name it (`unknown` outside the mesh).
    pub(crate) fn principal(&self) -> String {
        match self {
            Self::Mesh(id) => id.to_string(),
            Self::Outside(_) => "unknown".to_owned(),
        }
    }
}

/// One endpoint of a backend.
pub(crate) struct Endpoint {
    /// The workload (outside the mesh: the host, at the address dialed).
    pub(crate) workload: Arc<Workload>,
    pub(crate) reach: Reach,
    /// Requests in flight to it (what P2C compares), given back by request slots.
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) health: Health,
    pub(crate) conns: Conns,
}

impl Endpoint {
    pub(super) fn new(workload: Arc<Workload>, reach: Reach) -> Self {
        Self {
            workload,
            reach,
            in_flight: Arc::default(),
            health: Health::default(),
            conns: Conns::default(),
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
