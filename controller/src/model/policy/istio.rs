//! Istio's traffic and security APIs (`networking.istio.io`, `security.istio.io`), as users
//! write them. Every field of the real API is known: the ones Weft acts on are typed, the rest
//! are accepted and reported as not honoured; a field the API does not have is an error.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{ApiDuration, Notes, Selector, StringList, TargetRef, Unhonoured};

// === VirtualService ===

/// `VirtualService.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to (short names are in the object's namespace).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (only the mesh itself is honoured).
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
#[derive(Clone, Debug, Default, Deserialize)]
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
    /// Not honoured.
    #[serde(default)]
    pub redirect: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub direct_response: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub delegate: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub rewrite: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub fault: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub mirror: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub mirrors: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub mirror_percentage: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub mirror_percent: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub cors_policy: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub headers: Unhonoured,
}

/// A string condition: exactly one of exact, prefix, regex.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Debug, Default, Deserialize)]
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
    /// Not honoured.
    #[serde(default)]
    pub gateways: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub stat_prefix: Unhonoured,
}

/// A destination and its weight.
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The port.
    pub number: u16,
}

/// Retry policy.
#[derive(Clone, Debug, Default, Deserialize)]
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

impl VirtualServiceSpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        for (i, g) in self.gateways.iter().enumerate() {
            if g != "mesh" {
                notes.note(
                    &format!("spec.gateways[{i}]"),
                    format!("{g:?} not honoured: Weft applies VirtualServices inside the mesh (at waypoints), not at ingress gateways"),
                );
            }
        }
        notes.unhonoured("spec.tls", &self.tls, "TLS routing");
        notes.unhonoured("spec.tcp", &self.tcp, "TCP routing");
        notes.unhonoured("spec.exportTo", &self.export_to, "visibility scoping");
        for (i, r) in self.http.iter().enumerate() {
            let at = |f: &str| format!("spec.http[{i}].{f}");
            for (field, value) in [
                ("redirect", &r.redirect),
                ("directResponse", &r.direct_response),
                ("delegate", &r.delegate),
                ("rewrite", &r.rewrite),
                ("fault", &r.fault),
                ("mirror", &r.mirror),
                ("mirrors", &r.mirrors),
                ("mirrorPercentage", &r.mirror_percentage),
                ("mirrorPercent", &r.mirror_percent),
                ("corsPolicy", &r.cors_policy),
                ("headers", &r.headers),
            ] {
                notes.unhonoured(&at(field), value, "not implemented");
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
                notes.unhonoured(&at("gateways"), &m.gateways, "ingress gateways");
                notes.unhonoured(&at("statPrefix"), &m.stat_prefix, "not implemented");
            }
            for (j, d) in r.route.iter().enumerate() {
                notes.unhonoured(
                    &format!("spec.http[{i}].route[{j}].headers"),
                    &d.headers,
                    "not implemented",
                );
            }
            if let Some(retries) = &r.retries {
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

// === DestinationRule ===

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service.
    pub host: String,
    /// Policy for every subset (a subset's own overrides it).
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets by pod labels.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Not honoured.
    #[serde(default)]
    pub export_to: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub workload_selector: Unhonoured,
}

/// A subset.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name routes refer to.
    pub name: String,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Policy for this subset.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Connection pool and outlier detection.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Pool limits.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Load balancing (Weft balances by least requests; other choices are reported).
    #[serde(default)]
    pub load_balancer: Unhonoured,
    /// Not honoured: the mesh's own mTLS is always used inside the mesh.
    #[serde(default)]
    pub tls: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub port_level_settings: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub tunnel: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub proxy_protocol: Unhonoured,
}

/// `connectionPool`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// TCP limits.
    #[serde(default)]
    pub tcp: Option<TcpPool>,
    /// HTTP limits.
    #[serde(default)]
    pub http: Option<HttpPool>,
}

/// `connectionPool.tcp`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    /// Most connections to the service at once.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<ApiDuration>,
    /// Not honoured.
    #[serde(default)]
    pub tcp_keepalive: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub max_connection_duration: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub idle_timeout: Unhonoured,
}

/// `connectionPool.http`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// Most requests waiting for a connection.
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    /// Most requests in flight.
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    /// Requests per upstream connection before it is closed.
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Most retries in flight.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Not honoured.
    #[serde(default)]
    pub idle_timeout: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub h2_upgrade_policy: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub use_client_protocol: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub max_concurrent_streams: Unhonoured,
}

/// `outlierDetection`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx (and gateway errors) before ejection.
    #[serde(default)]
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated name of `consecutive5xxErrors`.
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    /// Consecutive 502/503/504 and connect failures before ejection (`consecutiveGatewayFailure`
    /// is read too, as some guides write it).
    #[serde(default, alias = "consecutiveGatewayFailure")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive connect failures before ejection.
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Not honoured (local-origin failures always count as gateway errors).
    #[serde(default)]
    pub split_external_local_origin_errors: Unhonoured,
    /// How often ejections are re-evaluated.
    #[serde(default)]
    pub interval: Option<ApiDuration>,
    /// Ejection time (times the number of ejections so far).
    #[serde(default)]
    pub base_ejection_time: Option<ApiDuration>,
    /// Most endpoints ejected at once, percent.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    /// Below this share of healthy endpoints, no endpoint is ejected.
    #[serde(default)]
    pub min_health_percent: Option<u32>,
}

impl DestinationRuleSpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        notes.unhonoured("spec.exportTo", &self.export_to, "visibility scoping");
        notes.unhonoured(
            "spec.workloadSelector",
            &self.workload_selector,
            "sidecar-only field",
        );
        if let Some(p) = &self.traffic_policy {
            p.notes("spec.trafficPolicy", notes);
        }
        for (i, s) in self.subsets.iter().enumerate() {
            if let Some(p) = &s.traffic_policy {
                p.notes(&format!("spec.subsets[{i}].trafficPolicy"), notes);
            }
        }
    }
}

impl TrafficPolicy {
    fn notes(&self, at: &str, notes: &mut Notes) {
        if let Some(lb) = &self.load_balancer {
            let simple = lb.get("simple").and_then(|v| v.as_str());
            if !matches!(simple, Some("LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED")) {
                notes.note(
                    &format!("{at}.loadBalancer"),
                    "not honoured: Weft balances by least requests (power of two choices)",
                );
            }
        }
        notes.unhonoured(
            &format!("{at}.tls"),
            &self.tls,
            "the mesh's mTLS is used between proxies",
        );
        notes.unhonoured(
            &format!("{at}.portLevelSettings"),
            &self.port_level_settings,
            "not implemented",
        );
        notes.unhonoured(&format!("{at}.tunnel"), &self.tunnel, "not implemented");
        notes.unhonoured(
            &format!("{at}.proxyProtocol"),
            &self.proxy_protocol,
            "not implemented",
        );
        if let Some(pool) = &self.connection_pool {
            if let Some(tcp) = &pool.tcp {
                notes.unhonoured(
                    &format!("{at}.connectionPool.tcp.tcpKeepalive"),
                    &tcp.tcp_keepalive,
                    "not implemented",
                );
                notes.unhonoured(
                    &format!("{at}.connectionPool.tcp.maxConnectionDuration"),
                    &tcp.max_connection_duration,
                    "not implemented",
                );
                notes.unhonoured(
                    &format!("{at}.connectionPool.tcp.idleTimeout"),
                    &tcp.idle_timeout,
                    "not implemented",
                );
            }
            if let Some(http) = &pool.http {
                notes.unhonoured(
                    &format!("{at}.connectionPool.http.idleTimeout"),
                    &http.idle_timeout,
                    "not implemented",
                );
                notes.unhonoured(
                    &format!("{at}.connectionPool.http.h2UpgradePolicy"),
                    &http.h2_upgrade_policy,
                    "the waypoint speaks the client's protocol",
                );
                notes.unhonoured(
                    &format!("{at}.connectionPool.http.useClientProtocol"),
                    &http.use_client_protocol,
                    "always on",
                );
                notes.unhonoured(
                    &format!("{at}.connectionPool.http.maxConcurrentStreams"),
                    &http.max_concurrent_streams,
                    "not implemented",
                );
            }
        }
        if let Some(o) = &self.outlier_detection {
            notes.unhonoured(
                &format!("{at}.outlierDetection.splitExternalLocalOriginErrors"),
                &o.split_external_local_origin_errors,
                "connect failures count as gateway errors",
            );
        }
    }
}

// === PeerAuthentication ===

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to (absent: the namespace, or the mesh in the root namespace).
    #[serde(default)]
    pub selector: Option<Selector>,
    /// The mode.
    #[serde(default)]
    pub mtls: Option<MtlsSpec>,
    /// Modes per workload port (needs a selector).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, MtlsSpec>,
}

/// `{mode: STRICT}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSpec {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// PeerAuthentication modes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope.
    #[default]
    Unset,
    /// mTLS only.
    Strict,
    /// mTLS and plaintext.
    Permissive,
    /// Plaintext only: the workload is plain TCP both ways.
    Disable,
}

impl PeerAuthenticationSpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        if let Some(s) = &self.selector {
            notes.unhonoured(
                "spec.selector.matchExpressions",
                &s.match_expressions,
                "use matchLabels",
            );
        }
        if !self.port_level_mtls.is_empty() && self.selector.is_none() {
            notes.note(
                "spec.portLevelMtls",
                "not honoured without a selector (as in Istio)",
            );
        }
    }
}

// === AuthorizationPolicy ===

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads it applies to (absent: the namespace, or the mesh in the root namespace).
    #[serde(default)]
    pub selector: Option<Selector>,
    /// Attachment to a Service or waypoint Gateway.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// Attachments.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// ALLOW (default), DENY; AUDIT and CUSTOM are reported.
    #[serde(default)]
    pub action: Action,
    /// Rules; any one matching matches the policy. An ALLOW policy with no rules allows
    /// nothing; an empty rule matches everything.
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
    /// Not honoured.
    #[serde(default)]
    pub provider: Unhonoured,
}

/// Policy actions.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching requests (and, once any ALLOW policy applies, deny the rest).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Not honoured.
    Audit,
    /// Not honoured.
    Custom,
}

/// One rule: every `from`, `to` and `when` part must match.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources; any one matching.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations; any one matching.
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions; all must hold.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `from[].source`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    /// The source.
    pub source: Source,
}

/// A request's source.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (`<trust-domain>/ns/<ns>/sa/<sa>`; `*`, prefix `*` and suffix `*`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Excluded identities.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Excluded namespaces.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Peer IPs/CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Excluded IPs/CIDRs.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Not honoured.
    #[serde(default)]
    pub request_principals: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub not_request_principals: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub remote_ip_blocks: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub not_remote_ip_blocks: Unhonoured,
}

/// `to[].operation`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// A request's operation: Weft's own type, which has exactly Istio's fields.
pub use weft_core::mesh::AuthzOperation as Operation;

/// `when[]` (`request.headers[name]`, `source.ip`, `source.namespace`, `source.principal`,
/// `destination.port`): Weft's own type, which has exactly Istio's fields.
pub use weft_core::mesh::AuthzCondition as Condition;

impl AuthorizationPolicySpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        if matches!(self.action, Action::Audit | Action::Custom) {
            notes.note(
                "spec.action",
                format!(
                    "{:?} not honoured: only ALLOW and DENY are enforced; this policy is ignored",
                    self.action
                )
                .to_uppercase(),
            );
        }
        notes.unhonoured("spec.provider", &self.provider, "external authorization");
        if let Some(s) = &self.selector {
            notes.unhonoured(
                "spec.selector.matchExpressions",
                &s.match_expressions,
                "use matchLabels",
            );
        }
        for (i, rule) in self.rules.iter().flatten().enumerate() {
            let http = rule.to.iter().any(|t| {
                let o = &t.operation;
                !(o.methods.is_empty()
                    && o.not_methods.is_empty()
                    && o.paths.is_empty()
                    && o.not_paths.is_empty()
                    && o.hosts.is_empty()
                    && o.not_hosts.is_empty())
            }) || rule.when.iter().any(|c| c.key.starts_with("request."));
            if http {
                notes.note(
                    &format!("spec.rules[{i}]"),
                    "HTTP attributes are judged only on traffic through a waypoint; a node proxy (L4) reads this rule to deny more, never less (in ALLOW it does not match, in DENY it does)",
                );
            }
            for (j, from) in rule.from.iter().enumerate() {
                let at = |f: &str| format!("spec.rules[{i}].from[{j}].source.{f}");
                notes.unhonoured(
                    &at("requestPrincipals"),
                    &from.source.request_principals,
                    "no JWT authentication",
                );
                notes.unhonoured(
                    &at("notRequestPrincipals"),
                    &from.source.not_request_principals,
                    "no JWT authentication",
                );
                notes.unhonoured(
                    &at("remoteIpBlocks"),
                    &from.source.remote_ip_blocks,
                    "no X-Forwarded-For trust",
                );
                notes.unhonoured(
                    &at("notRemoteIpBlocks"),
                    &from.source.not_remote_ip_blocks,
                    "no X-Forwarded-For trust",
                );
            }
            for (j, c) in rule.when.iter().enumerate() {
                let known = c.key.starts_with("request.headers[")
                    || matches!(
                        c.key.as_str(),
                        "source.ip" | "source.namespace" | "source.principal" | "destination.port"
                    );
                if !known {
                    notes.note(
                        &format!("spec.rules[{i}].when[{j}].key"),
                        format!(
                            "{:?} is not an attribute Weft evaluates; the condition never matches",
                            c.key
                        ),
                    );
                }
            }
        }
    }
}

// === Gateway (networking.istio.io) ===

/// Istio's ingress `Gateway.spec`: accepted and reported, since Weft has no ingress gateway.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioGatewaySpec {
    /// Gateway pods.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Servers.
    #[serde(default)]
    pub servers: Vec<serde_yaml::Value>,
}
