//! `security.istio.io` AuthorizationPolicy: ALLOW/DENY/AUDIT/CUSTOM rules on sources,
//! operations and conditions.

use serde::Deserialize;

use crate::model::policy::common::{Notes, Selector, TargetRef, Unhonoured};

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(
    Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

/// A request's source.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (`<trust-domain>/ns/<ns>/sa/<sa>`; `*`, prefix `*` and suffix `*`).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Excluded identities.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Peer ServiceAccounts (`<ns>/<name>`, or `<name>` in the policy's namespace): the
    /// principals `*/ns/<ns>/sa/<name>` of any trust domain.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Excluded ServiceAccounts.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
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
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
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
        match self.action {
            Action::Custom => notes.note(
                "spec.action",
                "CUSTOM not honoured: Weft has no external authorizer, so what this policy matches is denied (fail closed)",
            ),
            Action::Audit => notes.note(
                "spec.action",
                "AUDIT not honoured: Weft does not write audit records; the policy decides nothing",
            ),
            Action::Allow | Action::Deny => {}
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
            // Attached to a Service or Gateway with targetRefs, a policy is judged at the
            // waypoint only, where every HTTP attribute is known: nothing to note.
            let attached = self.target_ref.is_some() || !self.target_refs.is_empty();
            if http && !attached {
                notes.note(
                    &format!("spec.rules[{i}]"),
                    "HTTP attributes are judged only on traffic through a waypoint; a node proxy (L4) reads this rule to deny more, never less (in ALLOW it does not match, in DENY it does)",
                );
            }
            for (j, from) in rule.from.iter().enumerate() {
                let at = |f: &str| format!("spec.rules[{i}].from[{j}].source.{f}");
                // Read as a condition Weft cannot evaluate: a DENY rule denies, an ALLOW rule
                // does not allow.
                let closed = "no JWT authentication; fails closed: in DENY the rule matches, in ALLOW it does not";
                notes.unhonoured(
                    &at("requestPrincipals"),
                    &from.source.request_principals,
                    closed,
                );
                notes.unhonoured(
                    &at("notRequestPrincipals"),
                    &from.source.not_request_principals,
                    closed,
                );
                let closed = "no X-Forwarded-For trust; fails closed: in DENY the rule matches, in ALLOW it does not";
                notes.unhonoured(&at("remoteIpBlocks"), &from.source.remote_ip_blocks, closed);
                notes.unhonoured(
                    &at("notRemoteIpBlocks"),
                    &from.source.not_remote_ip_blocks,
                    closed,
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
                            "{:?} is not an attribute Weft evaluates: in a DENY rule the condition matches (denies), in an ALLOW rule it does not (fails closed)",
                            c.key
                        ),
                    );
                }
            }
        }
    }
}
