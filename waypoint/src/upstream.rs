//! HTTP connections to endpoints, each carried in an HBONE tunnel to the endpoint's node proxy
//! (mTLS with the waypoint's identity; the `forwarded` header names the original client), or
//! for a destination outside the mesh opened directly (`crate::outside`).
//! HTTP/1.1 connections are pooled per endpoint and returned when a response body ends;
//! HTTP/2 uses one multiplexed connection per endpoint. `maxConnections`, the pending queue
//! (`http1MaxPendingRequests`) and `maxRequestsPerConnection` are enforced here, with the
//! pool's slots (`crate::backend`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_core::hbone::{ConnectRequest, Pool, PoolKey};

use crate::backend::{Backend, ConnSlot, Endpoint, Http1Conn, Http2Conn, Reach};
use crate::body::Body;
use crate::identity::Identity;
use crate::outside::Conn;

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

/// What opening a connection needs.
pub(crate) struct Dialer {
    pub(crate) pool: Arc<Pool>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) client: SocketAddr,
    pub(crate) port: u16,
}

impl Dialer {
    /// A connection to `endpoint`: an HBONE tunnel in the mesh, else directly (in TLS where
    /// the destination wants it, offering `h2` or `http/1.1`).
    async fn open(&self, endpoint: &Endpoint, http2: bool) -> Result<TokioIo<Conn>, UpstreamError> {
        let expected = match &endpoint.reach {
            Reach::Mesh(id) => id.clone(),
            Reach::Outside(outside) => {
                return outside
                    .connect(endpoint.workload.ip, self.port, http2)
                    .await
                    .map(TokioIo::new)
                    .map_err(UpstreamError::Connect);
            }
        };
        let key = PoolKey {
            source: self.identity.id.clone(),
            proxy: SocketAddr::new(endpoint.workload.ip, weft_core::ports::HBONE),
            destination: expected.clone(),
        };
        let request = ConnectRequest {
            destination: SocketAddr::new(endpoint.workload.ip, self.port),
            client: self.client,
            traceparent: None,
            baggage: None,
        };
        let identity = self.identity.clone();
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
        Ok(TokioIo::new(Conn::Hbone(stream)))
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

/// Returns an HTTP/1.1 connection to its endpoint's idle list when the response body is
/// done; a closed or spent connection is dropped instead, which frees its pool place.
struct Checkout {
    backend: Arc<Backend>,
    endpoint: Arc<Endpoint>,
    conn: Option<Http1Conn>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let limit = self.backend.limits().pool.max_requests_per_connection;
        let spent = limit.is_some_and(|l| conn.used >= l);
        if !conn.sender.is_closed() && !spent {
            self.endpoint.conns.push_idle(conn);
            self.backend.wake_one();
        }
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

/// An HTTP/1.1 connection for one request: an idle one, a new one if the pool has room, or,
/// at the limit, one freed while this request waits in the bounded pending queue. Every place
/// taken is a slot that gives itself back, so a request cancelled at any await leaks nothing.
async fn checkout(
    backend: &Arc<Backend>,
    endpoint: &Arc<Endpoint>,
    dialer: &Dialer,
) -> Result<Http1Conn, UpstreamError> {
    loop {
        if let Some(mut conn) = endpoint.conns.pop_idle() {
            if !conn.sender.is_closed() && conn.sender.ready().await.is_ok() {
                return Ok(conn);
            }
            continue;
        }
        if let Some(slot) = backend.try_connection() {
            return open_http1(endpoint, dialer, slot).await;
        }
        // At the connection limit: an idle connection to another endpoint is closed to make
        // room, else the request waits in the pending queue.
        if backend.evict_idle() {
            continue;
        }
        let Some(_pending) = backend.try_pending() else {
            return Err(UpstreamError::Overflow);
        };
        let timeout =
            Duration::from_millis(backend.limits().pool.connect_timeout_ms.unwrap_or(10_000));
        if tokio::time::timeout(timeout, backend.released())
            .await
            .is_err()
        {
            return Err(UpstreamError::Overflow);
        }
    }
}

async fn open_http1(
    endpoint: &Endpoint,
    dialer: &Dialer,
    slot: ConnSlot,
) -> Result<Http1Conn, UpstreamError> {
    let io = dialer.open(endpoint, false).await?;
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        // Upgrades stay possible: a 101 hands the connection to the request that asked.
        let _ = conn.with_upgrades().await;
    });
    Ok(Http1Conn::new(sender, slot))
}

async fn send_h2(
    backend: &Arc<Backend>,
    endpoint: &Arc<Endpoint>,
    dialer: &Dialer,
    request: Request<Body>,
) -> Result<Response<Guarded>, UpstreamError> {
    let limit = backend.limits().pool.max_requests_per_connection;
    let existing = {
        let mut shared = endpoint.conns.h2.lock().unwrap_or_else(|e| e.into_inner());
        match shared.as_mut() {
            Some(c) if !c.sender.is_closed() && limit.is_none_or(|l| c.used < l) => {
                c.used += 1;
                Some(c.sender.clone())
            }
            // Closed or spent: dropping it frees its place.
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    };
    let mut sender = match existing {
        Some(sender) => sender,
        None => {
            let slot = backend.try_connection().ok_or(UpstreamError::Overflow)?;
            let io = dialer.open(endpoint, true).await?;
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut shared = endpoint.conns.h2.lock().unwrap_or_else(|e| e.into_inner());
            // Another request may have opened one meanwhile: this one is then used once and
            // its place given back.
            if shared.is_none() {
                *shared = Some(Http2Conn::new(sender.clone(), slot));
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
