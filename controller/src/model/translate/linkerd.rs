//! Linkerd's ServiceProfile: per-route matches, timeouts and retries (bounded by the retry
//! budget), failure classes.

use weft_core::mesh::{Retry, RetryBudget, RetryOn, Route, RouteMatch, StrMatch, WeightedBackend};

use super::common::{REPLAY_CAP, host_is, ms};
use crate::model::objects::{Objects, Service};
use crate::model::policy::{PolicySpec, linkerd};

pub(crate) fn service_profile<'a>(
    objects: &'a Objects,
    svc: &Service,
) -> Option<&'a linkerd::ServiceProfileSpec> {
    objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::ServiceProfile(sp) if host_is(&p.key.name, &p.key.namespace, svc) => {
            Some(&**sp)
        }
        _ => None,
    })
}

fn profile_match(condition: &linkerd::RequestMatch) -> Vec<RouteMatch> {
    if !condition.any.is_empty() {
        return condition.any.iter().flat_map(profile_match).collect();
    }
    let mut m = RouteMatch {
        path: condition.path_regex.clone().map(StrMatch::Regex),
        method: condition.method.clone().map(StrMatch::Exact),
        ..RouteMatch::default()
    };
    for part in &condition.all {
        for sub in profile_match(part) {
            m.path = m.path.or(sub.path);
            m.method = m.method.or(sub.method);
        }
    }
    vec![m]
}

pub(crate) fn profile_routes(
    objects: &Objects,
    svc: &Service,
    default: &[WeightedBackend],
) -> Vec<Route> {
    let Some(profile) = service_profile(objects, svc) else {
        return Vec::new();
    };
    profile
        .routes
        .iter()
        .map(|r| {
            let budget = r
                .retries
                .as_ref()
                .and_then(|x| x.budget.as_ref())
                .or(profile.retry_budget.as_ref());
            let retryable = r.is_retryable || r.retries.is_some();
            let mut on = RetryOn::default();
            let failure_classes: Vec<&linkerd::ResponseClass> =
                r.response_classes.iter().filter(|c| c.is_failure).collect();
            if failure_classes.is_empty() {
                on.server_error = true;
            }
            for class in failure_classes {
                on.statuses.extend(class.status_codes.iter().copied());
                if let Some(range) = class.condition.as_ref().and_then(|c| c.status.as_ref()) {
                    let (lo, hi) = (range.min.unwrap_or(100), range.max.unwrap_or(599));
                    on.statuses.extend((lo..=hi.min(599)).filter(|s| *s >= 100));
                }
            }
            on.connect_failure = true;
            Route {
                name: r.name.clone(),
                matches: profile_match(&r.condition),
                backends: default.to_vec(),
                timeout_ms: ms(r.timeout),
                retry: retryable.then(|| Retry {
                    // Linkerd bounds retries by the budget, not a count.
                    attempts: 3,
                    per_try_timeout_ms: None,
                    on: on.clone(),
                    backoff_base_ms: budget.and_then(|b| b.initial_delay_ms).unwrap_or(25),
                    backoff_max_ms: budget.and_then(|b| b.max_delay_ms).unwrap_or(250),
                    budget: Some(budget.map_or(RetryBudget::DEFAULT, |b| {
                        RetryBudget {
                            ratio: b.retry_ratio.unwrap_or(RetryBudget::DEFAULT.ratio),
                            min_per_second: b
                                .min_retries_per_second
                                .unwrap_or(RetryBudget::DEFAULT.min_per_second),
                            window_ms: ms(b.ttl).unwrap_or(RetryBudget::DEFAULT.window_ms),
                        }
                    })),
                    max_body_bytes: REPLAY_CAP,
                }),
                ..Route::default()
            }
        })
        .collect()
}
