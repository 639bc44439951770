//! HTTP connections to endpoints, each carried in an HBONE tunnel to the endpoint's node proxy
//! (mTLS with the waypoint's identity; the `forwarded` header names the original client).
//! HTTP/1.1 connections are pooled per endpoint and returned when a response body ends;
//! HTTP/2 uses one multiplexed connection per endpoint. `maxConnections`, the pending queue
//! (`http1MaxPendingRequests`) and `maxRequestsPerConnection` are enforced here.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_core::hbone::{ConnectRequest, Pool, PoolKey};

use crate::Body;
use crate::balance::{Backend, Endpoint};
use crate::identity::Identity;

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The endpoint could not be reached (HBONE or HTTP handshake).
    #[error("connect failure: {0}")]
    Connect(String),
    /// The connection broke or was reset during the request.
    #[error("upstream reset: {0}")]
    Reset(String),
    /// The upstream refused the HTTP/2 stream.
    #[error("upstream refused the stream: {0}")]
    Refused(String),
    /// Pool limits: too many connections and pending requests.
    #[error("connection pool overflow")]
    Overflow,
}

struct Http1Conn {
    sender: http1::SendRequest<Body>,
    used: u32,
}

struct Http2Conn {
    sender: http2::SendRequest<Body>,
    used: u32,
}

/// An endpoint's connections.
#[derive(Default)]
pub(crate) struct Conns {
    idle: Mutex<Vec<Http1Conn>>,
    h2: Mutex<Option<Http2Conn>>,
}

/// What opening a connection needs.
pub(crate) struct Dialer {
    pub(crate) pool: Arc<Pool>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) client: SocketAddr,
    pub(crate) port: u16,
}

impl Dialer {
    async fn tunnel(
        &self,
        endpoint: &Endpoint,
    ) -> Result<TokioIo<weft_core::hbone::H2Stream>, UpstreamError> {
        let key = PoolKey {
            source: self.identity.id.clone(),
            proxy: SocketAddr::new(endpoint.workload.ip, weft_core::ports::HBONE),
            destination: endpoint.identity.clone(),
        };
        let request = ConnectRequest {
            destination: SocketAddr::new(endpoint.workload.ip, self.port),
            client: self.client,
            traceparent: None,
            baggage: None,
        };
        let identity = self.identity.clone();
        let expected = endpoint.identity.clone();
        let stream = self
            .pool
            .connect(
                &key,
                move || weft_core::tls::client_config(&identity.cert, expected, &identity.bundle),
                tokio::net::TcpStream::connect,
                &request,
            )
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        Ok(TokioIo::new(stream))
    }
}

fn classify(e: &hyper::Error) -> UpstreamError {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return UpstreamError::Refused(e.to_string());
        }
        source = s.source();
    }
    UpstreamError::Reset(e.to_string())
}

/// Returns an HTTP/1.1 connection to its endpoint's pool when the response body is done.
struct Checkout {
    backend: Arc<Backend>,
    endpoint: Arc<Endpoint>,
    conn: Option<Http1Conn>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let limit = self.backend.limits.load().0.max_requests_per_connection;
        let spent = limit.is_some_and(|l| conn.used >= l);
        if conn.sender.is_closed() || spent {
            self.backend.connections.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.endpoint
                .conns
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        self.backend.released.notify_one();
    }
}

/// A response body that keeps its connection checked out until it ends.
pub(crate) struct Guarded {
    inner: Incoming,
    _checkout: Option<Checkout>,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Done: hand the connection back now, not when the body is dropped.
            self._checkout = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Sends `request` to `endpoint` over HTTP/1.1 (pooled) or HTTP/2 (multiplexed).
pub(crate) async fn send(
    backend: &Arc<Backend>,
    endpoint: &Arc<Endpoint>,
    dialer: &Dialer,
    request: Request<Body>,
    http2: bool,
) -> Result<Response<Guarded>, UpstreamError> {
    if http2 {
        return send_h2(backend, endpoint, dialer, request).await;
    }
    let mut conn = checkout(backend, endpoint, dialer).await?;
    conn.used += 1;
    let sent = conn.sender.send_request(request).await;
    let checkout = Checkout {
        backend: backend.clone(),
        endpoint: endpoint.clone(),
        conn: Some(conn),
    };
    match sent {
        Ok(response) => Ok(response.map(|inner| Guarded {
            inner,
            _checkout: Some(checkout),
        })),
        Err(e) => Err(classify(&e)),
    }
}

async fn checkout(
    backend: &Arc<Backend>,
    endpoint: &Arc<Endpoint>,
    dialer: &Dialer,
) -> Result<Http1Conn, UpstreamError> {
    loop {
        let idle = endpoint
            .conns
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        if let Some(mut conn) = idle {
            if conn.sender.is_closed() {
                backend.connections.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            if conn.sender.ready().await.is_ok() {
                return Ok(conn);
            }
            backend.connections.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let limits = backend.limits.load();
        let max = limits
            .0
            .max_connections
            .map_or(usize::MAX, |m| m.max(1) as usize);
        let open = backend.connections.fetch_add(1, Ordering::Relaxed);
        if open < max {
            return match open_http1(endpoint, dialer).await {
                Ok(conn) => Ok(conn),
                Err(e) => {
                    backend.connections.fetch_sub(1, Ordering::Relaxed);
                    backend.released.notify_one();
                    Err(e)
                }
            };
        }
        backend.connections.fetch_sub(1, Ordering::Relaxed);
        // At the connection limit: an idle connection to another endpoint is closed to make
        // room, else the request waits in the bounded pending queue.
        if evict_idle(backend) {
            continue;
        }
        let max_pending = limits.0.max_pending.map_or(usize::MAX, |m| m as usize);
        if backend.pending.fetch_add(1, Ordering::Relaxed) >= max_pending {
            backend.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(UpstreamError::Overflow);
        }
        let timeout = Duration::from_millis(limits.0.connect_timeout_ms.unwrap_or(10_000));
        let woke = tokio::time::timeout(timeout, backend.released.notified()).await;
        backend.pending.fetch_sub(1, Ordering::Relaxed);
        if woke.is_err() {
            return Err(UpstreamError::Overflow);
        }
    }
}

fn evict_idle(backend: &Backend) -> bool {
    for endpoint in backend.endpoints().iter() {
        let evicted = endpoint
            .conns
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        if evicted.is_some() {
            backend.connections.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
    }
    false
}

async fn open_http1(endpoint: &Endpoint, dialer: &Dialer) -> Result<Http1Conn, UpstreamError> {
    let io = dialer.tunnel(endpoint).await?;
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Http1Conn { sender, used: 0 })
}

async fn send_h2(
    backend: &Arc<Backend>,
    endpoint: &Arc<Endpoint>,
    dialer: &Dialer,
    request: Request<Body>,
) -> Result<Response<Guarded>, UpstreamError> {
    let limit = backend.limits.load().0.max_requests_per_connection;
    let existing = {
        let mut slot = endpoint.conns.h2.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(c) if !c.sender.is_closed() && limit.is_none_or(|l| c.used < l) => {
                c.used += 1;
                Some(c.sender.clone())
            }
            Some(_) => {
                *slot = None;
                backend.connections.fetch_sub(1, Ordering::Relaxed);
                None
            }
            None => None,
        }
    };
    let mut sender = match existing {
        Some(sender) => sender,
        None => {
            let max = backend
                .limits
                .load()
                .0
                .max_connections
                .map_or(usize::MAX, |m| m.max(1) as usize);
            if backend.connections.fetch_add(1, Ordering::Relaxed) >= max {
                backend.connections.fetch_sub(1, Ordering::Relaxed);
                return Err(UpstreamError::Overflow);
            }
            let io = match dialer.tunnel(endpoint).await {
                Ok(io) => io,
                Err(e) => {
                    backend.connections.fetch_sub(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let (sender, conn) = match http2::handshake(TokioExecutor::new(), io).await {
                Ok(pair) => pair,
                Err(e) => {
                    backend.connections.fetch_sub(1, Ordering::Relaxed);
                    return Err(UpstreamError::Connect(e.to_string()));
                }
            };
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut slot = endpoint.conns.h2.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                // Another request opened one meanwhile: this one is used once and dropped.
                backend.connections.fetch_sub(1, Ordering::Relaxed);
            } else {
                *slot = Some(Http2Conn {
                    sender: sender.clone(),
                    used: 1,
                });
            }
            sender
        }
    };
    sender
        .ready()
        .await
        .map_err(|e| UpstreamError::Reset(e.to_string()))?;
    match sender.send_request(request).await {
        Ok(response) => Ok(response.map(|inner| Guarded {
            inner,
            _checkout: None,
        })),
        Err(e) => Err(classify(&e)),
    }
}
