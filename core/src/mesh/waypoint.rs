//! What a waypoint applies (its L7 config), as the controller computes it from the users'
//! policies and streams it: per bound service, the routes (matches, weighted backends, timeout,
//! retries), the backends (endpoints, connection pool limits, outlier detection) and the
//! authorization policies. Validated on receipt; a bad one is refused whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::authz::AuthzPolicy;
use super::gateway::{ListenerCert, host_matches};
use super::outbound::ExternalBackend;
use super::service::ServicePort;
use super::tracing::{COLLECTOR_PROTOCOLS, Tracing};

/// One waypoint's config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointConfig {
    /// Gateway name.
    pub name: String,
    /// Gateway namespace.
    pub namespace: String,
    /// The services whose traffic it carries.
    #[serde(default)]
    pub services: Vec<ServicePolicy>,
    /// Where its spans go, from the users' tracing config (none: no tracing unless the
    /// waypoint's own flags say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// As an ingress gateway: the ports it serves clients outside the mesh on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
}

/// An ingress gateway's port for clients outside the mesh: plain HTTP, or TLS (by SNI, the
/// certificate of the first entry whose host names match) then HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// What it comes from (`Gateway istio-system/bookinfo-gateway`, server 0).
    pub name: String,
    pub port: u16,
    /// By the request's host, the first that matches serves it.
    #[serde(default)]
    pub hosts: Vec<VirtualHost>,
    /// Set: the port speaks TLS with these certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<ListenerCert>,
    /// Every request is answered with a redirect to the same URL over https.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// Only mesh clients are served (in HBONE tunnels addressed to the port): nothing
    /// listens for clients outside the mesh (Istio's `ISTIO_MUTUAL`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh_only: bool,
}

/// The routes one VirtualService bound to a gateway gives the hosts it names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHost {
    /// `*`, `*.example.com` or a host name, as the VirtualService and the Gateway's server
    /// both allow.
    pub hostnames: Vec<String>,
    /// Its routes and backends (named after the VirtualService; `vip` and `ports` unused).
    pub policy: ServicePolicy,
}

impl VirtualHost {
    /// Whether it serves `host` (a request's host, its port removed).
    pub fn serves(&self, host: &str) -> bool {
        self.hostnames.iter().any(|h| host_matches(h, host))
    }
}

/// Everything applied to one service's traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePolicy {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Cluster IP.
    pub vip: IpAddr,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Routes, first match wins. The last is the default (every endpoint).
    pub routes: Vec<Route>,
    /// Backends routes point at (by index).
    pub backends: Vec<Backend>,
    /// Authorization policies (DENY first, then ALLOW).
    #[serde(default)]
    pub authz: Vec<AuthzPolicy>,
}

/// A route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Name (metrics' `route` label): the policy and rule it came from.
    pub name: String,
    /// Any one matching selects the route; none matches everything.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Weighted backends (indexes into [`ServicePolicy::backends`]).
    pub backends: Vec<WeightedBackend>,
    /// Whole-request timeout (retries included), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Edits to the request's headers before it is sent.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    /// Edits to the response's headers before it is returned.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    /// An answer the waypoint gives itself instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Faults injected into a share of requests (testing resilience).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// The request's path and authority rewritten before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// The client is sent elsewhere instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Copies of a share of requests sent to other backends, their answers dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
}

/// Which part of the request's path a rewrite or redirect replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathPart {
    /// The prefix the route matched, or the whole path when it matched on no prefix (Istio's
    /// `rewrite.uri`).
    #[default]
    MatchedPrefix,
    /// The whole path; the query is kept unless the new path has one (Istio's `redirect.uri`,
    /// Gateway API's `ReplaceFullPath`).
    Whole,
    /// This prefix, in whole segments (Gateway API's `ReplacePrefixMatch`).
    Prefix(String),
}

/// A request mirror (Istio's `mirror`/`mirrors`, Gateway API's `RequestMirror`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Index into [`ServicePolicy::backends`].
    pub backend: usize,
    /// The backend's service port to send to (absent: the port the request came in on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The percentage of requests copied.
    pub percent: f64,
}

/// A rewrite (Istio's `rewrite`): the path replaces the prefix the route matched (or the
/// whole path, when the route did not match on a prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What `path` replaces.
    #[serde(default)]
    pub replaces: PathPart,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// A redirect (Istio's `redirect`): what is not given is kept from the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What `path` replaces.
    #[serde(default)]
    pub replaces: PathPart,
    /// 301 by default.
    pub status: u16,
}

/// Fault injection (Istio's `fault`): a share of requests is delayed, a share aborted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Delay added before forwarding, milliseconds, and the percentage of requests delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<(u64, f64)>,
    /// Status answered instead of forwarding, and the percentage of requests aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<(u16, f64)>,
    /// gRPC status answered instead of forwarding (a trailers-only response), and the
    /// percentage of requests aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_grpc: Option<(u32, f64)>,
}

/// Header edits (Istio's `headers.request|response`, Gateway API's header modifiers): `set`
/// replaces, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderEdits {
    /// Headers replaced (or added) with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Values appended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether nothing is edited.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn validate(&self, at: &str) -> Result<(), String> {
        let names = self
            .set
            .keys()
            .chain(self.add.keys())
            .chain(self.remove.iter());
        for name in names {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("{at}: {name:?} is not a header name"));
            }
        }
        for value in self.set.values().chain(self.add.values()) {
            if http::HeaderValue::from_str(value).is_err() {
                return Err(format!("{at}: {value:?} is not a header value"));
            }
        }
        Ok(())
    }
}

/// A response the waypoint makes itself (Istio's `directResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body.
    #[serde(default)]
    pub body: String,
}

/// A weighted backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedBackend {
    /// Index into the service's backends.
    pub backend: usize,
    /// Relative weight.
    pub weight: u32,
}

/// A string condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StrMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// The whole value matches the regular expression.
    Regex(String),
}

/// A header (or query parameter) condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedMatch {
    /// Header name (lower case) or query parameter name.
    pub name: String,
    /// The condition on its value.
    pub value: StrMatch,
    /// The header must be absent (or not match).
    #[serde(default)]
    pub invert: bool,
}

/// One match: all parts must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StrMatch>,
    /// Method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StrMatch>,
    /// Headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NamedMatch>,
    /// Query parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<NamedMatch>,
    /// Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// When to retry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryOn {
    /// Any 5xx, and connect failures and resets.
    #[serde(default)]
    pub server_error: bool,
    /// 502, 503, 504, connect failures.
    #[serde(default)]
    pub gateway_error: bool,
    /// The endpoint could not be reached.
    #[serde(default)]
    pub connect_failure: bool,
    /// The upstream refused the HTTP/2 stream.
    #[serde(default)]
    pub refused_stream: bool,
    /// The upstream reset or closed the connection mid-request.
    #[serde(default)]
    pub reset: bool,
    /// 409.
    #[serde(default)]
    pub retriable_4xx: bool,
    /// These statuses.
    #[serde(default)]
    pub statuses: BTreeSet<u16>,
    /// These gRPC status codes (`grpc-status`).
    #[serde(default)]
    pub grpc: BTreeSet<u32>,
}

/// A retry budget: retries may add at most `ratio` of the original requests (plus
/// `minPerSecond`), over a sliding window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries per original request.
    pub ratio: f64,
    /// Retries always allowed per second.
    pub min_per_second: u32,
    /// The window, milliseconds.
    pub window_ms: u64,
}

impl RetryBudget {
    /// The budget of a retry policy that names none (Linkerd's default): retries add at most
    /// 20% to the requests of the last 10 s, plus 10 per second.
    pub const DEFAULT: Self = Self {
        ratio: 0.2,
        min_per_second: 10,
        window_ms: 10_000,
    };
}

/// A retry policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Conditions.
    pub on: RetryOn,
    /// First backoff, milliseconds (doubling, with jitter).
    pub backoff_base_ms: u64,
    /// Longest backoff, milliseconds.
    pub backoff_max_ms: u64,
    /// Budget (absent: a default of 20% plus 10/s, so retries never multiply load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    /// Largest request body kept for replay; larger requests are not retried.
    pub max_body_bytes: u64,
}

/// Outlier detection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outlier {
    /// Consecutive 5xx before ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504/connect failures before ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway: Option<u32>,
    /// Re-evaluation interval, milliseconds.
    pub interval_ms: u64,
    /// Base ejection time, milliseconds (times the endpoint's ejection count).
    pub base_ejection_ms: u64,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints nothing is ejected, percent.
    pub min_health_percent: u32,
}

/// Connection pool limits (circuit breaking).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolLimits {
    /// Most upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// Most requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Requests per connection before it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Connect timeout, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
}

/// A set of endpoints requests are balanced over.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// `service` or `service/subset`.
    pub name: String,
    /// Namespace of the endpoints.
    pub namespace: String,
    /// Workload names of the endpoints.
    pub endpoints: Vec<String>,
    /// Port on the endpoints, by service port (absent: the same port).
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Pool limits.
    #[serde(default)]
    pub pool: PoolLimits,
    /// Outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
    /// Set: a destination outside the mesh (a ServiceEntry's host), reached directly rather
    /// than over HBONE; `endpoints` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBackend>,
}

impl WaypointConfig {
    /// Checks what the waypoint relies on: backend indexes in range, weights, regexes that
    /// compile. The message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.tracing {
            if !(0.0..=100.0).contains(&t.sampling_percent) {
                return Err(format!(
                    "tracing.samplingPercent: {} is not a percentage",
                    t.sampling_percent
                ));
            }
            let known = t.collector.split_once(':').is_some_and(|(protocol, rest)| {
                COLLECTOR_PROTOCOLS.contains(&protocol)
                    && rest
                        .rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            });
            if !known {
                return Err(format!(
                    "tracing.collector: {:?} is not PROTOCOL:HOST:PORT ({})",
                    t.collector,
                    COLLECTOR_PROTOCOLS.join(", ")
                ));
            }
        }
        let hosts =
            self.listeners.iter().enumerate().flat_map(|(l, listener)| {
                listener.hosts.iter().enumerate().map(move |(h, host)| {
                    (format!("listeners[{l}].hosts[{h}].policy"), &host.policy)
                })
            });
        let services = self
            .services
            .iter()
            .enumerate()
            .map(|(s, service)| (format!("services[{s}]"), service));
        for (at_service, service) in services.chain(hosts) {
            for (b, backend) in service.backends.iter().enumerate() {
                if let Some(e) = &backend.external {
                    let at = format!("{at_service}.backends[{b}].external");
                    let names = e
                        .tls
                        .iter()
                        .flat_map(|t| std::iter::once(&t.sni).chain(&t.subject_alt_names));
                    for name in std::iter::once(&e.host).chain(names) {
                        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                            return Err(format!("{at}: {name:?} is not a host name"));
                        }
                    }
                }
            }
            for (r, route) in service.routes.iter().enumerate() {
                let at = format!("{at_service}.routes[{r}]");
                route
                    .request_headers
                    .validate(&format!("{at}.requestHeaders"))?;
                route
                    .response_headers
                    .validate(&format!("{at}.responseHeaders"))?;
                let paths = route
                    .rewrite
                    .iter()
                    .filter_map(|w| w.path.as_ref())
                    .chain(route.redirect.iter().filter_map(|r| r.path.as_ref()));
                for path in paths {
                    if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                        return Err(format!("{at}: {path:?} is not a path"));
                    }
                }
                if let Some(r) = &route.redirect
                    && !(300..=399).contains(&r.status)
                {
                    return Err(format!(
                        "{at}.redirect.status: {} is not a redirect status",
                        r.status
                    ));
                }
                if let Some((status, _)) = route.fault.as_ref().and_then(|f| f.abort)
                    && !(200..=599).contains(&status)
                {
                    return Err(format!(
                        "{at}.fault.abort: {status} is not a response status"
                    ));
                }
                if let Some(d) = &route.direct_response
                    && !(200..=599).contains(&d.status)
                {
                    return Err(format!(
                        "{at}.directResponse.status: {} is not a response status",
                        d.status
                    ));
                }
                if route.backends.is_empty() {
                    return Err(format!("{at}.backends: a route needs a backend"));
                }
                for (b, wb) in route.backends.iter().enumerate() {
                    if wb.backend >= service.backends.len() {
                        return Err(format!(
                            "{at}.backends[{b}]: backend {} does not exist",
                            wb.backend
                        ));
                    }
                }
                if route.backends.iter().all(|b| b.weight == 0) {
                    return Err(format!("{at}.backends: all weights are 0"));
                }
                for (m, matcher) in route.matches.iter().enumerate() {
                    let regexes = matcher
                        .path
                        .iter()
                        .chain(matcher.method.iter())
                        .chain(matcher.headers.iter().map(|h| &h.value))
                        .chain(matcher.query.iter().map(|q| &q.value));
                    for value in regexes {
                        if let StrMatch::Regex(re) = value {
                            regex::Regex::new(&format!("^(?:{re})$"))
                                .map_err(|e| format!("{at}.matches[{m}]: regex {re:?}: {e}"))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
