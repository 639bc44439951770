//! A minimal HTTP/1 server for the admin (15000), metrics (15020) and readiness (15021) ports.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::drain;

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
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let reply = handler(req.uri().path());
                let response = Response::builder()
                    .status(reply.status)
                    .header("content-type", reply.content_type)
                    .body(Full::new(Bytes::from(reply.body)))
                    .unwrap_or_default();
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}
