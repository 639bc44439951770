//! Load balancing over a backend's endpoints: power of two choices by requests in flight,
//! skipping endpoints ejected by outlier detection.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::endpoint::Endpoint;
use super::pool::RequestSlot;
use weft_core::rng::Rng;

/// Why no endpoint was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PickError {
    /// No endpoint at all, or all ejected (`UH`).
    NoHealthy,
    /// `maxRequests` reached (`UO`).
    Overflow,
}

/// Picks an endpoint by power of two choices among the healthy ones (only `pinned`, when the
/// client addressed one pod; avoiding `avoid` when another is healthy), and takes a request
/// slot on it with `slot`.
pub(super) fn pick(
    endpoints: &[Arc<Endpoint>],
    rng: &mut Rng,
    avoid: Option<IpAddr>,
    pinned: Option<IpAddr>,
    slot: impl FnOnce(&Endpoint) -> Option<RequestSlot>,
) -> Result<(Arc<Endpoint>, RequestSlot), PickError> {
    let now = Instant::now();
    let mut healthy: Vec<&Arc<Endpoint>> = endpoints
        .iter()
        .filter(|e| pinned.is_none_or(|ip| e.workload.ip == ip))
        .filter(|e| !e.health.ejected(now))
        .collect();
    if healthy.is_empty() {
        return Err(PickError::NoHealthy);
    }
    if healthy.len() > 1
        && let Some(avoid) = avoid
    {
        healthy.retain(|e| e.workload.ip != avoid);
    }
    let a = healthy[rng.below(healthy.len())];
    let b = healthy[rng.below(healthy.len())];
    let chosen = if b.in_flight() < a.in_flight() { b } else { a };
    let slot = slot(chosen).ok_or(PickError::Overflow)?;
    Ok((chosen.clone(), slot))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use weft_core::mesh::PoolLimits;

    use super::super::Limits;
    use super::super::test_support::backend;
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn p2c_prefers_the_endpoint_with_fewer_requests_in_flight() {
        let web = backend(2, Limits::default());
        let mut rng = Rng::seeded(7);
        // Hold 5 requests on endpoint 1: every pick that sees both endpoints takes endpoint 2,
        // and a pick sees both unless both draws land on the same one (probability 1/2).
        let first = web.endpoints()[0].clone();
        let _held: Vec<_> = (0..5)
            .map(|_| web.try_request(&first).expect("slot"))
            .collect();
        let to_second = (0..1000)
            .filter(|_| {
                let (chosen, _slot) = web.pick(&mut rng, None, None).expect("pick");
                chosen.workload.ip == ip(2)
            })
            .count();
        // Binomial(1000, 3/4): mean 750, sd 13.7; 650 is more than 7 sd below.
        assert!(
            to_second > 650,
            "{to_second}/1000 went to the idle endpoint"
        );
    }

    #[test]
    fn pinned_and_avoided_endpoints() {
        let web = backend(3, Limits::default());
        let mut rng = Rng::seeded(1);
        for _ in 0..50 {
            let (chosen, _) = web.pick(&mut rng, None, Some(ip(3))).expect("pinned");
            assert_eq!(chosen.workload.ip, ip(3));
            let (chosen, _) = web.pick(&mut rng, Some(ip(1)), None).expect("avoid");
            assert_ne!(
                chosen.workload.ip,
                ip(1),
                "a retry avoids the endpoint that failed"
            );
        }
        let seen: HashSet<IpAddr> = (0..200)
            .map(|_| web.pick(&mut rng, None, None).expect("pick").0.workload.ip)
            .collect();
        assert_eq!(seen.len(), 3, "every endpoint is used");
        let missing = web.pick(&mut rng, None, Some(ip(9)));
        assert_eq!(missing.err(), Some(PickError::NoHealthy));
    }

    #[test]
    fn max_requests_overflows() {
        let web = backend(
            2,
            Limits {
                pool: PoolLimits {
                    max_requests: Some(1),
                    ..PoolLimits::default()
                },
                outlier: None,
            },
        );
        let mut rng = Rng::seeded(3);
        let held = web.pick(&mut rng, None, None).expect("first");
        assert_eq!(
            web.pick(&mut rng, None, None).err(),
            Some(PickError::Overflow)
        );
        drop(held);
        assert!(web.pick(&mut rng, None, None).is_ok());
    }
}
