//! `networking.istio.io` DestinationRule: subsets and traffic policy (connection pool, outlier
//! detection, TLS).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::policy::common::{ApiDuration, Notes, Unhonoured};

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
    /// TLS to the destination: inside the mesh the mesh's own mTLS is always used; for a
    /// ServiceEntry's host, `SIMPLE` makes the egress gateway originate TLS.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Per port: only `tls` is read (TLS origination on that port).
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Not honoured.
    #[serde(default)]
    pub tunnel: Unhonoured,
    /// Not honoured (Istio's newer per-destination retry budget).
    #[serde(default)]
    pub retry_budget: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub proxy_protocol: Unhonoured,
}

/// `tls` (Istio's ClientTLSSettings).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[serde(default)]
    pub mode: Option<String>,
    /// A PEM file of CA certificates on the gateway (default: the system's CA bundle).
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// A Secret mounted on the gateway whose `ca.crt` holds the CA certificates.
    #[serde(default)]
    pub credential_name: Option<String>,
    /// The name sent in SNI (default: the host).
    #[serde(default)]
    pub sni: Option<String>,
    /// Names the server's certificate may hold instead of the SNI name.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Not honoured: the server's certificate is always verified.
    #[serde(default)]
    pub insecure_skip_verify: Unhonoured,
    /// Not honoured (no client certificates to servers outside the mesh).
    #[serde(default)]
    pub client_certificate: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub private_key: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub ca_crl: Unhonoured,
}

impl ClientTls {
    /// The mode, upper case (none when not given).
    pub fn mode(&self) -> Option<String> {
        self.mode.as_deref().map(str::to_ascii_uppercase)
    }

    /// Whether it asks for TLS originated by the proxy (`SIMPLE`, or `MUTUAL`).
    pub fn originates(&self) -> bool {
        matches!(self.mode().as_deref(), Some("SIMPLE" | "MUTUAL"))
    }
}

/// `portLevelSettings[]`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port it applies to.
    pub port: super::virtual_service::PortSelector,
    /// TLS on this port.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Not honoured per port (the rule's own `connectionPool` is).
    #[serde(default)]
    pub connection_pool: Unhonoured,
    /// Not honoured per port (the rule's own `outlierDetection` is).
    #[serde(default)]
    pub outlier_detection: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub load_balancer: Unhonoured,
}

impl TrafficPolicy {
    /// The TLS settings for `port`: its `portLevelSettings` entry's, else the policy's.
    pub fn tls_for(&self, port: Option<u16>) -> Option<&ClientTls> {
        port.and_then(|port| {
            self.port_level_settings
                .iter()
                .find(|p| p.port.number == port)
                .and_then(|p| p.tls.as_ref())
        })
        .or(self.tls.as_ref())
    }
}

/// `connectionPool`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
                let at = format!("spec.subsets[{i}].trafficPolicy");
                p.notes(&at, notes);
                p.subset_tls_notes(&at, notes);
            }
        }
    }
}

impl TrafficPolicy {
    /// A subset's TLS settings are not read: inside the mesh its mTLS is used, and TLS to a
    /// host outside it is originated as the rule's own `trafficPolicy` says.
    fn subset_tls_notes(&self, at: &str, notes: &mut Notes) {
        let why = "not read in a subset: between mesh workloads the mesh's mTLS is used (what ISTIO_MUTUAL asks), and TLS to a ServiceEntry's host is originated as the rule's own trafficPolicy.tls says";
        if let Some(tls) = &self.tls {
            let mesh = matches!(
                tls.mode().as_deref(),
                None | Some("ISTIO_MUTUAL" | "DISABLE")
            );
            let other = tls.ca_certificates.is_some()
                || tls.credential_name.is_some()
                || tls.sni.is_some()
                || !tls.subject_alt_names.is_empty();
            if !mesh || other {
                notes.note(&format!("{at}.tls"), why);
            }
        }
        for i in 0..self.port_level_settings.len() {
            notes.note(&format!("{at}.portLevelSettings[{i}]"), why);
        }
    }

    fn notes(&self, at: &str, notes: &mut Notes) {
        if let Some(lb) = &self.load_balancer.0 {
            let simple = lb.get("simple").and_then(|v| v.as_str());
            if !matches!(simple, Some("LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED")) {
                notes.note(
                    &format!("{at}.loadBalancer"),
                    "not honoured: Weft balances by least requests (power of two choices)",
                );
            }
        }
        let settings = self.tls.iter().map(|t| (format!("{at}.tls"), t)).chain(
            self.port_level_settings
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    Some((format!("{at}.portLevelSettings[{i}].tls"), p.tls.as_ref()?))
                }),
        );
        for (at_tls, tls) in settings {
            tls.notes(&at_tls, notes);
        }
        for (i, p) in self.port_level_settings.iter().enumerate() {
            let at = format!("{at}.portLevelSettings[{i}]");
            for (field, value) in [
                ("connectionPool", &p.connection_pool),
                ("outlierDetection", &p.outlier_detection),
                ("loadBalancer", &p.load_balancer),
            ] {
                notes.unhonoured(
                    &format!("{at}.{field}"),
                    value,
                    "per-port pools and balancing are not implemented: the rule's own apply to every port",
                );
            }
        }
        notes.unhonoured(&format!("{at}.tunnel"), &self.tunnel, "not implemented");
        notes.unhonoured(
            &format!("{at}.retryBudget"),
            &self.retry_budget,
            "retries are budgeted per route: 50% of requests + 10/s, or a ServiceProfile's retryBudget",
        );
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
                if http.max_retries.is_some() {
                    notes.note(
                        &format!("{at}.connectionPool.http.maxRetries"),
                        "not honoured: retries are bounded per route and by the retry budget",
                    );
                }
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

impl ClientTls {
    fn notes(&self, at: &str, notes: &mut Notes) {
        match self.mode().as_deref() {
            None | Some("DISABLE" | "ISTIO_MUTUAL" | "SIMPLE") => {}
            Some("MUTUAL") => notes.note(
                &format!("{at}.mode"),
                "MUTUAL is originated as SIMPLE: Weft presents no client certificate to servers outside the mesh",
            ),
            Some(other) => notes.note(
                &format!("{at}.mode"),
                format!("{other:?} is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL: no TLS is originated"),
            ),
        }
        if self.originates() {
            notes.note(
                &format!("{at}.mode"),
                "TLS is originated only to a ServiceEntry's host, by the egress gateway that routes to it; between mesh workloads the mesh's own mTLS is used",
            );
        }
        notes.unhonoured(
            &format!("{at}.insecureSkipVerify"),
            &self.insecure_skip_verify,
            "the server's certificate is always verified",
        );
        for (field, value) in [
            ("clientCertificate", &self.client_certificate),
            ("privateKey", &self.private_key),
        ] {
            notes.unhonoured(
                &format!("{at}.{field}"),
                value,
                "no client certificate is presented outside the mesh",
            );
        }
        notes.unhonoured(&format!("{at}.caCrl"), &self.ca_crl, "not implemented");
    }
}
