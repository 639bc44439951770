//! Retry budgets and backoff. A budget lets retries add at most `ratio` of the requests seen in
//! its window, plus `minPerSecond`, so an outage cannot multiply the load on a backend.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_core::mesh::{Retry, RetryBudget, RetryOn};

use crate::upstream::UpstreamError;

const BUCKET: Duration = Duration::from_millis(100);

/// A sliding-window retry budget.
pub(crate) struct Budget {
    config: Mutex<RetryBudget>,
    buckets: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl Budget {
    pub(crate) fn new(config: RetryBudget) -> Self {
        Self {
            config: Mutex::new(config),
            buckets: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn configure(&self, config: RetryBudget) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn with_current<T>(
        &self,
        f: impl FnOnce(&mut VecDeque<(Instant, u64, u64)>, &RetryBudget) -> T,
    ) -> T {
        let config = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let window = Duration::from_millis(config.window_ms.max(100));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        while buckets
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > window)
        {
            buckets.pop_front();
        }
        if buckets
            .back()
            .is_none_or(|(t, _, _)| now.duration_since(*t) >= BUCKET)
        {
            buckets.push_back((now, 0, 0));
        }
        f(&mut buckets, &config)
    }

    /// Counts an original request.
    pub(crate) fn deposit(&self) {
        self.with_current(|b, _| {
            if let Some(last) = b.back_mut() {
                last.1 += 1;
            }
        });
    }

    /// Takes a retry from the budget, if it has one.
    pub(crate) fn withdraw(&self) -> bool {
        self.with_current(|b, config| {
            let requests: u64 = b.iter().map(|x| x.1).sum();
            let retries: u64 = b.iter().map(|x| x.2).sum();
            let window_secs = config.window_ms.max(100) as f64 / 1000.0;
            let allowed =
                requests as f64 * config.ratio + f64::from(config.min_per_second) * window_secs;
            if (retries as f64) < allowed {
                if let Some(last) = b.back_mut() {
                    last.2 += 1;
                }
                true
            } else {
                false
            }
        })
    }
}

/// How a try ended, for the retry decision.
pub(crate) enum TryResult<'a> {
    Response { status: u16, grpc: Option<u32> },
    Failed(&'a UpstreamError),
    PerTryTimeout,
}

/// Whether `result` is worth another try under `on`.
pub(crate) fn retryable(on: &RetryOn, result: &TryResult<'_>) -> bool {
    match result {
        TryResult::Response { status, grpc } => {
            let s = *status;
            (on.server_error && s >= 500)
                || (on.gateway_error && (502..=504).contains(&s))
                || (on.retriable_4xx && s == 409)
                || on.statuses.contains(&s)
                || grpc.is_some_and(|g| on.grpc.contains(&g))
        }
        TryResult::Failed(UpstreamError::Connect(_)) => {
            on.connect_failure || on.server_error || on.gateway_error
        }
        TryResult::Failed(UpstreamError::Reset(_)) => on.reset || on.server_error,
        TryResult::Failed(UpstreamError::Refused(_)) => on.refused_stream || on.server_error,
        TryResult::Failed(UpstreamError::Overflow) => false,
        TryResult::PerTryTimeout => on.server_error || on.gateway_error || on.reset,
    }
}

/// Exponential backoff with full jitter before retry number `n` (1-based).
pub(crate) fn backoff(retry: &Retry, n: u32, rng: &mut weft_core::rng::Rng) -> Duration {
    let base = retry.backoff_base_ms.max(1);
    let ceiling = base
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(16))
        .min(retry.backoff_max_ms.max(base));
    Duration::from_millis(rng.below(ceiling as usize + 1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_caps_retries_at_the_ratio_plus_the_minimum() {
        let budget = Budget::new(RetryBudget {
            ratio: 0.2,
            min_per_second: 0,
            window_ms: 10_000,
        });
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 20);
        let with_minimum = Budget::new(RetryBudget {
            ratio: 0.0,
            min_per_second: 10,
            window_ms: 1_000,
        });
        assert_eq!((0..100).filter(|_| with_minimum.withdraw()).count(), 10);
    }

    fn on(conditions: &str) -> RetryOn {
        let mut on = RetryOn::default();
        for c in conditions.split(',') {
            match c {
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                _ => panic!("{c}"),
            }
        }
        on
    }

    #[test]
    fn retry_eligibility_follows_the_conditions() {
        let status = |s| TryResult::Response {
            status: s,
            grpc: None,
        };
        let gateway = on("gateway-error");
        assert!(retryable(&gateway, &status(503)));
        assert!(
            !retryable(&gateway, &status(500)),
            "500 is not a gateway error"
        );
        assert!(!retryable(&gateway, &status(200)));
        assert!(retryable(&on("5xx"), &status(500)));
        assert!(retryable(&on("retriable-4xx"), &status(409)));
        assert!(!retryable(&on("retriable-4xx"), &status(404)));
        let connect = UpstreamError::Connect("refused".into());
        let reset = UpstreamError::Reset("rst".into());
        assert!(retryable(
            &on("connect-failure"),
            &TryResult::Failed(&connect)
        ));
        assert!(!retryable(
            &on("connect-failure"),
            &TryResult::Failed(&reset)
        ));
        assert!(retryable(&on("reset"), &TryResult::Failed(&reset)));
        assert!(retryable(&on("reset"), &TryResult::PerTryTimeout));
        assert!(
            !retryable(&on("5xx"), &TryResult::Failed(&UpstreamError::Overflow)),
            "a full pool is never retried: retries would only add load"
        );
        let mut grpc = RetryOn::default();
        grpc.grpc.insert(14);
        let unavailable = TryResult::Response {
            status: 200,
            grpc: Some(14),
        };
        assert!(retryable(&grpc, &unavailable));
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling_with_full_jitter() {
        let policy = Retry {
            backoff_base_ms: 25,
            backoff_max_ms: 100,
            ..Retry::default()
        };
        let mut rng = weft_core::rng::Rng::seeded(9);
        for n in 1..=6 {
            let ceiling = (25u64 << (n - 1)).min(100);
            let longest = (0..200)
                .map(|_| backoff(&policy, n, &mut rng))
                .max()
                .expect("samples");
            assert!(
                longest <= Duration::from_millis(ceiling),
                "try {n}: {longest:?}"
            );
        }
    }
}
