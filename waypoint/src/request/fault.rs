//! Fault injection (Istio's `fault`): a share of a route's requests waits before it is
//! forwarded, a share is answered with a status instead (flag `FI`).

use std::time::Duration;

use http::StatusCode;
use weft_core::mesh::Fault;

use super::reply::{Reply, ResponseFlag, local};
use crate::rng::Rng;

/// Delays the request if it falls in the delayed share; the abort answer if it falls in the
/// aborted share.
pub(crate) async fn inject(fault: &Fault, rng: &mut Rng) -> Option<Reply> {
    if let Some((ms, percent)) = fault.delay
        && rng.chance(percent)
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_aborted_share_follows_the_percentage() {
        let fault = Fault {
            delay: None,
            abort: Some((503, 25.0)),
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
        };
        assert!(inject(&always, &mut rng).await.is_some());
        let never = Fault {
            delay: None,
            abort: Some((500, 0.0)),
        };
        assert!(inject(&never, &mut rng).await.is_none());
    }
}
