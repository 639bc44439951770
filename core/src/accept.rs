//! What every listener does when accepting fails: most accept errors (no file descriptors
//! left, no memory) persist for a while, so a loop that retries at once spins at 100% CPU and
//! writes a log line per try. [`Backoff`] sleeps, doubling up to a second, and logs once per
//! streak of failures. [`raise_fd_limit`] lifts the soft file-descriptor limit to the hard one
//! at start, so the limit is reached as late as the system allows. [`ConnectionLimits`] bounds
//! the connections a listener holds open, in all and from one peer address; [`serve_accepted`]
//! is the accept loop of the waypoints' HBONE and gateway listeners.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::warn;

const FIRST: Duration = Duration::from_millis(5);
const LONGEST: Duration = Duration::from_secs(1);

/// The backoff of one accept loop.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// After a failed accept on `listener`: logs the first failure of a streak, then waits.
    pub async fn failed(&mut self, listener: &str, error: &std::io::Error) {
        if self.delay.is_zero() {
            warn!(listener, %error, "accept failed; backing off until it succeeds again");
        }
        tokio::time::sleep(self.next()).await;
    }

    /// After a successful accept: the next failure starts a new streak.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }

    fn next(&mut self) -> Duration {
        self.delay = (self.delay * 2).clamp(FIRST, LONGEST);
        self.delay
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// The connections one listener may hold open: `total` in all, `per_peer` from one address.
/// A connection over either limit is closed at once (before any handshake), so one peer cannot
/// take the listener's places, or the process's file descriptors, from the others.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: usize,
    per_peer: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds as many connections as it may.
    Total,
    /// This peer address holds as many as one address may.
    Peer,
}

/// A place taken by one open connection; given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    peer: IpAddr,
}

impl ConnectionLimits {
    /// Limits of `total` open connections, `per_peer` of them from one address.
    pub fn new(total: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_peer,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `peer`, if both limits allow one.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.0 >= self.total {
            return Err(Refused::Total);
        }
        let from_peer = open.1.entry(peer).or_default();
        if *from_peer >= self.per_peer {
            return Err(Refused::Peer);
        }
        *from_peer += 1;
        open.0 += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            peer,
        })
    }

    /// Connections open now, in all.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.peer);
            }
        }
    }
}

/// Logs a listener's refusals once per streak, not once per connection.
#[derive(Debug, Default)]
pub struct RefusalLog {
    refusing: Option<Refused>,
}

impl RefusalLog {
    /// After a refused connection from `peer`.
    pub fn refused(&mut self, listener: &str, peer: IpAddr, why: Refused) {
        if self.refusing != Some(why) {
            match why {
                Refused::Total => {
                    warn!(
                        listener,
                        "connection limit reached; closing new connections"
                    );
                }
                Refused::Peer => {
                    warn!(listener, %peer, "per-peer connection limit reached; closing this peer's new connections");
                }
            }
            self.refusing = Some(why);
        }
    }

    /// After an admitted connection: the next refusal is logged again.
    pub fn admitted(&mut self) {
        self.refusing = None;
    }
}

/// Accepts on `listener` until `drain` is signalled: accept errors back off, connections over
/// `limits` are refused (and logged as `what`), and each admitted one goes to `serve` with its
/// slot, to be held until the connection ends. Nodelay is set.
pub async fn serve_accepted(
    what: &'static str,
    listener: tokio::net::TcpListener,
    limits: Arc<ConnectionLimits>,
    drain: &crate::drain::Watch,
    mut serve: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr, ConnectionSlot),
) {
    let mut backoff = Backoff::default();
    let mut refusals = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(e) => {
                backoff.failed(what, &e).await;
                continue;
            }
        };
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refusals.refused(what, peer.ip(), why);
                continue;
            }
        };
        refusals.admitted();
        let _ = stream.set_nodelay(true);
        serve(stream, peer, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_in_all_and_per_peer_and_places_come_back() {
        let limits = ConnectionLimits::new(3, 2);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let a1 = limits.admit(a).expect("first from a");
        let a2 = limits.admit(a).expect("second from a");
        assert_eq!(
            limits.admit(a).expect_err("a is at its limit"),
            Refused::Peer
        );
        let b1 = limits.admit(b).expect("b has its own places");
        assert_eq!(
            limits.admit(b).expect_err("the listener is full"),
            Refused::Total
        );
        drop(a1);
        assert_eq!(limits.open(), 2);
        let a3 = limits.admit(a).expect("a place came back");
        drop((a2, a3, b1));
        assert_eq!(limits.open(), 0);
        assert!(
            limits.open.lock().expect("lock").1.is_empty(),
            "no peer left behind"
        );
    }

    #[test]
    fn the_delay_doubles_to_a_second_and_starts_over_after_a_success() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.next(), FIRST);
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let now = raise_fd_limit().expect("getrlimit");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(now, limit.rlim_cur);
    }
}
