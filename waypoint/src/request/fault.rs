//! Fault injection (Istio's `fault`): a share of a route's requests waits before it is
//! forwarded, a share is answered with a status instead (flag `FI`): an HTTP status, or a gRPC
//! status in a trailers-only answer (HTTP 200, `grpc-status` in the headers), as a gRPC server
//! answers an error.

use std::time::Duration;

use http::StatusCode;
use weft_core::mesh::Fault;

use super::reply::{Reply, ResponseFlag, local};
use weft_core::rng::Rng;

/// Delays the request if it falls in the delayed share; the abort answer if it falls in the
/// aborted share.
pub(crate) async fn inject(fault: &Fault, rng: &mut Rng) -> Option<Reply> {
    if let Some((ms, percent)) = fault.delay
        && rng.chance(percent)
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some((code, percent)) = fault.abort_grpc {
        return rng.chance(percent).then(|| grpc_abort(code));
    }
    let (status, percent) = fault.abort?;
    rng.chance(percent).then(|| {
        local(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            ResponseFlag::FaultInjected,
            "fault filter abort".into(),
        )
    })
}

/// A trailers-only gRPC answer with status `code`.
fn grpc_abort(code: u32) -> Reply {
    let mut reply = local(
        StatusCode::OK,
        ResponseFlag::FaultInjected,
        "fault filter abort".into(),
    );
    *reply.response.body_mut() = super::reply::full(bytes::Bytes::new());
    let headers = reply.response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from(code));
    headers.insert(
        "grpc-message",
        http::HeaderValue::from_static("fault filter abort"),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_aborted_share_follows_the_percentage() {
        let fault = Fault {
            delay: None,
            abort: Some((503, 25.0)),
            ..Fault::default()
        };
        let mut rng = Rng::seeded(21);
        let mut aborted = 0;
        for _ in 0..4000 {
            if let Some(reply) = inject(&fault, &mut rng).await {
                assert_eq!(reply.response.status(), 503);
                assert_eq!(reply.flag, ResponseFlag::FaultInjected);
                aborted += 1;
            }
        }
        // Binomial(4000, 1/4): mean 1000, sd 27; ±200 is over 7 sd.
        assert!((800..=1200).contains(&aborted), "{aborted}");
        let always = Fault {
            delay: None,
            abort: Some((500, 100.0)),
            ..Fault::default()
        };
        assert!(inject(&always, &mut rng).await.is_some());
        let never = Fault {
            delay: None,
            abort: Some((500, 0.0)),
            ..Fault::default()
        };
        assert!(inject(&never, &mut rng).await.is_none());
    }

    #[tokio::test]
    async fn a_grpc_abort_is_a_trailers_only_answer() {
        let fault = Fault {
            abort_grpc: Some((14, 100.0)),
            ..Fault::default()
        };
        let reply = inject(&fault, &mut Rng::seeded(1)).await.expect("aborted");
        assert_eq!(reply.response.status(), 200);
        assert_eq!(reply.response.headers()["grpc-status"], "14");
        assert_eq!(reply.response.headers()["content-type"], "application/grpc");
        assert_eq!(reply.flag, ResponseFlag::FaultInjected);
    }
}
