//! A minimal HTTP/1 server for the admin (15000), metrics (15020) and readiness (15021) ports.
//! Every listener has limits: [`MAX_CONNECTIONS`] open (at most [`MAX_PER_PEER`] from one
//! address), a request head within [`HEAD_TIMEOUT`] and [`MAX_HEAD_BYTES`], and a connection
//! closed after [`CONNECTION_LIFETIME`], so a scraper that never finishes cannot pin it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::accept::{ConnectionLimits, RefusalLog};
use crate::drain;

/// Connections one admin listener holds open.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections from one address.
pub const MAX_PER_PEER: usize = 16;
/// How long a request head may take to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long one connection may stay open, requests included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// A response from an admin handler.
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// 200 text/plain.
    pub fn text(body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// 200 application/json.
    pub fn json(body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// Any status, text body.
    pub fn status(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            ..Self::text(body)
        }
    }
}

/// Handles one admin request by path.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Serves `handler` on `listener` until drain.
pub async fn serve(listener: TcpListener, handler: Handler, drain: drain::Watch) {
    let mut backoff = crate::accept::Backoff::default();
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, MAX_PER_PEER);
    let mut refusals = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff.succeeded();
                pair
            }
            Err(e) => {
                backoff.failed("admin", &e).await;
                continue;
            }
        };
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refusals.refused("admin", peer.ip(), why);
                continue;
            }
        };
        refusals.admitted();
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let reply = handler(req.uri().path());
                let response = Response::builder()
                    .status(reply.status)
                    .header("content-type", reply.content_type)
                    .body(Full::new(Bytes::from(reply.body)))
                    .unwrap_or_default();
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "admin connection error"),
                Err(_) => debug!(%peer, "admin connection closed after its lifetime"),
                Ok(Ok(())) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (signal, watch) = drain::channel();
        std::mem::forget(signal);
        tokio::spawn(serve(
            listener,
            Arc::new(|_: &str| Reply::text("ok")),
            watch,
        ));
        addr
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(conn: &mut TcpStream) -> String {
        let mut all = Vec::new();
        let _ = conn.read_to_end(&mut all).await;
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_head_is_closed_and_one_peer_gets_its_share() {
        let addr = server().await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        // The paused clock runs ahead to the head timeout: the server gives up.
        let started = tokio::time::Instant::now();
        let answer = until_closed(&mut slow).await;
        assert!(!answer.contains("200"), "{answer}");
        assert!(started.elapsed() >= HEAD_TIMEOUT, "{:?}", started.elapsed());

        let mut held = Vec::new();
        for _ in 0..MAX_PER_PEER {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut over = TcpStream::connect(addr).await.expect("connect");
        over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(until_closed(&mut over).await, "", "over the per-peer limit");
        drop(held.pop());
        tokio::task::yield_now().await;
        let mut again = TcpStream::connect(addr).await.expect("connect");
        again
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        assert!(until_closed(&mut again).await.starts_with("HTTP/1.1 200"));
    }
}
