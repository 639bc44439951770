//! What every translation shares: how a policy's host names a service, label selectors,
//! durations, and the retry defaults of the APIs that count retries.

use std::collections::BTreeMap;

use weft_core::mesh::{Retry, RetryBudget, RetryOn};

use crate::model::objects::{Objects, Service};
use crate::model::policy::common::ApiDuration;

/// Namespaces whose PeerAuthentication and AuthorizationPolicy apply mesh-wide.
pub const ROOT_NAMESPACES: [&str; 2] = ["weft-system", "istio-system"];

/// Budget of retries configured by count (Istio, Gateway API): generous enough that a
/// backend failing a third of requests is fully retried, yet an outage at most adds half.
pub(crate) const COUNTED_BUDGET: RetryBudget = RetryBudget {
    ratio: 0.5,
    min_per_second: 10,
    window_ms: 10_000,
};

/// Largest request body kept for replay.
pub(crate) const REPLAY_CAP: u64 = 64 * 1024;

pub(crate) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `host` (as written in a policy in `policy_ns`) names `svc`.
pub(crate) fn host_is(host: &str, policy_ns: &str, svc: &Service) -> bool {
    let host = host.trim_end_matches('.');
    let mut parts = host.splitn(3, '.');
    let name = parts.next().unwrap_or("");
    let ns = parts.next().unwrap_or(policy_ns);
    let rest = parts.next().unwrap_or("svc");
    name == svc.name && ns == svc.namespace && rest.starts_with("svc")
}

/// The service a host names, looked up in `policy_ns`.
pub(crate) fn service_for<'a>(
    objects: &'a Objects,
    host: &str,
    policy_ns: &str,
) -> Option<&'a Service> {
    objects
        .services
        .values()
        .find(|s| host_is(host, policy_ns, s))
}

pub(crate) fn ms(d: Option<ApiDuration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX))
}

/// Istio's default when a route has no `retries`: two retries on connection failures.
pub(crate) fn default_retry() -> Retry {
    Retry {
        attempts: 2,
        per_try_timeout_ms: None,
        on: RetryOn {
            connect_failure: true,
            refused_stream: true,
            ..RetryOn::default()
        },
        backoff_base_ms: 25,
        backoff_max_ms: 250,
        budget: Some(RetryBudget::DEFAULT),
        max_body_bytes: REPLAY_CAP,
    }
}

/// A percentage from a policy, within 0–100 (not a number: none).
pub(crate) fn share(percent: f64) -> f64 {
    if percent.is_nan() {
        0.0
    } else {
        percent.clamp(0.0, 100.0)
    }
}
