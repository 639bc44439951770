//! The HBONE client: a pool of mTLS HTTP/2 connections, one set per (source identity,
//! destination proxy, destination identity), each carrying many CONNECT streams.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::protocol::{ConnectRequest, HboneError, forwarded_header, settings};
use super::stream::ActiveGuard;
use super::stream::H2Stream;
use crate::identity::SpiffeId;

/// Pool limits.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most CONNECT streams carried by one connection.
    pub max_streams_per_conn: usize,
    /// Connections to one peer that tunnels are spread over. One TLS connection is encrypted on
    /// one thread at a time, so busy tunnels to the same peer on a single connection share one
    /// core. While every connection carries a stream, a new tunnel opens another, up to this
    /// many; past it, tunnels go to the least-loaded one.
    pub spread: usize,
    /// A connection with no stream for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for TCP connect plus the TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_streams_per_conn: 100,
            spread: 1,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// The defaults, spreading busy tunnels to one peer over as many connections as the
    /// current runtime has worker threads (one outside a runtime).
    pub fn per_worker() -> Self {
        Self {
            spread: tokio::runtime::Handle::try_current()
                .map_or(1, |runtime| runtime.metrics().num_workers()),
            ..Self::default()
        }
    }
}

/// Which connections may be shared: same client certificate, same peer, same expected peer
/// identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity presented (the source workload's).
    pub source: SpiffeId,
    /// The peer proxy's address (`ip:15008`).
    pub proxy: SocketAddr,
    /// The identity the peer must prove.
    pub destination: SpiffeId,
}

struct Conn {
    sender: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    last_used: Instant,
}

/// A peer's connections, and until when adding one to spread over is not tried again.
#[derive(Default)]
struct Peer {
    conns: Vec<Conn>,
    spread_paused_until: Option<Instant>,
}

type Slot = Arc<tokio::sync::Mutex<Peer>>;

/// A connection opened only to spread tunnels over (one already open could carry the tunnel)
/// gets this long at most: the tunnel waiting for it, and the peer's other checkouts behind the
/// slot's lock, are never held for a full connect timeout by a peer slow to take a new one.
const SPREAD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After such a connection failed, tunnels to the peer share the ones open for this long.
const SPREAD_PAUSE: Duration = Duration::from_secs(30);

/// The connection pool. Cheap to share behind an `Arc`.
pub struct Pool {
    config: PoolConfig,
    slots: Mutex<HashMap<PoolKey, Slot>>,
    /// Checkouts so far: every [`SWEEP_EVERY`]th sweeps peers no longer used.
    checkouts: std::sync::atomic::AtomicUsize,
    /// Connections open now (a connection's task counts itself out when it ends).
    open_conns: Arc<AtomicUsize>,
    /// Streams open now, over all connections.
    open_streams: Arc<AtomicUsize>,
}

/// What a pool holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// HBONE connections open.
    pub connections: usize,
    /// CONNECT streams open over them.
    pub streams: usize,
}

/// How often (in checkouts) the pool forgets peers whose connections are all closed or idle
/// past the timeout: a proxy that talked to thousands of peers once keeps no trace of them.
const SWEEP_EVERY: usize = 64;

impl Pool {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            slots: Mutex::new(HashMap::new()),
            checkouts: std::sync::atomic::AtomicUsize::new(0),
            open_conns: Arc::new(AtomicUsize::new(0)),
            open_streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Connections and streams open now.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            connections: self.open_conns.load(Ordering::Relaxed),
            streams: self.open_streams.load(Ordering::Relaxed),
        }
    }

    /// Peers the pool holds an entry for (for tests).
    pub fn peers(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drops connections closed or idle past the timeout, and the peers left with none.
    pub fn sweep(&self) {
        let now = Instant::now();
        let idle = self.config.idle_timeout;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(mut peer) => {
                peer.conns.retain(|c| usable(c, now, idle));
                !peer.conns.is_empty()
            }
            // In use right now: certainly not forgotten.
            Err(_) => true,
        });
    }

    /// Number of open connections (for metrics and tests).
    pub fn connections(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter_map(|slot| slot.try_lock().ok().map(|peer| peer.conns.len()))
            .sum()
    }

    /// Opens a tunnel to `req.destination` through the proxy in `key`. `tls` builds the client
    /// config if a new connection is needed; `dial` opens its TCP connection (the node proxy dials
    /// from inside the source pod's network namespace).
    pub async fn connect<T, D, F>(
        &self,
        key: &PoolKey,
        tls: T,
        dial: D,
        req: &ConnectRequest,
    ) -> Result<H2Stream, HboneError>
    where
        T: FnOnce() -> Result<ClientConfig, crate::tls::TlsError>,
        D: FnOnce(SocketAddr) -> F,
        F: Future<Output = std::io::Result<TcpStream>>,
    {
        let (sender, guard, closed) = self.checkout(key, tls, dial).await?;
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(req.destination.to_string())
            .header("forwarded", forwarded_header(req.client));
        let request = match (&req.traceparent, &req.baggage) {
            (None, None) => request,
            (tp, bg) => {
                let mut request = request;
                if let Some(tp) = tp {
                    request = request.header("traceparent", tp);
                }
                if let Some(bg) = bg {
                    request = request.header("baggage", bg);
                }
                request
            }
        }
        .body(())?;
        let h2_err = |source| HboneError::H2 {
            addr: key.proxy,
            source,
        };
        // Waiting for a stream slot and for the answer are bounded together: a peer that stops
        // granting streams or answering must not hold a connection here for ever.
        let exchange = async {
            let mut sender = sender.ready().await.map_err(h2_err)?;
            let (response, send) = sender.send_request(request, false).map_err(h2_err)?;
            Ok::<_, HboneError>((response.await.map_err(h2_err)?, send))
        };
        let (response, send) =
            match tokio::time::timeout(settings::RESPONSE_TIMEOUT, exchange).await {
                Ok(done) => done?,
                Err(_) => {
                    // New tunnels to this peer go on a fresh connection; this one keeps serving
                    // the streams it has.
                    closed.store(true, Ordering::Relaxed);
                    return Err(HboneError::ResponseTimeout {
                        addr: key.proxy,
                        destination: req.destination,
                        timeout: settings::RESPONSE_TIMEOUT,
                    });
                }
            };
        if response.status() != StatusCode::OK {
            return Err(HboneError::Refused {
                addr: key.proxy,
                destination: req.destination,
                status: response.status(),
            });
        }
        Ok(H2Stream::new(send, response.into_body(), Some(guard)))
    }

    async fn checkout<T, D, F>(
        &self,
        key: &PoolKey,
        tls: T,
        dial: D,
    ) -> Result<(SendRequest<Bytes>, ActiveGuard, Arc<AtomicBool>), HboneError>
    where
        T: FnOnce() -> Result<ClientConfig, crate::tls::TlsError>,
        D: FnOnce(SocketAddr) -> F,
        F: Future<Output = std::io::Result<TcpStream>>,
    {
        if self.checkouts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        // Holding the slot's lock while connecting means concurrent first requests to one peer
        // share one new connection instead of racing to open several.
        let mut peer = slot.lock().await;
        let now = Instant::now();
        let idle = self.config.idle_timeout;
        peer.conns.retain(|c| usable(c, now, idle));
        let max = self.config.max_streams_per_conn;
        // The least-loaded connection with room for another stream.
        let least = peer
            .conns
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.active.load(Ordering::Relaxed)))
            .filter(|&(_, active)| active < max)
            .min_by_key(|&(_, active)| active);
        let spread_more = peer.conns.len() < self.config.spread.max(1)
            && peer.spread_paused_until.is_none_or(|until| now >= until);
        let index = match least {
            Some((i, active)) if active == 0 || !spread_more => i,
            // One more to spread over: short, and on failure the open ones carry the tunnel.
            Some((i, _)) => {
                let timeout = SPREAD_CONNECT_TIMEOUT.min(self.config.connect_timeout);
                match self.open(key, tls, dial, timeout).await {
                    Ok(fresh) => {
                        peer.conns.push(fresh);
                        peer.conns.len() - 1
                    }
                    Err(e) => {
                        debug!(peer = %key.proxy, error = %e, "no further HBONE connection; sharing the open ones");
                        peer.spread_paused_until = Some(Instant::now() + SPREAD_PAUSE);
                        i
                    }
                }
            }
            None => {
                let fresh = self
                    .open(key, tls, dial, self.config.connect_timeout)
                    .await?;
                peer.conns.push(fresh);
                peer.conns.len() - 1
            }
        };
        let conn = &mut peer.conns[index];
        conn.last_used = now;
        conn.active.fetch_add(1, Ordering::Relaxed);
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        Ok((
            conn.sender.clone(),
            ActiveGuard(conn.active.clone(), Some(self.open_streams.clone())),
            conn.closed.clone(),
        ))
    }

    /// A new connection to the peer in `key`, handshakes included, within `timeout`.
    async fn open<T, D, F>(
        &self,
        key: &PoolKey,
        tls: T,
        dial: D,
        timeout: Duration,
    ) -> Result<Conn, HboneError>
    where
        T: FnOnce() -> Result<ClientConfig, crate::tls::TlsError>,
        D: FnOnce(SocketAddr) -> F,
        F: Future<Output = std::io::Result<TcpStream>>,
    {
        let fresh = tokio::time::timeout(
            timeout,
            handshake(key.proxy, tls()?, dial, self.open_conns.clone()),
        )
        .await
        .map_err(|_| HboneError::Connect {
            addr: key.proxy,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
        })??;
        debug!(peer = %key.proxy, source = %key.source, destination = %key.destination, "new HBONE connection");
        Ok(fresh)
    }
}

/// Whether a pooled connection may carry another stream: open, and not idle past the timeout.
fn usable(c: &Conn, now: Instant, idle: Duration) -> bool {
    let idle_too_long = c.active.load(Ordering::Relaxed) == 0 && now - c.last_used > idle;
    !c.closed.load(Ordering::Relaxed) && !idle_too_long
}

async fn handshake<D, F>(
    addr: SocketAddr,
    tls: ClientConfig,
    dial: D,
    open_conns: Arc<AtomicUsize>,
) -> Result<Conn, HboneError>
where
    D: FnOnce(SocketAddr) -> F,
    F: Future<Output = std::io::Result<TcpStream>>,
{
    let tcp = dial(addr)
        .await
        .map_err(|source| HboneError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| HboneError::Tls {
            addr,
            reason: crate::tls::describe_handshake_error(&e),
        })?;
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(settings::STREAM_WINDOW)
        .initial_connection_window_size(settings::CONNECTION_WINDOW)
        .max_frame_size(settings::MAX_FRAME)
        .max_send_buffer_size(settings::MAX_SEND_BUFFER)
        .max_header_list_size(settings::MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|source| HboneError::H2 { addr, source })?;
    let closed = Arc::new(AtomicBool::new(false));
    let done = closed.clone();
    open_conns.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        if let Err(e) = connection.await
            && !e.is_go_away()
        {
            warn!(peer = %addr, error = %e, "HBONE connection failed");
        }
        done.store(true, Ordering::Relaxed);
        open_conns.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(Conn {
        sender,
        active: Arc::new(AtomicUsize::new(0)),
        closed,
        last_used: Instant::now(),
    })
}
