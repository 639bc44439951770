//! The Gateway API (`gateway.networking.k8s.io`): `HTTPRoute` attached to a Service (GAMMA) and
//! `Gateway` with `gatewayClassName: weft-waypoint` (a waypoint).

use serde::Deserialize;

use super::common::{ApiDuration, Notes, Unhonoured};
pub use super::gateway_class::*;

/// The HTTPRoute filters a waypoint applies.
pub const HONOURED_FILTERS: [&str; 5] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
];

/// The class of Gateways that are Weft waypoints.
pub const WAYPOINT_CLASS: &str = "weft-waypoint";

/// `HTTPRoute.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// What the route attaches to (a Service for mesh routes).
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Hosts.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules (the most specific match wins, as the API specifies).
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// `parentRefs[]`.
#[derive(
    Clone, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    /// Group (`""` for a Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (`Service`, `Gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// One rule.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches; any one selects the rule (none: `PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// Retries (GEP-1731).
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Filters: those in [`HONOURED_FILTERS`] are honoured, the others noted.
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Not honoured.
    #[serde(default)]
    pub session_persistence: Unhonoured,
}

/// `rules[].filters[]`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`, `RequestRedirect`,
    /// `URLRewrite` (honoured) or `ExtensionRef` (noted).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Not honoured.
    #[serde(default)]
    pub extension_ref: Unhonoured,
}

/// `requestMirror`: a copy of a share of requests (`percent`, or `fraction`; default all).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    pub backend_ref: BackendObjectRef,
    #[serde(default)]
    pub percent: Option<u32>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// `numerator / denominator` (default 100).
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default)]
    pub denominator: Option<u32>,
}

/// A backend without a weight (a mirror's).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

/// `requestRedirect`: what is not given is kept from the request (status 302 by default).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status_code: Option<u16>,
}

/// `urlRewrite`: the host and path the request is forwarded with.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// `path`: `ReplaceFullPath` or `ReplacePrefixMatch` (the rule's `PathPrefix` match).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

impl PathModifier {
    /// The new path, and whether it replaces the matched prefix (not the whole path).
    pub fn replacement(&self) -> Option<(&str, bool)> {
        match self.kind.as_str() {
            "ReplaceFullPath" => self.replace_full_path.as_deref().map(|p| (p, false)),
            "ReplacePrefixMatch" => self.replace_prefix_match.as_deref().map(|p| (p, true)),
            _ => None,
        }
    }
}

/// A header modifier filter.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One header of a modifier.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// One match.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Path.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Headers; all must match.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameters; all must match.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A path condition.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The value (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter condition.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

/// A backend.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// Group (`""` for a Service).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (`Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Service name.
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Not honoured.
    #[serde(default)]
    pub filters: Unhonoured,
}

/// `timeouts`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Whole request, retries included.
    #[serde(default)]
    pub request: Option<ApiDuration>,
    /// Each try.
    #[serde(default)]
    pub backend_request: Option<ApiDuration>,
}

/// `retry`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Status codes to retry.
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Retries after the first try.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Base backoff.
    #[serde(default)]
    pub backoff: Option<ApiDuration>,
}

impl HttpRouteSpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        if !self.hostnames.is_empty() && self.service_parents().next().is_some() {
            notes.note(
                "spec.hostnames",
                "not honoured: a route whose parent is a Service (GAMMA) applies to every request to it",
            );
        }
        for (i, p) in self.parent_refs.iter().enumerate() {
            if p.section_name.is_some() && p.kind.as_deref() == Some("Service") {
                notes.note(
                    &format!("spec.parentRefs[{i}].sectionName"),
                    "not honoured: the route applies to every port of the Service",
                );
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            for (j, f) in r.filters.iter().enumerate() {
                if !HONOURED_FILTERS.contains(&f.kind.as_str()) {
                    notes.note(
                        &format!("spec.rules[{i}].filters[{j}]"),
                        format!("{} not honoured (not implemented)", f.kind),
                    );
                }
            }
            notes.unhonoured(
                &format!("spec.rules[{i}].sessionPersistence"),
                &r.session_persistence,
                "not implemented",
            );
            for (j, b) in r.backend_refs.iter().enumerate() {
                notes.unhonoured(
                    &format!("spec.rules[{i}].backendRefs[{j}].filters"),
                    &b.filters,
                    "not implemented",
                );
            }
        }
    }

    /// What the API itself forbids (its CEL rules), naming the field: a filter without its
    /// settings, a path modifier of an unknown type or without its path, `ReplacePrefixMatch`
    /// on a rule that does not match on a path prefix, a redirect and a rewrite in one rule, a
    /// status a redirect cannot have, a share over 100%.
    pub fn check(&self) -> Result<(), String> {
        for (i, r) in self.rules.iter().enumerate() {
            let mut seen = Vec::new();
            for (j, f) in r.filters.iter().enumerate() {
                let at = format!("spec.rules[{i}].filters[{j}]");
                let configured = match f.kind.as_str() {
                    "RequestHeaderModifier" => f.request_header_modifier.is_some(),
                    "ResponseHeaderModifier" => f.response_header_modifier.is_some(),
                    "RequestMirror" => f.request_mirror.is_some(),
                    "RequestRedirect" => f.request_redirect.is_some(),
                    "URLRewrite" => f.url_rewrite.is_some(),
                    _ => true,
                };
                if !configured {
                    return Err(format!("{at}: a {} filter needs its settings", f.kind));
                }
                if f.kind != "RequestMirror" && seen.contains(&f.kind.as_str()) {
                    return Err(format!("{at}: a second {} filter in one rule", f.kind));
                }
                seen.push(f.kind.as_str());
                let path = f
                    .request_redirect
                    .as_ref()
                    .and_then(|r| r.path.as_ref())
                    .or(f.url_rewrite.as_ref().and_then(|w| w.path.as_ref()));
                if let Some(path) = path {
                    let Some((_, prefix)) = path.replacement() else {
                        return Err(format!(
                            "{at}: path type {:?} needs its own field (ReplaceFullPath: replaceFullPath, ReplacePrefixMatch: replacePrefixMatch)",
                            path.kind
                        ));
                    };
                    let by_prefix = r.matches.iter().all(|m| {
                        m.path.as_ref().is_none_or(|p| {
                            p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix"
                        })
                    });
                    if prefix && !by_prefix {
                        return Err(format!(
                            "{at}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                        ));
                    }
                }
                if let Some(code) = f.request_redirect.as_ref().and_then(|r| r.status_code)
                    && ![301, 302, 303, 307, 308].contains(&code)
                {
                    return Err(format!(
                        "{at}.requestRedirect.statusCode: {code} is not a redirect status"
                    ));
                }
                if let Some(m) = &f.request_mirror {
                    let over = match (m.percent, m.fraction) {
                        (Some(_), Some(_)) => {
                            return Err(format!(
                                "{at}.requestMirror: percent and fraction are exclusive"
                            ));
                        }
                        (Some(p), None) => p > 100,
                        (None, Some(f)) => {
                            let d = f.denominator.unwrap_or(100);
                            d == 0 || f.numerator > d
                        }
                        (None, None) => false,
                    };
                    if over {
                        return Err(format!("{at}.requestMirror: not a share of 0–100%"));
                    }
                }
            }
            if seen.contains(&"RequestRedirect") && seen.contains(&"URLRewrite") {
                return Err(format!(
                    "spec.rules[{i}].filters: RequestRedirect and URLRewrite cannot both be used"
                ));
            }
        }
        Ok(())
    }

    /// The parents that are Gateways (the default kind): ingress gateways, Weft's if their
    /// class is `weft`.
    pub fn gateway_parents(&self) -> impl Iterator<Item = &ParentRef> {
        self.parent_refs.iter().filter(|p| {
            p.kind.as_deref().is_none_or(|k| k == "Gateway")
                && p.group
                    .as_deref()
                    .is_none_or(|g| g == "gateway.networking.k8s.io")
        })
    }

    /// Whether this route (in `namespace`) attaches to `listener` of the Gateway `gateway`:
    /// a Gateway parent naming it (and the listener or its port, if it names one), and the
    /// listener admitting routes from that namespace.
    pub fn attaches_to(
        &self,
        namespace: &str,
        gateway: &crate::model::key::ObjectKey,
        listener: &Listener,
    ) -> bool {
        listener.admits_routes_from(namespace, &gateway.namespace)
            && self.gateway_parents().any(|parent| {
                parent.name == gateway.name
                    && parent.namespace.as_deref().unwrap_or(namespace) == gateway.namespace
                    && parent
                        .section_name
                        .as_ref()
                        .is_none_or(|s| s == &listener.name)
                    && parent.port.is_none_or(|port| port == listener.port)
            })
    }

    /// The parents that are Services: the route is the mesh's (GAMMA).
    pub fn service_parents(&self) -> impl Iterator<Item = &ParentRef> {
        self.parent_refs.iter().filter(|p| {
            p.kind.as_deref() == Some("Service") && p.group.as_deref().unwrap_or("").is_empty()
        })
    }
}
