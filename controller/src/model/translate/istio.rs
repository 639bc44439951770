//! Istio's VirtualService: HTTP routes with matches, weighted destinations (subsets from the
//! DestinationRule), timeouts and retries.

use weft_core::mesh::{
    DirectResponse, Fault, HeaderEdits, Mirror, NamedMatch, PathPart, Redirect, Retry, RetryOn,
    Rewrite, Route, RouteMatch, StrMatch, WeightedBackend,
};

use super::backends::Backends;
use super::common::{COUNTED_BUDGET, REPLAY_CAP, default_retry, host_is, ms, service_for, share};
use crate::model::key::ObjectKey;
use crate::model::objects::{Objects, Service};
use crate::model::policy::PolicySpec;
use crate::model::policy::istio;

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

/// The routes of the first VirtualService that applies inside the mesh to `svc`, if any.
pub(crate) fn virtual_service_routes(
    objects: &Objects,
    backends: &mut Backends<'_>,
    svc: &Service,
) -> Option<Vec<Route>> {
    let (key, vs) = objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::VirtualService(vs)
            if vs.in_mesh() && vs.hosts.iter().any(|h| host_is(h, &p.key.namespace, svc)) =>
        {
            Some((&p.key, &**vs))
        }
        _ => None,
    })?;
    Some(vs_routes(
        objects,
        backends,
        key,
        vs,
        Some(svc),
        istio::Context::Mesh,
    ))
}

/// The routes of `vs` (`key`). A rule answering by itself (a direct response, a redirect)
/// with no destination names `fallback` as its backend, never reached; without one the rule
/// is left out.
pub(crate) fn vs_routes(
    objects: &Objects,
    backends: &mut Backends<'_>,
    key: &ObjectKey,
    vs: &istio::VirtualServiceSpec,
    fallback: Option<&Service>,
    context: istio::Context<'_>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        // Only the matches that apply here; a rule all of whose matches are for elsewhere
        // (`gateways: [mesh]` at a gateway, say) is not a rule here.
        let applicable: Vec<_> = http
            .matches
            .iter()
            .filter(|m| m.applies(&key.namespace, context))
            .collect();
        if !http.matches.is_empty() && applicable.is_empty() {
            continue;
        }
        let matches = applicable
            .into_iter()
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
            let port = d.destination.port.as_ref().map(|p| p.number);
            let backend = match service_for(objects, &d.destination.host, &key.namespace) {
                Some(target) => backends.get(target, d.destination.subset.as_deref()),
                // A host outside the mesh that a ServiceEntry names.
                None => match backends.external(&d.destination.host, port) {
                    Some(backend) => backend,
                    None => continue,
                },
            };
            weighted.push(WeightedBackend {
                backend,
                weight: d.weight.unwrap_or(if single { 100 } else { 0 }),
            });
        }
        if weighted.iter().all(|w| w.weight == 0) {
            for w in &mut weighted {
                w.weight = 1;
            }
        }
        // A direct response or a redirect needs no destination; the route still names the service as its
        // backend (it is never reached).
        if weighted.is_empty()
            && (http.direct_response.is_some() || http.redirect.is_some())
            && let Some(svc) = fallback
        {
            weighted.push(WeightedBackend {
                backend: backends.get(svc, None),
                weight: 1,
            });
        }
        if weighted.is_empty() {
            continue;
        }
        let edits = |ops: Option<&istio::HeaderOperations>| {
            ops.map(|o| HeaderEdits {
                set: o.set.clone(),
                add: o.add.clone(),
                remove: o.remove.clone(),
            })
            .unwrap_or_default()
        };
        let headers = http.headers.as_ref();
        let single_share = http
            .mirror_percentage
            .map(|p| p.value)
            .or(http.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        let mirrors = http
            .mirror
            .iter()
            .map(|d| (d, single_share))
            .chain(
                http.mirrors
                    .iter()
                    .map(|m| (&m.destination, m.percentage.map_or(100.0, |p| p.value))),
            )
            .filter_map(|(d, percent)| {
                let target = service_for(objects, &d.host, &key.namespace)?;
                Some(Mirror {
                    backend: backends.get(target, d.subset.as_deref()),
                    port: d.port.as_ref().map(|p| p.number),
                    percent: share(percent),
                })
            })
            .collect();
        routes.push(Route {
            // `http[].name` names the route in metrics and logs, after the policy.
            name: match &http.name {
                Some(name) => format!("{}.{}.{name}", key.name, key.namespace),
                None => format!("{}.{}.{i}", key.name, key.namespace),
            },
            matches,
            backends: weighted,
            timeout_ms: ms(http.timeout),
            retry: match &http.retries {
                Some(r) => istio_retry(r),
                None => Some(default_retry()),
            },
            request_headers: edits(headers.and_then(|h| h.request.as_ref())),
            response_headers: edits(headers.and_then(|h| h.response.as_ref())),
            rewrite: http.rewrite.as_ref().map(|w| Rewrite {
                path: w.uri.clone(),
                replaces: PathPart::MatchedPrefix,
                authority: w.authority.clone(),
            }),
            redirect: http.redirect.as_ref().map(|d| Redirect {
                scheme: d.scheme.clone(),
                authority: d.authority.clone(),
                port: d.port,
                path: d.uri.clone(),
                replaces: PathPart::Whole,
                status: d.redirect_code.unwrap_or(301),
            }),
            mirrors,
            fault: http.fault.as_ref().map(|f| Fault {
                delay: f.delay.as_ref().and_then(|d| {
                    let percent = d
                        .percentage
                        .map(|p| p.value)
                        .or(d.percent.map(f64::from))
                        .unwrap_or(100.0);
                    Some((ms(d.fixed_delay)?, share(percent)))
                }),
                abort: f.abort.as_ref().and_then(|a| {
                    Some((
                        a.http_status?,
                        share(a.percentage.map_or(100.0, |p| p.value)),
                    ))
                }),
                abort_grpc: f.abort.as_ref().and_then(|a| {
                    Some((
                        a.grpc_code()?,
                        share(a.percentage.map_or(100.0, |p| p.value)),
                    ))
                }),
            }),
            direct_response: http.direct_response.as_ref().map(|d| DirectResponse {
                status: d.status,
                body: d
                    .body
                    .as_ref()
                    .and_then(|b| b.string.clone())
                    .unwrap_or_default(),
            }),
        });
    }
    routes
}
