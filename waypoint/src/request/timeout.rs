//! Timeouts: the route's (over all tries, backoff included) and each try's; a try gets
//! whichever ends first.

use std::time::{Duration, Instant};

/// The deadlines of one request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    route: Option<Instant>,
    per_try: Option<Duration>,
}

impl Deadlines {
    pub(crate) fn new(route_ms: Option<u64>, per_try_ms: Option<u64>, now: Instant) -> Self {
        Self {
            route: route_ms.map(|ms| now + Duration::from_millis(ms)),
            per_try: per_try_ms.map(Duration::from_millis),
        }
    }

    /// How long a try started at `now` may take (`None`: no limit).
    pub(crate) fn try_limit(&self, now: Instant) -> Option<Duration> {
        let left = self.route.map(|d| d.saturating_duration_since(now));
        match (self.per_try, left) {
            (Some(t), Some(left)) => Some(t.min(left)),
            (t, left) => t.or(left),
        }
    }

    /// Whether the route's timeout has passed.
    pub(crate) fn route_expired(&self, now: Instant) -> bool {
        self.route.is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_try_gets_the_shorter_of_its_own_and_what_the_route_has_left() {
        let start = Instant::now();
        let both = Deadlines::new(Some(5_000), Some(2_000), start);
        assert_eq!(both.try_limit(start), Some(Duration::from_secs(2)));
        let late = start + Duration::from_millis(4_000);
        assert_eq!(both.try_limit(late), Some(Duration::from_secs(1)));
        assert!(!both.route_expired(late));
        assert!(both.route_expired(start + Duration::from_secs(5)));
        assert_eq!(
            both.try_limit(start + Duration::from_secs(6)),
            Some(Duration::ZERO)
        );
        let none = Deadlines::new(None, None, start);
        assert_eq!(none.try_limit(start), None);
        assert!(!none.route_expired(start + Duration::from_secs(3600)));
        let per_try_only = Deadlines::new(None, Some(250), start);
        assert_eq!(
            per_try_only.try_limit(start),
            Some(Duration::from_millis(250))
        );
    }
}
