//! Traffic splits: a route's backends by weight (canary), except that a client that addressed
//! one pod, not the service, gets the backend holding that pod.

use std::net::IpAddr;

use weft_core::mesh::Route;

use crate::snapshot::BoundService;
use weft_core::rng::Rng;

/// The index (into the service's backends) of the backend this request goes to.
pub(crate) fn choose(
    route: &Route,
    service: &BoundService,
    pinned: Option<IpAddr>,
    rng: &mut Rng,
) -> usize {
    if let Some(ip) = pinned
        && let Some(index) = service
            .backends
            .iter()
            .position(|(b, _)| b.has_endpoint(ip))
    {
        return index;
    }
    by_weight(route, rng)
}

fn by_weight(route: &Route, rng: &mut Rng) -> usize {
    let total: u64 = route.backends.iter().map(|b| u64::from(b.weight)).sum();
    let mut roll = rng.below(total.max(1) as usize) as u64;
    route
        .backends
        .iter()
        .find(|b| {
            if roll < u64::from(b.weight) {
                true
            } else {
                roll -= u64::from(b.weight);
                false
            }
        })
        .map_or(0, |b| b.backend)
}

#[cfg(test)]
mod tests {
    use weft_core::mesh::WeightedBackend;

    use super::*;

    fn route(weights: &[(usize, u32)]) -> Route {
        Route {
            name: "r".into(),
            matches: vec![],
            backends: weights
                .iter()
                .map(|&(backend, weight)| WeightedBackend { backend, weight })
                .collect(),
            timeout_ms: None,
            retry: None,
            ..Route::default()
        }
    }

    #[test]
    fn weights_split_the_traffic() {
        let canary = route(&[(0, 90), (1, 10), (2, 0)]);
        let mut rng = Rng::seeded(42);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[by_weight(&canary, &mut rng)] += 1;
        }
        assert_eq!(counts[2], 0, "a backend weighing 0 gets nothing");
        // Binomial(10000, 0.1): mean 1000, sd 30; ±200 is more than 6 sd.
        assert!((800..=1200).contains(&counts[1]), "{counts:?}");
    }
}
