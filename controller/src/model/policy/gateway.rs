//! The Gateway API (`gateway.networking.k8s.io`): `HTTPRoute` attached to a Service (GAMMA) and
//! `Gateway` with `gatewayClassName: weft-waypoint` (a waypoint).

use serde::Deserialize;

use super::common::{ApiDuration, Notes, Unhonoured};

/// The class of Gateways that are Weft waypoints.
pub const WAYPOINT_CLASS: &str = "weft-waypoint";

/// `HTTPRoute.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
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
    /// Filters: the header modifiers are honoured, the others noted.
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Not honoured.
    #[serde(default)]
    pub session_persistence: Unhonoured,
}

/// `rules[].filters[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`, `RequestRedirect`,
    /// `URLRewrite`, `ExtensionRef`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Not honoured.
    #[serde(default)]
    pub request_mirror: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub request_redirect: Unhonoured,
    /// Not honoured.
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub extension_ref: Unhonoured,
}

/// A header modifier filter.
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// One match.
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

/// A backend.
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
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
        if !self.hostnames.is_empty() {
            notes.note(
                "spec.hostnames",
                "not honoured: a route whose parent is a Service (GAMMA) applies to every request to it",
            );
        }
        for (i, p) in self.parent_refs.iter().enumerate() {
            if p.section_name.is_some() {
                notes.note(
                    &format!("spec.parentRefs[{i}].sectionName"),
                    "not honoured: the route applies to every port of the Service",
                );
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            for (j, f) in r.filters.iter().enumerate() {
                if !matches!(
                    f.kind.as_str(),
                    "RequestHeaderModifier" | "ResponseHeaderModifier"
                ) {
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

    /// The parents that are Services: the route is the mesh's (GAMMA). Routes of ingress
    /// Gateways belong to other controllers and are left alone.
    pub fn service_parents(&self) -> impl Iterator<Item = &ParentRef> {
        self.parent_refs.iter().filter(|p| {
            p.kind.as_deref() == Some("Service") && p.group.as_deref().unwrap_or("").is_empty()
        })
    }
}

/// `Gateway.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Class; `weft-waypoint` makes it a Weft waypoint.
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Not honoured.
    #[serde(default)]
    pub addresses: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub infrastructure: Unhonoured,
}

impl GatewaySpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        notes.unhonoured(
            "spec.addresses",
            &self.addresses,
            "a waypoint's address is its pod's",
        );
        notes.unhonoured(
            "spec.infrastructure",
            &self.infrastructure,
            "the waypoint Deployment is Weft's",
        );
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("spec.listeners[{i}].{f}");
            notes.unhonoured(&at("hostname"), &l.hostname, "a waypoint serves every host");
            notes.unhonoured(
                &at("allowedRoutes"),
                &l.allowed_routes,
                "a waypoint takes the routes of the services bound to it",
            );
            notes.unhonoured(&at("tls"), &l.tls, "a waypoint speaks HBONE (mTLS) only");
        }
    }
}

/// A listener.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    /// Protocol (`HBONE` for waypoints).
    pub protocol: String,
    /// Not honoured.
    #[serde(default)]
    pub hostname: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub allowed_routes: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub tls: Unhonoured,
}
