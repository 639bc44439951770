//! Pool limits (circuit breaking) as values that give themselves back: a connection holds a
//! [`ConnSlot`], a request waiting for one holds a [`PendingSlot`], a request in flight holds a
//! [`RequestSlot`]. Dropping one, whatever the reason (a response, a timeout, a cancelled
//! future, an early return), releases it, so no path can leak a place in the pool.
//!
//! Also here: an endpoint's connections (idle HTTP/1.1 connections, one HTTP/2 connection).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::client::conn::{http1, http2};
use tokio::sync::Notify;

use crate::body::Body;

/// What the limits are enforced on, shared by a backend and the slots taken from it.
#[derive(Default)]
pub(super) struct Occupancy {
    connections: AtomicUsize,
    pending: AtomicUsize,
    requests: AtomicUsize,
    /// Told when a connection is released or returned idle.
    released: Notify,
}

/// Takes one place under `max`, or none.
fn take(counter: &AtomicUsize, max: Option<u32>) -> bool {
    let max = max.map_or(usize::MAX, |m| m as usize);
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// One open upstream connection's place under `maxConnections`.
pub(crate) struct ConnSlot(Arc<Occupancy>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.released.notify_one();
    }
}

/// One waiting request's place in the pending queue.
pub(crate) struct PendingSlot(Arc<Occupancy>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's place under `maxRequests` and in its endpoint's in-flight count.
pub(crate) struct RequestSlot {
    occupancy: Arc<Occupancy>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.occupancy.requests.fetch_sub(1, Ordering::AcqRel);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Occupancy {
    /// A place for a new connection, if `max` leaves one.
    pub(super) fn try_connection(self: &Arc<Self>, max: Option<u32>) -> Option<ConnSlot> {
        take(&self.connections, max.map(|m| m.max(1))).then(|| ConnSlot(self.clone()))
    }

    /// A place in the pending queue, if `max` leaves one.
    pub(super) fn try_pending(self: &Arc<Self>, max: Option<u32>) -> Option<PendingSlot> {
        take(&self.pending, max).then(|| PendingSlot(self.clone()))
    }

    /// A request slot, if `max` leaves one, counted in `in_flight` (the endpoint's) too.
    pub(super) fn try_request(
        self: &Arc<Self>,
        max: Option<u32>,
        in_flight: &Arc<AtomicUsize>,
    ) -> Option<RequestSlot> {
        if !take(&self.requests, max) {
            return None;
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        Some(RequestSlot {
            occupancy: self.clone(),
            in_flight: in_flight.clone(),
        })
    }

    /// Resolves when a connection is released or returned idle (or already was, unobserved).
    pub(super) async fn released(&self) {
        self.released.notified().await;
    }

    /// Tells one waiting request that a connection came back idle.
    pub(super) fn wake_one(&self) {
        self.released.notify_one();
    }

    /// Open connections, pending requests and requests in flight.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        (
            self.connections.load(Ordering::Acquire),
            self.pending.load(Ordering::Acquire),
            self.requests.load(Ordering::Acquire),
        )
    }
}

/// An HTTP/1.1 connection to an endpoint, holding its place in the pool.
pub(crate) struct Http1Conn {
    pub(crate) sender: http1::SendRequest<Body>,
    /// Requests sent on it.
    pub(crate) used: u32,
    _slot: ConnSlot,
}

impl Http1Conn {
    pub(crate) fn new(sender: http1::SendRequest<Body>, slot: ConnSlot) -> Self {
        Self {
            sender,
            used: 0,
            _slot: slot,
        }
    }
}

/// An HTTP/2 connection to an endpoint, holding its place in the pool.
pub(crate) struct Http2Conn {
    pub(crate) sender: http2::SendRequest<Body>,
    pub(crate) used: u32,
    _slot: ConnSlot,
}

impl Http2Conn {
    pub(crate) fn new(sender: http2::SendRequest<Body>, slot: ConnSlot) -> Self {
        Self {
            sender,
            used: 1,
            _slot: slot,
        }
    }
}

/// An endpoint's connections: idle HTTP/1.1 ones, and at most one multiplexed HTTP/2 one.
#[derive(Default)]
pub(crate) struct Conns {
    idle: Mutex<Vec<Http1Conn>>,
    pub(crate) h2: Mutex<Option<Http2Conn>>,
}

impl Conns {
    pub(crate) fn pop_idle(&self) -> Option<Http1Conn> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    pub(crate) fn push_idle(&self, conn: Http1Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }
}

#[cfg(test)]
mod tests {
    use weft_core::mesh::PoolLimits;

    use super::super::Limits;
    use super::super::test_support::backend;

    fn limits(max_connections: u32, max_pending: u32, max_requests: u32) -> Limits {
        Limits {
            pool: PoolLimits {
                max_connections: Some(max_connections),
                max_pending: Some(max_pending),
                max_requests: Some(max_requests),
                ..PoolLimits::default()
            },
            outlier: None,
        }
    }

    #[test]
    fn slots_stop_at_the_limit_and_come_back_when_dropped() {
        let web = backend(2, limits(2, 1, 3));
        let a = web.try_connection().expect("first");
        let b = web.try_connection().expect("second");
        assert!(web.try_connection().is_none(), "maxConnections 2");
        let waiting = web.try_pending().expect("one pending place");
        assert!(web.try_pending().is_none(), "maxPending 1");
        assert_eq!(web.occupancy(), (2, 1, 0));
        drop((a, waiting));
        assert_eq!(web.occupancy(), (1, 0, 0));
        let _c = web.try_connection().expect("a freed place is taken again");
        drop(b);
        assert_eq!(web.occupancy(), (1, 0, 0));
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_back_its_places() {
        // A request that holds a connection place and waits in the queue is cancelled (its
        // route timeout fired): nothing it held stays taken.
        let web = backend(1, limits(1, 1, 10));
        let held = web.try_connection().expect("the one connection");
        let waiter = {
            let web = web.clone();
            async move {
                let _pending = web.try_pending().expect("queue place");
                web.released().await;
            }
        };
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(20), waiter).await;
        assert!(timed_out.is_err(), "nothing was released");
        assert_eq!(web.occupancy(), (1, 0, 0), "the pending place came back");
        drop(held);
        assert_eq!(web.occupancy(), (0, 0, 0));
        for _ in 0..100 {
            let slot = web.try_connection().expect("never wedged");
            drop(slot);
        }
    }

    #[test]
    fn request_slots_count_in_flight_per_endpoint() {
        let web = backend(1, limits(10, 10, 2));
        let endpoint = web.endpoints()[0].clone();
        let one = web.try_request(&endpoint).expect("one");
        let two = web.try_request(&endpoint).expect("two");
        assert!(web.try_request(&endpoint).is_none(), "maxRequests 2");
        assert_eq!(endpoint.in_flight(), 2);
        drop((one, two));
        assert_eq!(endpoint.in_flight(), 0);
        assert_eq!(web.occupancy(), (0, 0, 0));
    }
}
