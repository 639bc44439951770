//! Istio's AuthorizationPolicy as proxies apply it: at a waypoint, the policies for a bound
//! service (selector, or `targetRefs` naming the Service or the waypoint's Gateway); at a node
//! proxy, the policies selecting the pod.

use weft_core::mesh::{AuthzAction, AuthzCondition, AuthzPolicy, AuthzRule, AuthzSource};

use super::common::{ROOT_NAMESPACES, labels_match};
use super::endpoints::Membership;
use crate::model::key::ObjectKey;
use crate::model::objects::{Objects, Pod, Service};
use crate::model::policy::PolicySpec;
use crate::model::policy::common::TargetRef;
use crate::model::policy::istio::{self, Action};

pub(crate) fn authz_for(
    objects: &Objects,
    members: &Membership<'_>,
    svc: &Service,
    waypoint: &ObjectKey,
) -> Vec<AuthzPolicy> {
    let members: Vec<&Pod> = members.endpoints(svc);
    let mut out = Vec::new();
    for p in objects.policies.values() {
        let PolicySpec::AuthorizationPolicy(ap) = &p.spec else {
            continue;
        };
        let action = match ap.action {
            Action::Allow => AuthzAction::Allow,
            Action::Deny => AuthzAction::Deny,
            // Weft has no external authorizer: what a CUSTOM policy matches is denied (fail
            // closed). AUDIT only logs in Istio; it decides nothing.
            Action::Custom => AuthzAction::Deny,
            Action::Audit => continue,
        };
        let root = ROOT_NAMESPACES.contains(&p.key.namespace.as_str());
        let targets: Vec<&TargetRef> = ap.target_ref.iter().chain(ap.target_refs.iter()).collect();
        let applies = if !targets.is_empty() {
            targets.iter().any(|t| {
                let ns = t.namespace.as_deref().unwrap_or(&p.key.namespace);
                (t.kind == "Service" && t.name == svc.name && ns == svc.namespace)
                    || (t.kind == "Gateway" && t.name == waypoint.name && ns == waypoint.namespace)
            })
        } else if p.key.namespace == svc.namespace || root {
            match &ap.selector {
                None => true,
                Some(sel) => members
                    .iter()
                    .any(|m| labels_match(&sel.match_labels, &m.labels)),
            }
        } else {
            false
        };
        if !applies {
            continue;
        }
        out.push(to_authz(&p.key, action, ap));
    }
    out
}

/// An AuthorizationPolicy as proxies apply it.
fn to_authz(
    key: &ObjectKey,
    action: AuthzAction,
    ap: &istio::AuthorizationPolicySpec,
) -> AuthzPolicy {
    AuthzPolicy {
        name: key.to_string(),
        action,
        rules: ap
            .rules
            .iter()
            .flatten()
            .map(|r| {
                let account = |sa: &String| match sa.split_once('/') {
                    Some((ns, name)) => format!("*/ns/{ns}/sa/{name}"),
                    None => format!("*/ns/{}/sa/{sa}", key.namespace),
                };
                let mut when = r.when.clone();
                // Sources Weft cannot verify (a JWT, a forwarded client address) become
                // conditions it cannot evaluate, which fail closed.
                for f in &r.from {
                    for (set, attribute) in [
                        (
                            f.source.request_principals.is_set(),
                            "request.auth.principal",
                        ),
                        (
                            f.source.not_request_principals.is_set(),
                            "request.auth.principal",
                        ),
                        (f.source.remote_ip_blocks.is_set(), "remote.ip"),
                        (f.source.not_remote_ip_blocks.is_set(), "remote.ip"),
                    ] {
                        if set {
                            when.push(AuthzCondition {
                                key: attribute.into(),
                                values: vec!["*".into()],
                                not_values: Vec::new(),
                            });
                        }
                    }
                }
                AuthzRule {
                    from: r
                        .from
                        .iter()
                        .map(|f| AuthzSource {
                            principals: f
                                .source
                                .principals
                                .iter()
                                .cloned()
                                .chain(f.source.service_accounts.iter().map(account))
                                .collect(),
                            not_principals: f
                                .source
                                .not_principals
                                .iter()
                                .cloned()
                                .chain(f.source.not_service_accounts.iter().map(account))
                                .collect(),
                            namespaces: f.source.namespaces.clone(),
                            not_namespaces: f.source.not_namespaces.clone(),
                            ip_blocks: f.source.ip_blocks.clone(),
                            not_ip_blocks: f.source.not_ip_blocks.clone(),
                        })
                        .collect(),
                    to: r.to.iter().map(|t| t.operation.clone()).collect(),
                    when,
                }
            })
            .collect(),
    }
}

/// The AuthorizationPolicies a node proxy enforces on connections to `pod`: those selecting it
/// (or its whole namespace, or the mesh from the root namespace) that are not attached to a
/// Service or Gateway with `targetRefs`.
pub fn workload_authz(objects: &Objects, pod: &Pod) -> Vec<AuthzPolicy> {
    let mut out = Vec::new();
    for p in objects.policies.values() {
        let PolicySpec::AuthorizationPolicy(ap) = &p.spec else {
            continue;
        };
        if ap.target_ref.is_some() || !ap.target_refs.is_empty() {
            continue;
        }
        let action = match ap.action {
            Action::Allow => AuthzAction::Allow,
            Action::Deny => AuthzAction::Deny,
            // Weft has no external authorizer: what a CUSTOM policy matches is denied (fail
            // closed). AUDIT only logs in Istio; it decides nothing.
            Action::Custom => AuthzAction::Deny,
            Action::Audit => continue,
        };
        let in_scope =
            p.key.namespace == pod.namespace || ROOT_NAMESPACES.contains(&p.key.namespace.as_str());
        let selected = ap
            .selector
            .as_ref()
            .is_none_or(|sel| labels_match(&sel.match_labels, &pod.labels));
        if in_scope && selected {
            out.push(to_authz(&p.key, action, ap));
        }
    }
    out
}
