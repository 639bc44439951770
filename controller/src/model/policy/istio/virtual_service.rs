//! `networking.istio.io` VirtualService: HTTP routes, matches, destinations, timeouts, retries.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::policy::common::{ApiDuration, Notes, StringList, Unhonoured};

/// `VirtualService.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to (short names are in the object's namespace).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where it applies: `mesh` (the waypoints; also when empty) and ingress Gateways by
    /// name (`name` in the VirtualService's namespace, or `namespace/name`).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP rules, first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Not honoured.
    #[serde(default)]
    pub tls: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub tcp: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub export_to: Unhonoured,
}

/// One HTTP rule.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name (for metrics and status).
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions; any one matching selects the rule (none: every request).
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Whole-request timeout, retries included.
    #[serde(default)]
    pub timeout: Option<ApiDuration>,
    /// Retry policy (`retry` is read too, as some guides write it).
    #[serde(default, alias = "retry")]
    pub retries: Option<HttpRetry>,
    /// Send the client elsewhere.
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    /// The waypoint answers itself.
    #[serde(default)]
    pub direct_response: Option<DirectResponseSpec>,
    /// Not honoured.
    #[serde(default)]
    pub delegate: Unhonoured,
    /// Rewrite the path and authority before forwarding.
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    /// Faults injected into a share of requests.
    #[serde(default)]
    pub fault: Option<HttpFault>,
    /// A copy of each request (of `mirrorPercentage`, default all) goes here too.
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// Copies to several destinations, each with its own share.
    #[serde(default)]
    pub mirrors: Vec<MirrorPolicy>,
    /// The share `mirror` copies.
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// The share `mirror` copies (deprecated integer form).
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    /// Not honoured.
    #[serde(default)]
    pub cors_policy: Unhonoured,
    /// Header edits on the request and the response.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `mirrors[]`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorPolicy {
    pub destination: Destination,
    /// The share copied (default all).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `headers`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// `headers.request` / `headers.response`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `redirect`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u16>,
    /// Not honoured.
    #[serde(default)]
    pub derive_port: Unhonoured,
}

/// `rewrite`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    /// Not honoured.
    #[serde(default)]
    pub uri_regex_rewrite: Unhonoured,
}

/// `fault`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFault {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// `fault.delay`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<ApiDuration>,
    /// Share of requests, percent (absent: all).
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// The deprecated integer form of `percentage`.
    #[serde(default)]
    pub percent: Option<u32>,
    /// Not honoured.
    #[serde(default)]
    pub exponential_delay: Unhonoured,
}

/// `fault.abort`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Share of requests, percent (absent: all).
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// A gRPC status (`UNAVAILABLE`, or its number) answered instead.
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// Not honoured.
    #[serde(default)]
    pub http2_error: Unhonoured,
}

impl FaultAbort {
    /// The gRPC status code `grpc_status` names, if it names one.
    pub fn grpc_code(&self) -> Option<u32> {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        let text = self.grpc_status.as_deref()?.trim();
        match text.parse::<u32>() {
            Ok(code) => (code <= 16).then_some(code),
            Err(_) => NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(text))
                .map(|i| i as u32),
        }
    }
}

/// `percentage: {value: 12.5}`.
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// `directResponse`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponseSpec {
    pub status: u16,
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// `directResponse.body`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default)]
    pub string: Option<String>,
    /// Not honoured (base64 bytes).
    #[serde(default)]
    pub bytes: Unhonoured,
}

/// A string condition: exactly one of exact, prefix, regex.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Equal to.
    #[serde(default)]
    pub exact: Option<String>,
    /// Starts with.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Matches this RE2-style regular expression (whole value).
    #[serde(default)]
    pub regex: Option<String>,
}

/// One match condition (all of its parts must hold).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Path.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// Host/authority.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Headers (lower-case names).
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Destination port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Headers that must be absent.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Whether `uri` ignores case.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Not honoured.
    #[serde(default)]
    pub scheme: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub source_labels: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub source_namespace: Unhonoured,
    /// Where the match applies: `mesh` and gateway names (none: wherever the
    /// VirtualService's `gateways` say).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Not honoured.
    #[serde(default)]
    pub stat_prefix: Unhonoured,
}

/// A destination and its weight.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to.
    pub destination: Destination,
    /// Relative weight (percent in Istio; absent: 100 for a single destination).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Not honoured.
    #[serde(default)]
    pub headers: Unhonoured,
}

/// A service (and optionally a subset and port).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host (short or FQDN).
    pub host: String,
    /// Subset from the host's DestinationRule.
    #[serde(default)]
    pub subset: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// `{number: 9080}`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The port.
    pub number: u16,
}

/// Retry policy.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Retries after the first try.
    #[serde(default)]
    pub attempts: u32,
    /// Timeout of each try.
    #[serde(default)]
    pub per_try_timeout: Option<ApiDuration>,
    /// Conditions (a list, or Istio's comma-separated string).
    #[serde(default)]
    pub retry_on: Option<StringList>,
    /// Base interval between tries (exponential, with jitter).
    #[serde(default)]
    pub backoff: Option<ApiDuration>,
    /// Not honoured.
    #[serde(default)]
    pub retry_remote_localities: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub retry_ignore_previous_hosts: Unhonoured,
}

/// The `retryOn` conditions Weft acts on (and numeric status codes).
pub const KNOWN_RETRY_ON: [&str; 12] = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "refused-stream",
    "reset",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "unavailable",
];

impl VirtualServiceSpec {
    /// Whether it applies inside the mesh (at waypoints): no `gateways`, or `mesh` among them.
    pub fn in_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }

    /// Whether it is bound to the Istio Gateway `gateway` (`namespace/name`), itself being in
    /// `namespace`.
    pub fn binds(&self, namespace: &str, gateway: &crate::model::key::ObjectKey) -> bool {
        self.gateways
            .iter()
            .any(|g| Context::Gateway(gateway).is(namespace, g))
    }

    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        notes.unhonoured("spec.tls", &self.tls, "TLS routing");
        notes.unhonoured("spec.tcp", &self.tcp, "TCP routing");
        notes.unhonoured("spec.exportTo", &self.export_to, "visibility scoping");
        for (i, r) in self.http.iter().enumerate() {
            let at = |f: &str| format!("spec.http[{i}].{f}");
            if let Some(redirect) = &r.redirect {
                notes.unhonoured(
                    &at("redirect.derivePort"),
                    &redirect.derive_port,
                    "give port",
                );
            }
            if let Some(rewrite) = &r.rewrite {
                notes.unhonoured(
                    &at("rewrite.uriRegexRewrite"),
                    &rewrite.uri_regex_rewrite,
                    "use uri",
                );
            }
            for (field, value) in [("delegate", &r.delegate), ("corsPolicy", &r.cors_policy)] {
                notes.unhonoured(&at(field), value, "not implemented");
            }
            if let Some(fault) = &r.fault {
                if let Some(delay) = &fault.delay {
                    notes.unhonoured(
                        &at("fault.delay.exponentialDelay"),
                        &delay.exponential_delay,
                        "use fixedDelay",
                    );
                }
                if let Some(abort) = &fault.abort {
                    if let Some(status) = &abort.grpc_status
                        && abort.grpc_code().is_none()
                    {
                        notes.note(
                            &at("fault.abort.grpcStatus"),
                            format!("{status:?} not honoured: not a gRPC status name or code"),
                        );
                    }
                    notes.unhonoured(
                        &at("fault.abort.http2Error"),
                        &abort.http2_error,
                        "use httpStatus",
                    );
                }
            }
            if let Some(body) = r.direct_response.as_ref().and_then(|d| d.body.as_ref()) {
                notes.unhonoured(
                    &at("directResponse.body.bytes"),
                    &body.bytes,
                    "use body.string",
                );
            }
            for (j, m) in r.matches.iter().enumerate() {
                let at = |f: &str| format!("spec.http[{i}].match[{j}].{f}");
                notes.unhonoured(&at("scheme"), &m.scheme, "not implemented");
                notes.unhonoured(
                    &at("sourceLabels"),
                    &m.source_labels,
                    "use AuthorizationPolicy for source-based rules",
                );
                notes.unhonoured(
                    &at("sourceNamespace"),
                    &m.source_namespace,
                    "use AuthorizationPolicy for source-based rules",
                );
                if m.authority.is_some() {
                    notes.note(
                        &at("authority"),
                        "not honoured: the route matches every authority of the service",
                    );
                }
                if m.ignore_uri_case {
                    notes.note(
                        &at("ignoreUriCase"),
                        "not honoured: paths match case-sensitively",
                    );
                }
                notes.unhonoured(&at("statPrefix"), &m.stat_prefix, "not implemented");
            }
            for (j, d) in r.route.iter().enumerate() {
                notes.unhonoured(
                    &format!("spec.http[{i}].route[{j}].headers"),
                    &d.headers,
                    "not implemented",
                );
                if d.destination.port.is_some() {
                    notes.note(
                        &format!("spec.http[{i}].route[{j}].destination.port"),
                        "not honoured: the destination is reached on the port the request arrived on",
                    );
                }
            }
            if let Some(retries) = &r.retries {
                for (k, token) in retries.retry_on.iter().flat_map(|l| l.0.iter()).enumerate() {
                    if !KNOWN_RETRY_ON.contains(&token.trim())
                        && token.trim().parse::<u16>().is_err()
                    {
                        notes.note(
                            &at(&format!("retries.retryOn[{k}]")),
                            format!(
                                "{token:?} is not a condition Weft knows: it never triggers a retry"
                            ),
                        );
                    }
                }
                notes.unhonoured(
                    &at("retries.retryRemoteLocalities"),
                    &retries.retry_remote_localities,
                    "single locality",
                );
                notes.unhonoured(
                    &at("retries.retryIgnorePreviousHosts"),
                    &retries.retry_ignore_previous_hosts,
                    "retries pick endpoints by load",
                );
            }
        }
    }
}

/// Where routes are built for: inside the mesh (waypoints, node proxies) or at an Istio
/// Gateway (`namespace/name`).
#[derive(Clone, Copy, Debug)]
pub enum Context<'a> {
    Mesh,
    Gateway(&'a crate::model::key::ObjectKey),
}

impl HttpMatchRequest {
    /// Whether the match applies where `context` is (the VirtualService being in
    /// `namespace`): its own `gateways` name it, or it names none.
    pub fn applies(&self, namespace: &str, context: Context<'_>) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| context.is(namespace, g))
    }
}

impl Context<'_> {
    /// Whether `name` (as a VirtualService in `namespace` writes it: `mesh`, `name` or
    /// `ns/name`) is this place.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        match self {
            Self::Mesh => name == "mesh",
            Self::Gateway(key) => match name.split_once('/') {
                Some((ns, n)) => ns == key.namespace && n == key.name,
                None => namespace == key.namespace && name == key.name,
            },
        }
    }
}
