//! The waypoint config as protobuf messages, and back (its authorization policies: `authz`).
//! Reading a message checks what the types cannot say (addresses parse, ports fit, indices point at a
//! backend); the mesh config's own validation then judges the whole.

use super::authz::authz_from;
use super::backend::{backend_from, backend_to};
use super::field::{FieldError, Result, each, ip, port, ports_from, ports_to};
use super::v1;
use crate::mesh::{
    DirectResponse, Fault, HeaderEdits, Listener, ListenerCert, Mirror, NamedMatch, PathPart,
    Redirect, Retry, RetryBudget, RetryOn, Rewrite, Route, RouteMatch, ServicePolicy, StrMatch,
    Tracing, VirtualHost, WaypointConfig, WeightedBackend,
};

fn str_match_to(m: &StrMatch) -> v1::StrMatch {
    use v1::str_match::Kind;
    v1::StrMatch {
        kind: Some(match m {
            StrMatch::Exact(v) => Kind::Exact(v.clone()),
            StrMatch::Prefix(v) => Kind::Prefix(v.clone()),
            StrMatch::Regex(v) => Kind::Regex(v.clone()),
        }),
    }
}

fn str_match_from(m: &v1::StrMatch) -> Result<StrMatch> {
    use v1::str_match::Kind;
    match &m.kind {
        Some(Kind::Exact(v)) => Ok(StrMatch::Exact(v.clone())),
        Some(Kind::Prefix(v)) => Ok(StrMatch::Prefix(v.clone())),
        Some(Kind::Regex(v)) => Ok(StrMatch::Regex(v.clone())),
        // A condition this proxy cannot read would match more or less than asked: refuse.
        None => Err(FieldError::new("kind", "a string match with no kind")),
    }
}

fn named_to(m: &NamedMatch) -> v1::NamedMatch {
    v1::NamedMatch {
        name: m.name.clone(),
        value: Some(str_match_to(&m.value)),
        invert: m.invert,
    }
}

fn named_from(m: &v1::NamedMatch) -> Result<NamedMatch> {
    let value = m
        .value
        .as_ref()
        .ok_or_else(|| FieldError::new("value", "missing"))?;
    Ok(NamedMatch {
        name: m.name.clone(),
        value: str_match_from(value).map_err(|e| e.under("value"))?,
        invert: m.invert,
    })
}

fn retry_to(r: &Retry) -> v1::Retry {
    v1::Retry {
        attempts: r.attempts,
        per_try_timeout_ms: r.per_try_timeout_ms,
        on: Some(v1::RetryOn {
            server_error: r.on.server_error,
            gateway_error: r.on.gateway_error,
            connect_failure: r.on.connect_failure,
            refused_stream: r.on.refused_stream,
            reset: r.on.reset,
            retriable_4xx: r.on.retriable_4xx,
            statuses: r.on.statuses.iter().map(|s| u32::from(*s)).collect(),
            grpc: r.on.grpc.iter().copied().collect(),
        }),
        backoff_base_ms: r.backoff_base_ms,
        backoff_max_ms: r.backoff_max_ms,
        budget: r.budget.as_ref().map(|b| v1::RetryBudget {
            ratio: b.ratio,
            min_per_second: b.min_per_second,
            window_ms: b.window_ms,
        }),
        max_body_bytes: r.max_body_bytes,
    }
}

fn retry_from(r: &v1::Retry) -> Result<Retry> {
    let on = r.on.clone().unwrap_or_default();
    Ok(Retry {
        attempts: r.attempts,
        per_try_timeout_ms: r.per_try_timeout_ms,
        on: RetryOn {
            server_error: on.server_error,
            gateway_error: on.gateway_error,
            connect_failure: on.connect_failure,
            refused_stream: on.refused_stream,
            reset: on.reset,
            retriable_4xx: on.retriable_4xx,
            statuses: on
                .statuses
                .iter()
                .map(|s| {
                    u16::try_from(*s)
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| {
                            FieldError::new("on.statuses", format!("{s} is not an HTTP status"))
                        })
                })
                .collect::<Result<_>>()?,
            grpc: on.grpc.iter().copied().collect(),
        },
        backoff_base_ms: r.backoff_base_ms,
        backoff_max_ms: r.backoff_max_ms,
        budget: r.budget.as_ref().map(|b| RetryBudget {
            ratio: b.ratio,
            min_per_second: b.min_per_second,
            window_ms: b.window_ms,
        }),
        max_body_bytes: r.max_body_bytes,
    })
}

fn route_to(r: &Route) -> v1::Route {
    v1::Route {
        name: r.name.clone(),
        matches: r
            .matches
            .iter()
            .map(|m| v1::RouteMatch {
                path: m.path.as_ref().map(str_match_to),
                method: m.method.as_ref().map(str_match_to),
                headers: m.headers.iter().map(named_to).collect(),
                query: m.query.iter().map(named_to).collect(),
                port: m.port.map(u32::from),
            })
            .collect(),
        backends: r
            .backends
            .iter()
            .map(|b| v1::WeightedBackend {
                backend: u32::try_from(b.backend).unwrap_or(u32::MAX),
                weight: b.weight,
            })
            .collect(),
        timeout_ms: r.timeout_ms,
        retry: r.retry.as_ref().map(retry_to),
        request_headers: edits_to(&r.request_headers),
        response_headers: edits_to(&r.response_headers),
        direct_response: r.direct_response.as_ref().map(|d| v1::DirectResponse {
            status: u32::from(d.status),
            body: d.body.clone(),
        }),
        rewrite: r.rewrite.as_ref().map(|w| v1::Rewrite {
            path: w.path.clone(),
            authority: w.authority.clone(),
            replaces: Some(path_part_to(&w.replaces)),
        }),
        redirect: r.redirect.as_ref().map(|d| v1::Redirect {
            scheme: d.scheme.clone(),
            authority: d.authority.clone(),
            port: d.port.map(u32::from),
            path: d.path.clone(),
            status: u32::from(d.status),
            replaces: Some(path_part_to(&d.replaces)),
        }),
        mirrors: r
            .mirrors
            .iter()
            .map(|m| v1::Mirror {
                backend: u32::try_from(m.backend).unwrap_or(u32::MAX),
                port: m.port.map(u32::from),
                percent: m.percent,
            })
            .collect(),
        fault: r.fault.as_ref().map(|f| v1::Fault {
            delay_ms: f.delay.map(|(ms, _)| ms),
            delay_percent: f.delay.map_or(0.0, |(_, p)| p),
            abort_status: f.abort.map(|(s, _)| u32::from(s)),
            abort_percent: f
                .abort
                .map(|(_, p)| p)
                .or(f.abort_grpc.map(|(_, p)| p))
                .unwrap_or(0.0),
            abort_grpc_status: f.abort_grpc.map(|(code, _)| code),
        }),
    }
}

fn edits_to(e: &HeaderEdits) -> Option<v1::HeaderEdits> {
    (!e.is_empty()).then(|| v1::HeaderEdits {
        set: e.set.clone().into_iter().collect(),
        add: e.add.clone().into_iter().collect(),
        remove: e.remove.clone(),
    })
}

fn edits_from(e: Option<&v1::HeaderEdits>) -> HeaderEdits {
    e.map(|e| HeaderEdits {
        set: e.set.clone().into_iter().collect(),
        add: e.add.clone().into_iter().collect(),
        remove: e.remove.clone(),
    })
    .unwrap_or_default()
}

fn route_from(r: &v1::Route) -> Result<Route> {
    Ok(Route {
        name: r.name.clone(),
        matches: each("matches", &r.matches, |m| {
            Ok(RouteMatch {
                path: m
                    .path
                    .as_ref()
                    .map(str_match_from)
                    .transpose()
                    .map_err(|e| e.under("path"))?,
                method: m
                    .method
                    .as_ref()
                    .map(str_match_from)
                    .transpose()
                    .map_err(|e| e.under("method"))?,
                headers: each("headers", &m.headers, named_from)?,
                query: each("query", &m.query, named_from)?,
                port: m.port.map(|p| port("port", p)).transpose()?,
            })
        })?,
        backends: r
            .backends
            .iter()
            .map(|b| WeightedBackend {
                backend: b.backend as usize,
                weight: b.weight,
            })
            .collect(),
        timeout_ms: r.timeout_ms,
        retry: r
            .retry
            .as_ref()
            .map(retry_from)
            .transpose()
            .map_err(|e| e.under("retry"))?,
        request_headers: edits_from(r.request_headers.as_ref()),
        response_headers: edits_from(r.response_headers.as_ref()),
        direct_response: r
            .direct_response
            .as_ref()
            .map(|d| {
                Ok(DirectResponse {
                    status: u16::try_from(d.status).map_err(|_| {
                        FieldError::new(
                            "directResponse.status",
                            format!("{} is not a status", d.status),
                        )
                    })?,
                    body: d.body.clone(),
                })
            })
            .transpose()?,
        rewrite: r.rewrite.as_ref().map(|w| Rewrite {
            path: w.path.clone(),
            authority: w.authority.clone(),
            replaces: path_part_from(w.replaces.as_ref()),
        }),
        redirect: r
            .redirect
            .as_ref()
            .map(|d| {
                Ok(Redirect {
                    scheme: d.scheme.clone(),
                    authority: d.authority.clone(),
                    port: d.port.map(|p| port("redirect.port", p)).transpose()?,
                    path: d.path.clone(),
                    replaces: path_part_from(d.replaces.as_ref()),
                    status: u16::try_from(d.status).map_err(|_| {
                        FieldError::new("redirect.status", format!("{} is not a status", d.status))
                    })?,
                })
            })
            .transpose()?,
        fault: r
            .fault
            .as_ref()
            .map(|f| {
                Ok(Fault {
                    delay: f.delay_ms.map(|ms| (ms, f.delay_percent)),
                    abort: f
                        .abort_status
                        .map(|s| {
                            u16::try_from(s).map(|s| (s, f.abort_percent)).map_err(|_| {
                                FieldError::new("fault.abortStatus", format!("{s} is not a status"))
                            })
                        })
                        .transpose()?,
                    abort_grpc: f
                        .abort_grpc_status
                        .map(|code| {
                            if code > 16 {
                                return Err(FieldError::new(
                                    "fault.abortGrpcStatus",
                                    format!("{code} is not a gRPC status code"),
                                ));
                            }
                            Ok((code, f.abort_percent))
                        })
                        .transpose()?,
                })
            })
            .transpose()?,
        mirrors: each("mirrors", &r.mirrors, |m| {
            if !(0.0..=100.0).contains(&m.percent) {
                return Err(FieldError::new(
                    "percent",
                    format!("{} is not a percentage", m.percent),
                ));
            }
            Ok(Mirror {
                backend: m.backend as usize,
                port: m.port.map(|p| port("port", p)).transpose()?,
                percent: m.percent,
            })
        })?,
    })
}

fn path_part_to(p: &PathPart) -> v1::PathPart {
    use v1::path_part::Kind;
    v1::PathPart {
        kind: Some(match p {
            PathPart::MatchedPrefix => Kind::MatchedPrefix(true),
            PathPart::Whole => Kind::Whole(true),
            PathPart::Prefix(prefix) => Kind::Prefix(prefix.clone()),
        }),
    }
}

fn path_part_from(p: Option<&v1::PathPart>) -> PathPart {
    use v1::path_part::Kind;
    match p.and_then(|p| p.kind.as_ref()) {
        Some(Kind::Whole(_)) => PathPart::Whole,
        Some(Kind::Prefix(prefix)) => PathPart::Prefix(prefix.clone()),
        Some(Kind::MatchedPrefix(_)) | None => PathPart::MatchedPrefix,
    }
}

impl From<&WaypointConfig> for v1::WaypointConfig {
    fn from(w: &WaypointConfig) -> Self {
        Self {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            services: w.services.iter().map(policy_to).collect(),
            listeners: w
                .listeners
                .iter()
                .map(|l| v1::Listener {
                    name: l.name.clone(),
                    port: u32::from(l.port),
                    certificates: l
                        .certificates
                        .iter()
                        .map(|c| v1::ListenerCert {
                            hostnames: c.hostnames.clone(),
                            credential: c.credential.clone(),
                        })
                        .collect(),
                    https_redirect: l.https_redirect,
                    mesh_only: l.mesh_only,
                    hosts: l
                        .hosts
                        .iter()
                        .map(|h| v1::VirtualHost {
                            hostnames: h.hostnames.clone(),
                            policy: Some(policy_to(&h.policy)),
                        })
                        .collect(),
                })
                .collect(),
            tracing: w.tracing.as_ref().map(|t| v1::Tracing {
                collector: t.collector.clone(),
                sampling_percent: t.sampling_percent,
                source: t.source.clone(),
            }),
        }
    }
}

fn policy_to(s: &ServicePolicy) -> v1::ServicePolicy {
    v1::ServicePolicy {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        vip: s.vip.to_string(),
        ports: ports_to(&s.ports),
        routes: s.routes.iter().map(route_to).collect(),
        backends: s.backends.iter().map(backend_to).collect(),
        authz: s.authz.iter().map(v1::AuthzPolicy::from).collect(),
    }
}

fn policy_from(s: &v1::ServicePolicy) -> Result<ServicePolicy> {
    Ok(ServicePolicy {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        vip: ip("vip", &s.vip)?,
        ports: ports_from(&s.ports)?,
        routes: each("routes", &s.routes, route_from)?,
        backends: each("backends", &s.backends, backend_from)?,
        authz: each("authz", &s.authz, authz_from)?,
    })
}

pub(super) fn waypoint_from(w: &v1::WaypointConfig) -> Result<WaypointConfig> {
    Ok(WaypointConfig {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        services: each("services", &w.services, policy_from)?,
        listeners: each("listeners", &w.listeners, |l| {
            Ok(Listener {
                name: l.name.clone(),
                port: port("port", l.port)?,
                certificates: l
                    .certificates
                    .iter()
                    .map(|c| ListenerCert {
                        hostnames: c.hostnames.clone(),
                        credential: c.credential.clone(),
                    })
                    .collect(),
                https_redirect: l.https_redirect,
                mesh_only: l.mesh_only,
                hosts: each("hosts", &l.hosts, |h| {
                    Ok(VirtualHost {
                        hostnames: h.hostnames.clone(),
                        policy: policy_from(
                            h.policy
                                .as_ref()
                                .ok_or_else(|| FieldError::new("policy", "missing"))?,
                        )?,
                    })
                })?,
            })
        })?,
        tracing: w.tracing.as_ref().map(|t| Tracing {
            collector: t.collector.clone(),
            sampling_percent: t.sampling_percent,
            source: t.source.clone(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waypoint() -> WaypointConfig {
        serde_yaml::from_str(
            r#"
name: reviews-waypoint
namespace: default
services:
- name: reviews
  namespace: default
  vip: 10.96.0.30
  ports: [{port: 9080, targetPort: 8080}]
  routes:
  - name: jason
    matches: [{headers: [{name: end-user, value: !exact jason, invert: false}], path: !regex "/api/.*", port: 9080}]
    backends: [{backend: 1, weight: 100}]
    timeoutMs: 2000
    retry:
      attempts: 3
      perTryTimeoutMs: 500
      on: {serverError: false, gatewayError: true, connectFailure: true, refusedStream: false, reset: true, retriable4xx: false, statuses: [409], grpc: [14]}
      backoffBaseMs: 25
      backoffMaxMs: 250
      budget: {ratio: 0.2, minPerSecond: 10, windowMs: 10000}
      maxBodyBytes: 65536
  - name: default
    matches: []
    backends: [{backend: 0, weight: 90}, {backend: 1, weight: 10}]
    requestHeaders: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
    responseHeaders: {remove: [server]}
  - name: teapot
    backends: [{backend: 0, weight: 1}]
    directResponse: {status: 418, body: short and stout}
    fault: {delay: [100, 50.0], abort: [503, 10.0]}
  - name: grpc-fault
    backends: [{backend: 0, weight: 1}]
    fault: {abortGrpc: [14, 10.0]}
  - name: moved
    backends: [{backend: 0, weight: 1}]
    rewrite: {path: /v2/, authority: reviews.internal, replaces: !prefix /v1}
    redirect: {scheme: https, port: 8443, path: /new, status: 308, replaces: whole}
    mirrors: [{backend: 1, port: 9080, percent: 12.5}, {backend: 0, percent: 100.0}]
  backends:
  - name: reviews.default/v1
    namespace: default
    endpoints: [reviews-v1]
    ports: [{port: 9080, targetPort: 8080}]
    pool: {maxConnections: 2, maxPending: 1, connectTimeoutMs: 1000}
    outlier: {consecutive5xx: 5, intervalMs: 10000, baseEjectionMs: 30000, maxEjectionPercent: 10, minHealthPercent: 0}
  - name: reviews.default/v2
    namespace: default
    endpoints: [reviews-v2]
  authz:
  - name: default/deny-admin
    action: deny
    rules: [{from: [{ipBlocks: [10.1.0.0/16]}], to: [{paths: [/admin*], methods: [POST]}], when: [{key: "request.headers[x]", values: [a], notValues: []}]}]
"#,
        )
        .expect("a waypoint config")
    }

    #[test]
    fn a_waypoint_config_survives_the_wire_unchanged() {
        let config = waypoint();
        let wire = v1::WaypointConfig::from(&config);
        let bytes = prost::Message::encode_to_vec(&wire);
        let decoded: v1::WaypointConfig = prost::Message::decode(&bytes[..]).expect("decodes");
        assert_eq!(waypoint_from(&decoded).expect("converts"), config);
    }

    #[test]
    fn what_a_message_cannot_mean_is_refused_by_field() {
        let mut wire = v1::WaypointConfig::from(&waypoint());
        wire.services[0].routes[0].matches[0].headers[0].value = Some(v1::StrMatch { kind: None });
        let e = waypoint_from(&wire).expect_err("no kind");
        assert_eq!(
            e.field,
            "services[0].routes[0].matches[0].headers[0].value.kind"
        );
        let mut wire = v1::WaypointConfig::from(&waypoint());
        wire.services[0].authz[0].action = 7;
        let e = waypoint_from(&wire).expect_err("unknown action");
        assert_eq!(e.field, "services[0].authz[0].action");
        let mut wire = v1::WaypointConfig::from(&waypoint());
        wire.services[0].ports[0].target_port = 70_000;
        let e = waypoint_from(&wire).expect_err("not a port");
        assert_eq!(e.field, "services[0].ports[0].targetPort");
        let mut wire = v1::WaypointConfig::from(&waypoint());
        wire.services[0].routes[4].mirrors[0].percent = f64::NAN;
        let e = waypoint_from(&wire).expect_err("not a percentage");
        assert_eq!(e.field, "services[0].routes[4].mirrors[0].percent");
    }
}
