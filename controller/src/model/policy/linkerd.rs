//! Linkerd's `ServiceProfile` and SMI's `TrafficSplit`, as users write them (including the
//! shapes some guides use: `statusCodes` and `name` on response classes, a per-route
//! `retries.budget`, and a `circuitBreakers` block).

use serde::Deserialize;

use super::common::{ApiDuration, Notes, Number, Unhonoured};

/// `ServiceProfile.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceProfileSpec {
    /// Routes, first match wins.
    #[serde(default)]
    pub routes: Vec<ProfileRoute>,
    /// Retry budget for the service's retryable routes.
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
    /// Circuit breaking for the whole service.
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Traffic split by authority (Linkerd's own form of a canary).
    #[serde(default)]
    pub dst_overrides: Vec<DstOverride>,
    /// Not honoured.
    #[serde(default)]
    pub opaque_ports: Unhonoured,
}

/// One route.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileRoute {
    /// Name (the `route` label of metrics).
    pub name: String,
    /// What requests it covers.
    pub condition: RequestMatch,
    /// How responses are classified (first match wins; unmatched 5xx are failures).
    #[serde(default)]
    pub response_classes: Vec<ResponseClass>,
    /// Whether failed requests are retried (within the budget).
    #[serde(default)]
    pub is_retryable: bool,
    /// Whole-request timeout.
    #[serde(default)]
    pub timeout: Option<ApiDuration>,
    /// Retries with a budget (this route retries).
    #[serde(default)]
    pub retries: Option<RouteRetries>,
    /// Circuit breaking for this route's endpoints.
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakers>,
}

/// A request condition.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
    /// Regular expression the whole path must match.
    #[serde(default)]
    pub path_regex: Option<String>,
    /// All must hold.
    #[serde(default)]
    pub all: Vec<RequestMatch>,
    /// Any must hold.
    #[serde(default)]
    pub any: Vec<RequestMatch>,
    /// Must not hold.
    #[serde(default)]
    pub not: Option<Box<RequestMatch>>,
}

/// A response class.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseClass {
    /// Name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// Linkerd's condition.
    #[serde(default)]
    pub condition: Option<ResponseMatch>,
    /// Status codes (the short form some guides use).
    #[serde(default)]
    pub status_codes: Vec<u16>,
    /// Whether matching responses are failures.
    #[serde(default)]
    pub is_failure: bool,
}

/// A response condition.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseMatch {
    /// Status range.
    #[serde(default)]
    pub status: Option<StatusRange>,
    /// All must hold.
    #[serde(default)]
    pub all: Vec<ResponseMatch>,
    /// Any must hold.
    #[serde(default)]
    pub any: Vec<ResponseMatch>,
    /// Must not hold.
    #[serde(default)]
    pub not: Option<Box<ResponseMatch>>,
}

/// `{min: 500, max: 599}`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusRange {
    /// Lowest status (default 100).
    #[serde(default)]
    pub min: Option<u16>,
    /// Highest status (default 599).
    #[serde(default)]
    pub max: Option<u16>,
}

/// `retryBudget`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per original request.
    #[serde(default)]
    pub retry_ratio: Option<f64>,
    /// Retries always allowed per second.
    #[serde(default)]
    pub min_retries_per_second: Option<u32>,
    /// Window the ratio is computed over.
    #[serde(default)]
    pub ttl: Option<ApiDuration>,
    /// Not honoured (a guide's field).
    #[serde(default)]
    pub percentile: Unhonoured,
    /// Delay before the first retry, milliseconds.
    #[serde(default)]
    pub initial_delay_ms: Option<u64>,
    /// Longest delay between retries, milliseconds.
    #[serde(default)]
    pub max_delay_ms: Option<u64>,
}

/// A route's `retries` block.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRetries {
    /// The budget.
    #[serde(default)]
    pub budget: Option<RetryBudget>,
}

/// `circuitBreakers`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Consecutive failures before an endpoint is ejected.
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    /// How often ejections are re-evaluated.
    #[serde(default)]
    pub interval: Option<ApiDuration>,
    /// How long an endpoint stays ejected.
    #[serde(default)]
    pub tripping_timeout: Option<ApiDuration>,
    /// Most requests waiting for a connection.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
}

/// `dstOverrides[]`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DstOverride {
    /// `service.namespace.svc.cluster.local:port`.
    pub authority: String,
    /// Relative weight.
    pub weight: Number,
}

impl RequestMatch {
    /// Whether a `not` appears anywhere in this condition.
    fn has_not(&self) -> bool {
        self.not.is_some()
            || self.all.iter().any(RequestMatch::has_not)
            || self.any.iter().any(RequestMatch::has_not)
    }
}

impl ServiceProfileSpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        notes.unhonoured(
            "spec.opaquePorts",
            &self.opaque_ports,
            "the waypoint detects the protocol",
        );
        if !self.dst_overrides.is_empty() {
            notes.note(
                "spec.dstOverrides",
                "not honoured: split with a TrafficSplit or HTTPRoute backendRefs",
            );
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.condition.has_not() {
                notes.note(
                    &format!("spec.routes[{i}].condition"),
                    "`not` is not honoured: the negated part matches nothing, so the condition matches less",
                );
            }
            for (j, class) in r.response_classes.iter().enumerate() {
                if class
                    .condition
                    .as_ref()
                    .is_some_and(|c| !c.all.is_empty() || !c.any.is_empty() || c.not.is_some())
                {
                    notes.note(
                        &format!("spec.routes[{i}].responseClasses[{j}].condition"),
                        "all/any/not are not honoured: only the top-level status range classifies",
                    );
                }
            }
            if let Some(b) = r.retries.as_ref().and_then(|r| r.budget.as_ref()) {
                notes.unhonoured(
                    &format!("spec.routes[{i}].retries.budget.percentile"),
                    &b.percentile,
                    "not a Linkerd field; retries are budgeted by ratio",
                );
            }
        }
        if let Some(b) = &self.retry_budget {
            notes.unhonoured(
                "spec.retryBudget.percentile",
                &b.percentile,
                "not a Linkerd field; retries are budgeted by ratio",
            );
        }
    }
}

// === SMI TrafficSplit ===

/// `TrafficSplit.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitSpec {
    /// The apex service clients call.
    pub service: String,
    /// Backend services and weights.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Not honoured.
    #[serde(default)]
    pub matches: Unhonoured,
}

/// One backend.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    pub service: String,
    /// Relative weight (a number, or a quantity such as `500m`).
    pub weight: Number,
}

impl TrafficSplitSpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        notes.unhonoured("spec.matches", &self.matches, "split by weight only");
    }
}
