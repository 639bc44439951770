//! Translation of the users' policies into what the proxies apply: which services pass a
//! waypoint (`weft.io/use-waypoint`), what each waypoint does for them (routes, retries,
//! timeouts, splits, pools, outlier detection, authorization), and PeerAuthentication modes.
//!
//! Precedence for a service's routes: an HTTPRoute whose parent is the service, else an Istio
//! VirtualService for it, else its ServiceProfile routes, then a default route (split by a
//! TrafficSplit on the service, if any, else every endpoint).

use std::collections::BTreeMap;

use weft_core::config::{MtlsPolicy, ServicePort};
use weft_core::l7::{
    AuthzAction, AuthzPolicy, AuthzRule, AuthzSource, Backend, NamedMatch, Outlier, PoolLimits,
    Retry, RetryBudget, RetryOn, Route, RouteMatch, ServicePolicy, StrMatch, WaypointConfig,
    WeightedBackend,
};

use super::policy::common::ApiDuration;
use super::policy::gateway::WAYPOINT_CLASS;
use super::policy::istio::{self, Action, MtlsMode};
use super::policy::{PolicySpec, linkerd};
use super::{ObjectKey, Objects, Pod, Service};

/// Label on a Service or Namespace naming the waypoint its traffic goes through (`none` on a
/// Service opts it out of its namespace's waypoint).
pub const USE_WAYPOINT: &str = "weft.io/use-waypoint";
/// Label a waypoint's pods carry (as Gateway API implementations label them).
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// Namespaces whose PeerAuthentication and AuthorizationPolicy apply mesh-wide.
pub const ROOT_NAMESPACES: [&str; 2] = ["weft-system", "istio-system"];

/// Default retry budget (Linkerd's): retries add at most 20% to the requests, plus 10/s.
const DEFAULT_BUDGET: RetryBudget = RetryBudget {
    ratio: 0.2,
    min_per_second: 10,
    window_ms: 10_000,
};
/// Budget of retries configured by count (Istio, Gateway API): generous enough that a
/// backend failing a third of requests is fully retried, yet an outage at most adds half.
const COUNTED_BUDGET: RetryBudget = RetryBudget {
    ratio: 0.5,
    min_per_second: 10,
    window_ms: 10_000,
};
/// Largest request body kept for replay.
const REPLAY_CAP: u64 = 64 * 1024;

/// A waypoint that runs: its Gateway and its pod.
pub struct RunningWaypoint<'a> {
    /// `namespace/name` of the Gateway.
    pub key: ObjectKey,
    /// Its pod.
    pub pod: &'a Pod,
}

/// Waypoints whose Gateway (class `weft-waypoint`) exists and whose pod has an IP.
pub fn running_waypoints(objects: &Objects) -> Vec<RunningWaypoint<'_>> {
    let mut out = Vec::new();
    for policy in objects.policies.values() {
        let PolicySpec::Gateway(gw) = &policy.spec else {
            continue;
        };
        if gw.gateway_class_name != WAYPOINT_CLASS {
            continue;
        }
        let pod = objects.pods.values().find(|p| {
            p.namespace == policy.key.namespace
                && p.labels.get(GATEWAY_NAME) == Some(&policy.key.name)
                && p.ip.is_some()
        });
        if let Some(pod) = pod {
            out.push(RunningWaypoint {
                key: policy.key.clone(),
                pod,
            });
        }
    }
    out
}

/// Whether `pod` is a waypoint's (never captured: it speaks HBONE itself).
pub fn is_waypoint_pod(pod: &Pod) -> bool {
    pod.labels.contains_key(GATEWAY_NAME)
}

/// The waypoint (`namespace/name`) a service is bound to, if any.
pub fn waypoint_of(objects: &Objects, svc: &Service) -> Option<ObjectKey> {
    let name = match svc.labels.get(USE_WAYPOINT) {
        Some(name) => name,
        None => objects
            .namespaces
            .get(&svc.namespace)
            .and_then(|ns| ns.labels.get(USE_WAYPOINT))?,
    };
    if name == "none" || name.is_empty() {
        return None;
    }
    Some(ObjectKey::new(&svc.namespace, name))
}

/// Pods a service selects.
pub fn selected<'a>(objects: &'a Objects, svc: &'a Service) -> impl Iterator<Item = &'a Pod> {
    objects.pods.values().filter(move |p| {
        p.namespace == svc.namespace
            && p.ip.is_some()
            && !svc.selector.is_empty()
            && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
    })
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `host` (as written in a policy in `policy_ns`) names `svc`.
fn host_is(host: &str, policy_ns: &str, svc: &Service) -> bool {
    let host = host.trim_end_matches('.');
    let mut parts = host.splitn(3, '.');
    let name = parts.next().unwrap_or("");
    let ns = parts.next().unwrap_or(policy_ns);
    let rest = parts.next().unwrap_or("svc");
    name == svc.name && ns == svc.namespace && rest.starts_with("svc")
}

/// The service a host names, looked up in `policy_ns`.
fn service_for<'a>(objects: &'a Objects, host: &str, policy_ns: &str) -> Option<&'a Service> {
    objects
        .services
        .values()
        .find(|s| host_is(host, policy_ns, s))
}

fn ms(d: Option<ApiDuration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX))
}

/// Builds backends on demand, one per (service, subset).
struct Backends<'a> {
    objects: &'a Objects,
    list: Vec<Backend>,
    index: BTreeMap<String, usize>,
}

impl<'a> Backends<'a> {
    fn get(&mut self, svc: &Service, subset: Option<&str>) -> usize {
        let name = match subset {
            Some(subset) => format!("{}.{}/{subset}", svc.name, svc.namespace),
            None => format!("{}.{}", svc.name, svc.namespace),
        };
        if let Some(i) = self.index.get(&name) {
            return *i;
        }
        let rule = destination_rule(self.objects, svc);
        let subset_spec =
            subset.and_then(|s| rule.and_then(|r| r.subsets.iter().find(|x| x.name == s)));
        let labels = subset_spec.map(|s| s.labels.clone()).unwrap_or_default();
        let endpoints: Vec<String> = selected(self.objects, svc)
            .filter(|p| labels_match(&labels, &p.labels))
            .map(|p| p.name.clone())
            .collect();
        let policy = subset_spec
            .and_then(|s| s.traffic_policy.as_ref())
            .or_else(|| rule.and_then(|r| r.traffic_policy.as_ref()));
        let mut backend = Backend {
            name: name.clone(),
            namespace: svc.namespace.clone(),
            endpoints,
            ports: svc
                .ports
                .iter()
                .filter_map(|p| match &p.target_port {
                    super::TargetPort::Number(n) => Some(ServicePort {
                        port: p.port,
                        target_port: *n,
                    }),
                    super::TargetPort::Name(n) => selected(self.objects, svc)
                        .find_map(|m| m.ports.iter().find(|cp| cp.name.as_deref() == Some(n)))
                        .map(|cp| ServicePort {
                            port: p.port,
                            target_port: cp.container_port,
                        }),
                })
                .collect(),
            pool: PoolLimits::default(),
            outlier: None,
        };
        if let Some(policy) = policy {
            apply_traffic_policy(&mut backend, policy);
        }
        if let Some(profile) = service_profile(self.objects, svc) {
            let breakers = profile.circuit_breakers.as_ref().or_else(|| {
                profile
                    .routes
                    .iter()
                    .find_map(|r| r.circuit_breakers.as_ref())
            });
            if let Some(cb) = breakers {
                backend.pool.max_pending = cb.max_pending_requests.or(backend.pool.max_pending);
                if cb.consecutive_errors.is_some() {
                    backend.outlier = Some(Outlier {
                        consecutive_5xx: cb.consecutive_errors,
                        consecutive_gateway: None,
                        interval_ms: ms(cb.interval).unwrap_or(10_000),
                        base_ejection_ms: ms(cb.tripping_timeout).unwrap_or(30_000),
                        max_ejection_percent: 100,
                        min_health_percent: 0,
                    });
                }
            }
        }
        let i = self.list.len();
        self.list.push(backend);
        self.index.insert(name, i);
        i
    }
}

fn apply_traffic_policy(backend: &mut Backend, policy: &istio::TrafficPolicy) {
    if let Some(pool) = &policy.connection_pool {
        if let Some(tcp) = &pool.tcp {
            backend.pool.max_connections = tcp.max_connections;
            backend.pool.connect_timeout_ms = ms(tcp.connect_timeout);
        }
        if let Some(http) = &pool.http {
            backend.pool.max_pending = http.http1_max_pending_requests;
            backend.pool.max_requests = http.http2_max_requests;
            backend.pool.max_requests_per_connection = http.max_requests_per_connection;
        }
    }
    if let Some(o) = &policy.outlier_detection {
        // Istio's defaults: 5 consecutive 5xx, 10 s interval, 30 s base ejection, 10%.
        let consecutive_5xx = o.consecutive_5xx_errors.or(o.consecutive_errors);
        let consecutive_gateway = o
            .consecutive_gateway_errors
            .or(o.consecutive_local_origin_failures);
        backend.outlier = Some(Outlier {
            consecutive_5xx: if consecutive_5xx.is_none() && consecutive_gateway.is_none() {
                Some(5)
            } else {
                consecutive_5xx.filter(|n| *n > 0)
            },
            consecutive_gateway: consecutive_gateway.filter(|n| *n > 0),
            interval_ms: ms(o.interval).unwrap_or(10_000),
            base_ejection_ms: ms(o.base_ejection_time).unwrap_or(30_000),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10),
            min_health_percent: o.min_health_percent.unwrap_or(0),
        });
    }
}

fn destination_rule<'a>(
    objects: &'a Objects,
    svc: &Service,
) -> Option<&'a istio::DestinationRuleSpec> {
    objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::DestinationRule(dr) if host_is(&dr.host, &p.key.namespace, svc) => Some(&**dr),
        _ => None,
    })
}

fn service_profile<'a>(
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

fn str_match(m: &istio::StringMatch) -> Option<StrMatch> {
    if let Some(v) = &m.exact {
        return Some(StrMatch::Exact(v.clone()));
    }
    if let Some(v) = &m.prefix {
        return Some(StrMatch::Prefix(v.clone()));
    }
    m.regex.as_ref().map(|v| StrMatch::Regex(v.clone()))
}

/// Istio's `retryOn`.
fn retry_on(conditions: &[String]) -> RetryOn {
    let mut on = RetryOn::default();
    for c in conditions {
        match c.trim() {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "reset" => on.reset = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => {}
            "cancelled" => {
                on.grpc.insert(1);
            }
            "deadline-exceeded" => {
                on.grpc.insert(4);
            }
            "resource-exhausted" => {
                on.grpc.insert(8);
            }
            "internal" => {
                on.grpc.insert(13);
            }
            "unavailable" => {
                on.grpc.insert(14);
            }
            other => {
                if let Ok(code) = other.parse::<u16>() {
                    on.statuses.insert(code);
                }
            }
        }
    }
    on
}

/// Istio's default when a route has no `retries`: two retries on connection failures.
fn default_retry() -> Retry {
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
        budget: Some(DEFAULT_BUDGET),
        max_body_bytes: REPLAY_CAP,
    }
}

fn istio_retry(r: &istio::HttpRetry) -> Option<Retry> {
    if r.attempts == 0 {
        return None;
    }
    let conditions = r.retry_on.as_ref().map(|l| l.0.clone()).unwrap_or_else(|| {
        [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "503",
        ]
        .map(String::from)
        .to_vec()
    });
    let base = ms(r.backoff).unwrap_or(25);
    Some(Retry {
        attempts: r.attempts,
        per_try_timeout_ms: ms(r.per_try_timeout),
        on: retry_on(&conditions),
        backoff_base_ms: base,
        backoff_max_ms: base.saturating_mul(10),
        budget: Some(COUNTED_BUDGET),
        max_body_bytes: REPLAY_CAP,
    })
}

fn virtual_service_routes(
    objects: &Objects,
    backends: &mut Backends<'_>,
    svc: &Service,
) -> Option<Vec<Route>> {
    let (key, vs) = objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::VirtualService(vs)
            if vs.hosts.iter().any(|h| host_is(h, &p.key.namespace, svc)) =>
        {
            Some((&p.key, &**vs))
        }
        _ => None,
    })?;
    let mut routes = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let matches = http
            .matches
            .iter()
            .map(|m| RouteMatch {
                path: m.uri.as_ref().and_then(str_match),
                method: m.method.as_ref().and_then(str_match),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(name, v)| {
                        Some(NamedMatch {
                            name: name.to_ascii_lowercase(),
                            value: str_match(v)?,
                            invert: false,
                        })
                    })
                    .chain(m.without_headers.iter().map(|(name, v)| NamedMatch {
                        name: name.to_ascii_lowercase(),
                        value: str_match(v).unwrap_or(StrMatch::Prefix(String::new())),
                        invert: true,
                    }))
                    .collect(),
                query: m
                    .query_params
                    .iter()
                    .filter_map(|(name, v)| {
                        Some(NamedMatch {
                            name: name.clone(),
                            value: str_match(v)?,
                            invert: false,
                        })
                    })
                    .collect(),
                port: m.port,
            })
            .collect();
        let single = http.route.len() == 1;
        let mut weighted = Vec::new();
        for d in &http.route {
            let Some(target) = service_for(objects, &d.destination.host, &key.namespace) else {
                continue;
            };
            weighted.push(WeightedBackend {
                backend: backends.get(target, d.destination.subset.as_deref()),
                weight: d.weight.unwrap_or(if single { 100 } else { 0 }),
            });
        }
        if weighted.iter().all(|w| w.weight == 0) {
            for w in &mut weighted {
                w.weight = 1;
            }
        }
        if weighted.is_empty() {
            continue;
        }
        routes.push(Route {
            name: format!("{}.{}.{i}", key.name, key.namespace),
            matches,
            backends: weighted,
            timeout_ms: ms(http.timeout),
            retry: match &http.retries {
                Some(r) => istio_retry(r),
                None => Some(default_retry()),
            },
        });
    }
    Some(routes)
}

fn http_route_routes(
    objects: &Objects,
    backends: &mut Backends<'_>,
    svc: &Service,
) -> Option<Vec<Route>> {
    let (key, route) = objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::HttpRoute(r)
            if r.service_parents().any(|parent| {
                parent.name == svc.name
                    && parent.namespace.as_deref().unwrap_or(&p.key.namespace) == svc.namespace
            }) =>
        {
            Some((&p.key, &**r))
        }
        _ => None,
    })?;
    let value_match = |kind: Option<&str>, value: &str| match kind {
        Some("RegularExpression") => StrMatch::Regex(value.to_owned()),
        _ => StrMatch::Exact(value.to_owned()),
    };
    let mut routes = Vec::new();
    for (i, rule) in route.rules.iter().enumerate() {
        let matches = rule
            .matches
            .iter()
            .map(|m| RouteMatch {
                path: m.path.as_ref().map(|p| {
                    let value = p.value.clone().unwrap_or_else(|| "/".into());
                    match p.kind.as_deref() {
                        Some("Exact") => StrMatch::Exact(value),
                        Some("RegularExpression") => StrMatch::Regex(value),
                        // PathPrefix matches whole segments.
                        _ if value == "/" => StrMatch::Prefix(value),
                        _ => StrMatch::Regex(format!(
                            "{}(/.*)?",
                            regex_escape(value.trim_end_matches('/'))
                        )),
                    }
                }),
                method: m.method.clone().map(StrMatch::Exact),
                headers: m
                    .headers
                    .iter()
                    .map(|h| NamedMatch {
                        name: h.name.to_ascii_lowercase(),
                        value: value_match(h.kind.as_deref(), &h.value),
                        invert: false,
                    })
                    .collect(),
                query: m
                    .query_params
                    .iter()
                    .map(|q| NamedMatch {
                        name: q.name.clone(),
                        value: value_match(q.kind.as_deref(), &q.value),
                        invert: false,
                    })
                    .collect(),
                port: None,
            })
            .collect();
        let mut weighted = Vec::new();
        for b in &rule.backend_refs {
            let ns = b.namespace.as_deref().unwrap_or(&key.namespace);
            let Some(target) = objects.services.get(&ObjectKey::new(ns, &b.name)) else {
                continue;
            };
            weighted.push(WeightedBackend {
                backend: backends.get(target, None),
                weight: b.weight.unwrap_or(1),
            });
        }
        if weighted.is_empty() {
            weighted.push(WeightedBackend {
                backend: backends.get(svc, None),
                weight: 1,
            });
        }
        let retry = match &rule.retry {
            Some(r) if r.attempts.unwrap_or(1) > 0 => {
                let base = ms(r.backoff).unwrap_or(25);
                Some(Retry {
                    attempts: r.attempts.unwrap_or(1),
                    per_try_timeout_ms: rule.timeouts.as_ref().and_then(|t| ms(t.backend_request)),
                    on: RetryOn {
                        statuses: if r.codes.is_empty() {
                            [500, 502, 503, 504].into()
                        } else {
                            r.codes.iter().copied().collect()
                        },
                        connect_failure: true,
                        ..RetryOn::default()
                    },
                    backoff_base_ms: base,
                    backoff_max_ms: base.saturating_mul(10),
                    budget: Some(COUNTED_BUDGET),
                    max_body_bytes: REPLAY_CAP,
                })
            }
            _ => Some(default_retry()),
        };
        routes.push(Route {
            name: format!("{}.{}.{i}", key.name, key.namespace),
            matches,
            backends: weighted,
            timeout_ms: rule.timeouts.as_ref().and_then(|t| ms(t.request)),
            retry,
        });
    }
    Some(routes)
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
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

fn profile_routes(objects: &Objects, svc: &Service, default: &[WeightedBackend]) -> Vec<Route> {
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
                    budget: Some(budget.map_or(DEFAULT_BUDGET, |b| {
                        RetryBudget {
                            ratio: b.retry_ratio.unwrap_or(DEFAULT_BUDGET.ratio),
                            min_per_second: b
                                .min_retries_per_second
                                .unwrap_or(DEFAULT_BUDGET.min_per_second),
                            window_ms: ms(b.ttl).unwrap_or(DEFAULT_BUDGET.window_ms),
                        }
                    })),
                    max_body_bytes: REPLAY_CAP,
                }),
            }
        })
        .collect()
}

/// The default route's split: a TrafficSplit whose apex is the service, else the service.
fn default_backends(
    objects: &Objects,
    backends: &mut Backends<'_>,
    svc: &Service,
) -> Vec<WeightedBackend> {
    let split = objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::TrafficSplit(ts) if host_is(&ts.service, &p.key.namespace, svc) => {
            Some((&p.key, &**ts))
        }
        _ => None,
    });
    if let Some((key, ts)) = split {
        let weighted: Vec<WeightedBackend> = ts
            .backends
            .iter()
            .filter_map(|b| {
                let target = service_for(objects, &b.service, &key.namespace)?;
                Some(WeightedBackend {
                    backend: backends.get(target, None),
                    weight: (b.weight.0.max(0.0) * 1000.0).round() as u32,
                })
            })
            .collect();
        if weighted.iter().any(|w| w.weight > 0) {
            return weighted;
        }
    }
    vec![WeightedBackend {
        backend: backends.get(svc, None),
        weight: 1,
    }]
}

fn authz_for(objects: &Objects, svc: &Service, waypoint: &ObjectKey) -> Vec<AuthzPolicy> {
    let members: Vec<&Pod> = selected(objects, svc).collect();
    let mut out = Vec::new();
    for p in objects.policies.values() {
        let PolicySpec::AuthorizationPolicy(ap) = &p.spec else {
            continue;
        };
        let action = match ap.action {
            Action::Allow => AuthzAction::Allow,
            Action::Deny => AuthzAction::Deny,
            Action::Audit | Action::Custom => continue,
        };
        let root = ROOT_NAMESPACES.contains(&p.key.namespace.as_str());
        let targets: Vec<&super::policy::common::TargetRef> =
            ap.target_ref.iter().chain(ap.target_refs.iter()).collect();
        let applies = if !targets.is_empty() {
            targets.iter().any(|t| {
                let ns = t.namespace.as_deref().unwrap_or(&p.key.namespace);
                (t.kind == "Service" && t.name == svc.name && ns == svc.namespace)
                    || (t.kind == "Gateway" && t.name == waypoint.name && ns == waypoint.namespace)
            })
        } else if p.key.namespace == svc.namespace || root {
            match &ap.selector {
                None => true,
                Some(sel) => members
                    .iter()
                    .any(|m| labels_match(&sel.match_labels, &m.labels)),
            }
        } else {
            false
        };
        if !applies {
            continue;
        }
        out.push(to_authz(&p.key, action, ap));
    }
    out
}

/// An AuthorizationPolicy as proxies apply it.
fn to_authz(
    key: &ObjectKey,
    action: AuthzAction,
    ap: &istio::AuthorizationPolicySpec,
) -> AuthzPolicy {
    AuthzPolicy {
        name: key.to_string(),
        action,
        rules: ap
            .rules
            .iter()
            .flatten()
            .map(|r| AuthzRule {
                from: r
                    .from
                    .iter()
                    .map(|f| AuthzSource {
                        principals: f.source.principals.clone(),
                        not_principals: f.source.not_principals.clone(),
                        namespaces: f.source.namespaces.clone(),
                        not_namespaces: f.source.not_namespaces.clone(),
                        ip_blocks: f.source.ip_blocks.clone(),
                        not_ip_blocks: f.source.not_ip_blocks.clone(),
                    })
                    .collect(),
                to: r.to.iter().map(|t| t.operation.clone()).collect(),
                when: r.when.clone(),
            })
            .collect(),
    }
}

/// The AuthorizationPolicies a node proxy enforces on connections to `pod`: those selecting it
/// (or its whole namespace, or the mesh from the root namespace) that are not attached to a
/// Service or Gateway with `targetRefs`.
pub fn workload_authz(objects: &Objects, pod: &Pod) -> Vec<AuthzPolicy> {
    let mut out = Vec::new();
    for p in objects.policies.values() {
        let PolicySpec::AuthorizationPolicy(ap) = &p.spec else {
            continue;
        };
        if ap.target_ref.is_some() || !ap.target_refs.is_empty() {
            continue;
        }
        let action = match ap.action {
            Action::Allow => AuthzAction::Allow,
            Action::Deny => AuthzAction::Deny,
            Action::Audit | Action::Custom => continue,
        };
        let in_scope =
            p.key.namespace == pod.namespace || ROOT_NAMESPACES.contains(&p.key.namespace.as_str());
        let selected = ap
            .selector
            .as_ref()
            .is_none_or(|sel| labels_match(&sel.match_labels, &pod.labels));
        if in_scope && selected {
            out.push(to_authz(&p.key, action, ap));
        }
    }
    out
}

/// What `waypoint` applies to each service bound to it.
pub fn waypoint_config(objects: &Objects, waypoint: &ObjectKey) -> WaypointConfig {
    let mut services = Vec::new();
    for svc in objects.services.values() {
        if waypoint_of(objects, svc).as_ref() != Some(waypoint) {
            continue;
        }
        let Some(vip) = svc.cluster_ip else { continue };
        let mut backends = Backends {
            objects,
            list: Vec::new(),
            index: BTreeMap::new(),
        };
        let explicit = http_route_routes(objects, &mut backends, svc)
            .or_else(|| virtual_service_routes(objects, &mut backends, svc));
        let routes = match explicit {
            Some(routes) => routes,
            None => {
                let default = default_backends(objects, &mut backends, svc);
                let mut routes = profile_routes(objects, svc, &default);
                routes.push(Route {
                    name: "default".into(),
                    matches: Vec::new(),
                    backends: default,
                    timeout_ms: None,
                    retry: Some(default_retry()),
                });
                routes
            }
        };
        // A rule whose backends all weigh 0 sends nothing anywhere: leave it out rather than
        // hand the proxies a route they would refuse (with the whole update).
        let mut routes = routes;
        routes.retain(|r| r.backends.iter().any(|b| b.weight > 0));
        let this = backends.get(svc, None);
        let ports = backends.list[this].ports.clone();
        services.push(ServicePolicy {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            vip,
            ports,
            routes,
            authz: authz_for(objects, svc, waypoint),
            backends: backends.list,
        });
    }
    WaypointConfig {
        name: waypoint.name.clone(),
        namespace: waypoint.namespace.clone(),
        services,
    }
}

/// The PeerAuthentication that decides for `pod`: one selecting it in its namespace, else its
/// namespace's, else the mesh's (root namespace). Among equals, the first by name.
pub fn peer_authentication(objects: &Objects, pod: &Pod) -> (MtlsMode, MtlsPolicy) {
    let mut workload = None;
    let mut namespace = None;
    let mut mesh = None;
    for p in objects.policies.values() {
        let PolicySpec::PeerAuthentication(pa) = &p.spec else {
            continue;
        };
        if p.key.namespace == pod.namespace {
            match &pa.selector {
                Some(sel) if labels_match(&sel.match_labels, &pod.labels) => {
                    workload = workload.or(Some(&**pa));
                }
                Some(_) => {}
                None => namespace = namespace.or(Some(&**pa)),
            }
        } else if ROOT_NAMESPACES.contains(&p.key.namespace.as_str()) && pa.selector.is_none() {
            mesh = mesh.or(Some(&**pa));
        }
    }
    let mode_of = |pa: Option<&istio::PeerAuthenticationSpec>| {
        pa.and_then(|p| p.mtls.as_ref())
            .map(|m| m.mode)
            .filter(|m| *m != MtlsMode::Unset)
    };
    let mode = mode_of(workload)
        .or_else(|| mode_of(namespace))
        .or_else(|| mode_of(mesh))
        .unwrap_or(MtlsMode::Strict);
    let permissive = mode == MtlsMode::Permissive;
    let except_ports = workload
        .map(|pa| {
            pa.port_level_mtls
                .iter()
                .filter(|(_, m)| {
                    let plaintext = matches!(m.mode, MtlsMode::Permissive | MtlsMode::Disable);
                    m.mode != MtlsMode::Unset && plaintext != permissive
                })
                .map(|(port, _)| *port)
                .collect()
        })
        .unwrap_or_default();
    (
        mode,
        MtlsPolicy {
            permissive,
            except_ports,
        },
    )
}
