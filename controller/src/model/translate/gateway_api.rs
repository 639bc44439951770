//! Gateway API HTTPRoute attached to a Service (GAMMA): rules with matches, weighted backend
//! references, timeouts, retries and filters (header modifiers, mirrors, redirects, rewrites).

use weft_core::mesh::{
    HeaderEdits, Mirror, NamedMatch, PathPart, Redirect, Retry, RetryOn, Rewrite, Route,
    RouteMatch, StrMatch, WeightedBackend,
};

use super::backends::Backends;
use super::common::{COUNTED_BUDGET, REPLAY_CAP, default_retry, ms, share};
use super::smi::default_backends;
use crate::model::key::ObjectKey;
use crate::model::objects::{Objects, Service};
use crate::model::policy::PolicySpec;
use crate::model::policy::gateway::{HttpRouteSpec, PathModifier, RouteRule};

pub(crate) fn http_route_routes(
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
    // A parent naming one port scopes the route to requests on that port; the rest keep the
    // service's default route.
    let port = route
        .service_parents()
        .find(|parent| {
            parent.name == svc.name
                && parent.namespace.as_deref().unwrap_or(&key.namespace) == svc.namespace
        })
        .and_then(|parent| parent.port);
    let mut routes = rule_routes(objects, backends, key, route, Some(svc));
    // (On a Service with that one port the scope is every request: nothing to add.)
    let other_ports = port.is_some_and(|p| svc.ports.iter().any(|sp| sp.port != p));
    if let Some(port) = port.filter(|_| other_ports) {
        for route in &mut routes {
            if route.matches.is_empty() {
                route.matches.push(RouteMatch::default());
            }
            for m in &mut route.matches {
                m.port = Some(port);
            }
        }
        routes.push(Route {
            name: "default".into(),
            matches: Vec::new(),
            backends: default_backends(objects, backends, svc),
            timeout_ms: None,
            retry: Some(default_retry()),
            ..Route::default()
        });
    }
    Some(routes)
}

/// The routes of HTTPRoute `route` (`key`). A rule without backends sends to `fallback` (the
/// Service it is attached to); with none, the rule is left out.
pub(crate) fn rule_routes(
    objects: &Objects,
    backends: &mut Backends<'_>,
    key: &ObjectKey,
    route: &HttpRouteSpec,
    fallback: Option<&Service>,
) -> Vec<Route> {
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
            let Some(svc) = fallback else { continue };
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
        let edits = |response: bool| {
            let mut e = HeaderEdits::default();
            for f in &rule.filters {
                let modifier = if response {
                    f.response_header_modifier.as_ref()
                } else {
                    f.request_header_modifier.as_ref()
                };
                if let Some(m) = modifier {
                    e.set.extend(
                        m.set
                            .iter()
                            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone())),
                    );
                    e.add.extend(
                        m.add
                            .iter()
                            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone())),
                    );
                    e.remove
                        .extend(m.remove.iter().map(|n| n.to_ascii_lowercase()));
                }
            }
            e
        };
        let mut mirrors = Vec::new();
        for m in rule
            .filters
            .iter()
            .filter_map(|f| f.request_mirror.as_ref())
        {
            let r = &m.backend_ref;
            let ns = r.namespace.as_deref().unwrap_or(&key.namespace);
            let Some(target) = objects.services.get(&ObjectKey::new(ns, &r.name)) else {
                continue;
            };
            let percent = match (m.percent, m.fraction) {
                (Some(p), _) => f64::from(p),
                (None, Some(f)) => {
                    f64::from(f.numerator) * 100.0 / f64::from(f.denominator.unwrap_or(100).max(1))
                }
                (None, None) => 100.0,
            };
            mirrors.push(Mirror {
                backend: backends.get(target, None),
                port: r.port,
                percent: share(percent),
            });
        }
        let template = Route {
            name: match &rule.name {
                Some(name) => format!("{}.{}.{name}", key.name, key.namespace),
                None => format!("{}.{}.{i}", key.name, key.namespace),
            },
            matches: Vec::new(),
            backends: weighted,
            timeout_ms: rule.timeouts.as_ref().and_then(|t| ms(t.request)),
            retry,
            request_headers: edits(false),
            response_headers: edits(true),
            mirrors,
            ..Route::default()
        };
        routes.extend(with_path_filters(&template, rule, matches));
    }
    routes
}

/// The rule's routes with its redirect or rewrite. A `ReplacePrefixMatch` replaces the prefix
/// the request matched, so a rule with several prefixes becomes one route per match.
fn with_path_filters(template: &Route, rule: &RouteRule, matches: Vec<RouteMatch>) -> Vec<Route> {
    let redirect = rule
        .filters
        .iter()
        .find_map(|f| f.request_redirect.as_ref());
    let rewrite = rule.filters.iter().find_map(|f| f.url_rewrite.as_ref());
    let path = redirect
        .and_then(|r| r.path.as_ref())
        .or(rewrite.and_then(|w| w.path.as_ref()))
        .and_then(PathModifier::replacement);
    let build = |matches: Vec<RouteMatch>, prefix: &str| {
        let (path, replaces) = match path {
            Some((new, true)) => (Some(new.to_owned()), PathPart::Prefix(prefix.to_owned())),
            Some((new, false)) => (Some(new.to_owned()), PathPart::Whole),
            None => (None, PathPart::Whole),
        };
        Route {
            matches,
            redirect: redirect.map(|r| Redirect {
                // A scheme without a port goes to the scheme's own port.
                port: r.port.or(match r.scheme.as_deref() {
                    Some("https") => Some(443),
                    Some("http") => Some(80),
                    _ => None,
                }),
                scheme: r.scheme.clone(),
                authority: r.hostname.clone(),
                path: path.clone(),
                replaces: replaces.clone(),
                status: r.status_code.unwrap_or(302),
            }),
            rewrite: rewrite.map(|w| Rewrite {
                path: path.clone(),
                replaces: replaces.clone(),
                authority: w.hostname.clone(),
            }),
            ..template.clone()
        }
    };
    if !path.is_some_and(|(_, prefix)| prefix) || rule.matches.len() <= 1 {
        let prefix = rule
            .matches
            .first()
            .and_then(|m| m.path.as_ref())
            .and_then(|p| p.value.as_deref())
            .unwrap_or("/");
        return vec![build(matches, prefix)];
    }
    rule.matches
        .iter()
        .zip(matches)
        .map(|(m, compiled)| {
            let prefix = m
                .path
                .as_ref()
                .and_then(|p| p.value.as_deref())
                .unwrap_or("/");
            build(vec![compiled], prefix)
        })
        .collect()
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
