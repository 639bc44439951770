//! Authorization policies as proxies apply them (Istio's AuthorizationPolicy, translated):
//! node proxies judge connections with them (L4), waypoints requests (L7). The evaluator is
//! `crate::authz`.

use serde::{Deserialize, Serialize};

/// ALLOW or DENY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthzAction {
    /// Allow matching requests; once any ALLOW policy applies, the rest are denied.
    Allow,
    /// Deny matching requests.
    Deny,
}

/// An authorization policy as it applies to a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzPolicy {
    /// `namespace/name` of the AuthorizationPolicy (for the 403 body and logs).
    pub name: String,
    /// Action.
    pub action: AuthzAction,
    /// Rules; any one matching matches the policy. None: matches nothing.
    pub rules: Vec<AuthzRule>,
}

/// A rule: every non-empty part must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    /// Sources; any one.
    #[serde(default)]
    pub from: Vec<AuthzSource>,
    /// Operations; any one.
    #[serde(default)]
    pub to: Vec<AuthzOperation>,
    /// Conditions; all.
    #[serde(default)]
    pub when: Vec<AuthzCondition>,
}

/// A source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzSource {
    /// `<td>/ns/<ns>/sa/<sa>` patterns (`*`, `prefix*`, `*suffix`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
}

/// An operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzOperation {
    /// Methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths (`*`, `prefix*`, `*suffix`).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_paths: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_hosts: Vec<String>,
}

/// A condition (`request.headers[x]`, `source.ip`, `source.namespace`, `source.principal`,
/// `destination.port`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzCondition {
    /// Attribute.
    pub key: String,
    /// Values; any one.
    #[serde(default)]
    pub values: Vec<String>,
    /// Excluded.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// `*`, `prefix*`, `*suffix` or an exact value, as Istio's string fields match.
pub fn glob_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_istio_matches_them() {
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("/api/*", "/api/v1"));
        assert!(glob_matches("*/admin", "/x/admin"));
        assert!(glob_matches("GET", "GET"));
        assert!(!glob_matches("GET", "POST"));
        assert!(!glob_matches("/api/*", "/apx"));
    }
}
