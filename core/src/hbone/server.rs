//! The HBONE server: mTLS handshake, the HTTP/2 connection, and validation of each CONNECT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::protocol::{MESH_PORTS, parse_forwarded, settings};
use super::stream::H2Stream;
use crate::identity::SpiffeId;

/// Why an incoming HBONE connection was refused before any request.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// TLS failed: not TLS at all, unknown CA, expired certificate, no client certificate...
    #[error("mTLS handshake failed: {0}")]
    Tls(String),
    /// The client certificate chains to the mesh root but carries no workload identity.
    #[error("client certificate has no workload identity: {0}")]
    Identity(#[from] crate::identity::CertError),
    /// The HTTP/2 preface or settings exchange failed.
    #[error("HTTP/2 handshake failed: {0}")]
    H2(h2::Error),
}

/// An accepted HBONE connection: the peer's proven identity and its HTTP/2 connection.
pub struct Incoming<IO> {
    peer: SpiffeId,
    conn: h2::server::Connection<TlsStream<IO>, Bytes>,
}

/// Performs the mTLS and HTTP/2 handshakes on an accepted TCP connection.
pub async fn accept<IO>(
    io: IO,
    tls: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> Result<Incoming<IO>, AcceptError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshakes = async {
        let tls = TlsAcceptor::from(tls)
            .accept(io)
            .await
            .map_err(|e| AcceptError::Tls(crate::tls::describe_handshake_error(&e)))?;
        let peer = crate::tls::session_peer_identity(tls.get_ref().1.peer_certificates())?;
        let conn = h2::server::Builder::new()
            .initial_window_size(settings::STREAM_WINDOW)
            .initial_connection_window_size(settings::CONNECTION_WINDOW)
            .max_frame_size(settings::MAX_FRAME)
            .max_send_buffer_size(settings::MAX_SEND_BUFFER)
            .max_concurrent_streams(1000)
            .max_header_list_size(settings::MAX_HEADER_LIST)
            .handshake(tls)
            .await
            .map_err(AcceptError::H2)?;
        Ok(Incoming { peer, conn })
    };
    tokio::time::timeout(timeout, handshakes)
        .await
        .map_err(|_| AcceptError::Timeout(timeout))?
}

impl<IO> Incoming<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The identity the peer proved with its certificate.
    pub fn peer(&self) -> &SpiffeId {
        &self.peer
    }

    /// The next CONNECT on this connection; `None` once the connection is closed. Must be
    /// polled for the connection (and all its streams) to make progress.
    pub async fn next(&mut self) -> Option<Result<PendingTunnel, h2::Error>> {
        let (request, respond) = match self.conn.accept().await? {
            Ok(pair) => pair,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(PendingTunnel { request, respond }))
    }

    /// The next CONNECT, or `None` once the connection is closed, or once it has been idle for
    /// `idle` (no tunnel of `open` alive and none asked for): then it is closed gracefully
    /// (GOAWAY), so idle peers do not hold a connection forever.
    pub async fn next_unless_idle(
        &mut self,
        idle: Duration,
        open: &OpenTunnels,
    ) -> Option<Result<PendingTunnel, h2::Error>> {
        loop {
            match tokio::time::timeout(idle, self.next()).await {
                Ok(next) => return next,
                Err(_) if open.none() => {
                    self.graceful_shutdown();
                    return None;
                }
                Err(_) => {}
            }
        }
    }

    /// Serves the connection until it closes: each CONNECT goes to `tunnel` with a clone of
    /// the connection's [`OpenTunnels`] (to hold while the tunnel lives); `drain` sends GOAWAY
    /// and lets open tunnels finish; a connection with no tunnel for `idle` is closed. Returns
    /// the error that ended it, unless that was a GOAWAY.
    pub async fn serve(
        mut self,
        drain: &crate::drain::Watch,
        idle: Duration,
        mut tunnel: impl FnMut(PendingTunnel, OpenTunnels),
    ) -> Option<h2::Error> {
        let open = OpenTunnels::default();
        let mut draining = false;
        let mut failure = None;
        loop {
            let next = tokio::select! {
                _ = drain.signaled(), if !draining => {
                    draining = true;
                    self.graceful_shutdown();
                    continue;
                }
                next = self.next_unless_idle(idle, &open) => next,
            };
            match next {
                None => break,
                Some(Ok(pending)) => tunnel(pending, open.clone()),
                Some(Err(e)) => {
                    if !e.is_go_away() {
                        failure = Some(e);
                    }
                    break;
                }
            }
        }
        let _ = self.closed().await;
        failure
    }

    /// Starts a graceful close: GOAWAY, in-flight streams finish.
    pub fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
    }

    /// Drives the connection until every stream is done (after `next` returned `None`).
    pub async fn closed(&mut self) -> Result<(), h2::Error> {
        std::future::poll_fn(|cx| self.conn.poll_closed(cx)).await
    }
}

/// The tunnels open on one connection: each holds a clone while it lives.
#[derive(Clone, Debug, Default)]
pub struct OpenTunnels(Arc<()>);

impl OpenTunnels {
    /// Whether no tunnel holds a clone (only this one is left).
    pub fn none(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

/// How long an HBONE connection with no tunnel open may stay (Envoy's and ztunnel's idle
/// timeouts are of this order).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a valid CONNECT asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The original destination (`:authority`).
    pub destination: SocketAddr,
    /// The original client, from `forwarded`.
    pub client: Option<SocketAddr>,
    /// W3C trace context, if sent.
    pub traceparent: Option<String>,
    /// W3C baggage, if sent.
    pub baggage: Option<String>,
}

/// A refusal, with the status HBONE answers it with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// 400: not a CONNECT, or the authority is not an acceptable `ip:port`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: policy denies it.
    #[error("denied: {0}")]
    Denied(String),
    /// 503: the destination did not accept the connection.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

impl Rejection {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Denied(_) => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A CONNECT awaiting an answer.
pub struct PendingTunnel {
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
}

impl PendingTunnel {
    /// Validates the request: method CONNECT, `:authority` an IP and port that is not one of
    /// the mesh's own ports.
    pub fn target(&self) -> Result<ConnectTarget, Rejection> {
        parse_target(&self.request)
    }

    /// Answers with the rejection's status and closes the stream.
    pub fn reject(mut self, rejection: &Rejection) {
        let response = Response::builder()
            .status(rejection.status())
            .body(())
            .unwrap_or_default();
        let _ = self.respond.send_response(response, true);
    }

    /// Answers 200 and returns the tunnel.
    pub fn open(mut self) -> Result<H2Stream, h2::Error> {
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap_or_default();
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.request.into_body(), None))
    }
}

fn parse_target<B>(request: &Request<B>) -> Result<ConnectTarget, Rejection> {
    if request.method() != Method::CONNECT {
        return Err(Rejection::BadRequest(format!(
            "method {} (only CONNECT is served on the HBONE port)",
            request.method()
        )));
    }
    let authority = request
        .uri()
        .authority()
        .ok_or_else(|| Rejection::BadRequest("CONNECT without :authority".into()))?;
    let destination: SocketAddr = authority.as_str().parse().map_err(|_| {
        Rejection::BadRequest(format!(
            ":authority {authority:?} is not the destination's ip:port"
        ))
    })?;
    if MESH_PORTS.contains(&destination.port()) {
        return Err(Rejection::BadRequest(format!(
            "{destination} is a port of the mesh itself"
        )));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let client = match header("forwarded") {
        Some(value) => Some(parse_forwarded(&value).ok_or_else(|| {
            Rejection::BadRequest(format!("forwarded header {value:?} has no for= address"))
        })?),
        None => None,
    };
    Ok(ConnectTarget {
        destination,
        client,
        traceparent: header("traceparent"),
        baggage: header("baggage"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(authority: &str) -> Request<()> {
        Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .header("forwarded", "for=\"10.0.0.1:4000\"")
            .header("traceparent", "00-abc-def-01")
            .body(())
            .expect("request")
    }

    #[test]
    fn accepts_ip_port_authority() {
        let target = parse_target(&connect("10.0.0.2:8080")).expect("valid");
        assert_eq!(target.destination, "10.0.0.2:8080".parse().expect("addr"));
        assert_eq!(target.client, Some("10.0.0.1:4000".parse().expect("addr")));
        assert_eq!(target.traceparent.as_deref(), Some("00-abc-def-01"));
    }

    #[test]
    fn rejects_hostnames_mesh_ports_and_other_methods() {
        for bad in [
            "reviews:8080",
            "10.0.0.2:15008",
            "10.0.0.2:15001",
            "10.0.0.2",
        ] {
            let err = parse_target(&connect(bad)).expect_err(bad);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}: {err}");
        }
        let get = Request::builder()
            .method(Method::GET)
            .uri("http://10.0.0.2:8080/")
            .body(())
            .expect("request");
        assert_eq!(
            parse_target(&get).expect_err("GET").status(),
            StatusCode::BAD_REQUEST
        );
    }

    /// Property: whatever a peer puts in `:authority` and `forwarded`, parsing answers (no
    /// panic); a well-formed CONNECT to a non-mesh port reads back exactly what was sent.
    #[test]
    fn connect_headers_from_any_peer_parse_or_are_refused() {
        let mut g = crate::testing::Gen::new(7);
        let pieces = [
            "10", ".", "0", "1", "255", "256", ":", "[", "]", "::", "ffff", "8080", "15008",
            "65536", "a", "-", " ", "%", "for=", "\"", ";", ",", "by=", "\u{0}",
        ];
        for _ in 0..3000 {
            let authority = g.string(&pieces, 8);
            let forwarded = g.string(&pieces, 10);
            let Ok(request) = Request::builder()
                .method(Method::CONNECT)
                .uri(authority.as_str())
                .header("forwarded", forwarded.as_str())
                .body(())
            else {
                continue;
            };
            let _ = parse_target(&request);
        }
        for _ in 0..2000 {
            let octets = [g.below(256), g.below(256), g.below(256), g.below(256)].map(|o| o as u8);
            let port = 1 + g.below(65535) as u16;
            let destination = SocketAddr::from((octets, port));
            let client = SocketAddr::from(([10, 0, 0, g.below(256) as u8], g.below(65536) as u16));
            let request = Request::builder()
                .method(Method::CONNECT)
                .uri(destination.to_string())
                .header("forwarded", crate::hbone::forwarded_header(client))
                .body(())
                .expect("request");
            match parse_target(&request) {
                Ok(target) => {
                    assert_eq!(target.destination, destination);
                    assert_eq!(target.client, Some(client));
                }
                Err(_) => assert!(MESH_PORTS.contains(&port), "{destination} refused"),
            }
        }
    }
}
