//! Outlier detection: consecutive failures of an endpoint eject it for a while (longer each
//! time), within `maxEjectionPercent` and `minHealthPercent`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use weft_core::mesh::Outlier;

/// How a try ended, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The endpoint could not be reached or reset the request.
    ConnectFailure,
}

/// An endpoint's failure counters and ejection.
#[derive(Default)]
pub(crate) struct Health {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    ejections: AtomicU32,
}

impl Health {
    pub(super) fn ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| until > now)
    }

    fn reset(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }
}

/// How long the `times`-th ejection lasts: the base ejection time times `times` (up to 10), as
/// Envoy does, ended at the first re-evaluation (`interval`) after that.
fn ejection_ms(outlier: &Outlier, times: u32) -> u64 {
    let ms = outlier
        .base_ejection_ms
        .saturating_mul(u64::from(times.min(10)));
    match outlier.interval_ms {
        0 => ms,
        interval => ms.div_ceil(interval).saturating_mul(interval),
    }
}

impl Health {
    /// Records a try's outcome. When the endpoint's consecutive failures reach a threshold,
    /// ejects it, within `maxEjectionPercent` and `minHealthPercent` of the backend's endpoints
    /// (`census`: how many are ejected now, of how many); returns for how long.
    pub(super) fn record(
        &self,
        outlier: &Outlier,
        outcome: Outcome,
        census: impl FnOnce(Instant) -> (usize, usize),
    ) -> Option<Duration> {
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::ConnectFailure => (true, true),
        };
        if !is_5xx {
            self.reset();
            return None;
        }
        let n5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let ngw = if is_gateway {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let tripped = outlier.consecutive_5xx.is_some_and(|t| n5 >= t)
            || outlier.consecutive_gateway.is_some_and(|t| ngw >= t);
        let now = Instant::now();
        if !tripped || self.ejected(now) {
            return None;
        }
        let (ejected, total) = census(now);
        let total = total.max(1);
        // At least one endpoint may always be ejected (as Envoy does).
        let max = (total * outlier.max_ejection_percent as usize / 100).max(1);
        let healthy_after = total.saturating_sub(ejected + 1) * 100 / total;
        if ejected >= max || (healthy_after as u32) < outlier.min_health_percent {
            return None;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = Duration::from_millis(ejection_ms(outlier, times));
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + duration);
        self.reset();
        Some(duration)
    }
}

#[cfg(test)]
mod tests {
    use weft_core::mesh::{Outlier, PoolLimits};

    use super::super::Limits;
    use super::super::test_support::backend;
    use super::*;

    fn detecting(consecutive_gateway: u32, max_ejection_percent: u32) -> Limits {
        Limits {
            pool: PoolLimits::default(),
            outlier: Some(Outlier {
                consecutive_5xx: None,
                consecutive_gateway: Some(consecutive_gateway),
                interval_ms: 10_000,
                base_ejection_ms: 30_000,
                max_ejection_percent,
                min_health_percent: 0,
            }),
        }
    }

    #[test]
    fn consecutive_gateway_errors_eject_and_a_success_resets_the_count() {
        let web = backend(2, detecting(3, 50));
        let ep = web.endpoints()[0].clone();
        web.record(&ep, Outcome::Status(503));
        web.record(&ep, Outcome::Status(503));
        web.record(&ep, Outcome::Status(200));
        web.record(&ep, Outcome::ConnectFailure);
        web.record(&ep, Outcome::Status(502));
        assert!(
            !ep.health.ejected(Instant::now()),
            "the 200 reset the streak"
        );
        web.record(&ep, Outcome::Status(504));
        assert!(ep.health.ejected(Instant::now()), "3 in a row eject");
        // A plain 500 is not a gateway error.
        let other = web.endpoints()[1].clone();
        for _ in 0..10 {
            web.record(&other, Outcome::Status(500));
        }
        assert!(!other.health.ejected(Instant::now()));
    }

    #[test]
    fn ejections_grow_with_their_count_and_end_at_a_re_evaluation() {
        let mut outlier = Outlier {
            interval_ms: 10_000,
            base_ejection_ms: 30_000,
            ..Outlier::default()
        };
        assert_eq!(ejection_ms(&outlier, 1), 30_000);
        assert_eq!(ejection_ms(&outlier, 2), 60_000);
        assert_eq!(ejection_ms(&outlier, 50), 300_000, "capped at 10 times");
        outlier.interval_ms = 7_000;
        assert_eq!(ejection_ms(&outlier, 1), 35_000, "the sweep after 30 s");
        outlier.interval_ms = 0;
        assert_eq!(ejection_ms(&outlier, 1), 30_000);
    }

    #[test]
    fn max_ejection_percent_keeps_endpoints_in_and_nothing_underflows() {
        let web = backend(2, detecting(1, 50));
        let (a, b) = (web.endpoints()[0].clone(), web.endpoints()[1].clone());
        web.record(&a, Outcome::ConnectFailure);
        web.record(&b, Outcome::ConnectFailure);
        assert!(a.health.ejected(Instant::now()));
        assert!(!b.health.ejected(Instant::now()), "50% of 2: only one out");
        // Everything ejected (100%): recording more failures must not panic or overflow.
        let all = backend(1, detecting(1, 100));
        let only = all.endpoints()[0].clone();
        for _ in 0..5 {
            all.record(&only, Outcome::ConnectFailure);
        }
        assert!(only.health.ejected(Instant::now()));
        let mut rng = weft_core::rng::Rng::seeded(1);
        assert_eq!(
            all.pick(&mut rng, None, None).err(),
            Some(super::super::PickError::NoHealthy)
        );
    }
}
