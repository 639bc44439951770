//! Authorization policies as protobuf messages, and back. An action this proxy does not know
//! refuses the update: it could deny more.

use super::field::{FieldError, Result};
use super::v1;
use crate::mesh::{
    AuthzAction, AuthzCondition, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource,
};

impl From<&AuthzPolicy> for v1::AuthzPolicy {
    fn from(p: &AuthzPolicy) -> Self {
        Self {
            name: p.name.clone(),
            action: match p.action {
                AuthzAction::Allow => v1::AuthzAction::Allow,
                AuthzAction::Deny => v1::AuthzAction::Deny,
            } as i32,
            rules: p
                .rules
                .iter()
                .map(|r| v1::AuthzRule {
                    from: r
                        .from
                        .iter()
                        .map(|s| v1::AuthzSource {
                            principals: s.principals.clone(),
                            not_principals: s.not_principals.clone(),
                            namespaces: s.namespaces.clone(),
                            not_namespaces: s.not_namespaces.clone(),
                            ip_blocks: s.ip_blocks.clone(),
                            not_ip_blocks: s.not_ip_blocks.clone(),
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|o| v1::AuthzOperation {
                            methods: o.methods.clone(),
                            not_methods: o.not_methods.clone(),
                            paths: o.paths.clone(),
                            not_paths: o.not_paths.clone(),
                            ports: o.ports.clone(),
                            not_ports: o.not_ports.clone(),
                            hosts: o.hosts.clone(),
                            not_hosts: o.not_hosts.clone(),
                        })
                        .collect(),
                    when: r
                        .when
                        .iter()
                        .map(|c| v1::AuthzCondition {
                            key: c.key.clone(),
                            values: c.values.clone(),
                            not_values: c.not_values.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

pub(super) fn authz_from(p: &v1::AuthzPolicy) -> Result<AuthzPolicy> {
    let action = match v1::AuthzAction::try_from(p.action) {
        Ok(v1::AuthzAction::Allow) => AuthzAction::Allow,
        Ok(v1::AuthzAction::Deny) => AuthzAction::Deny,
        // An action this proxy does not know could deny more: refuse the update rather than
        // guess.
        Err(_) => {
            return Err(FieldError::new(
                "action",
                format!("unknown action {}", p.action),
            ));
        }
    };
    Ok(AuthzPolicy {
        name: p.name.clone(),
        action,
        rules: p
            .rules
            .iter()
            .map(|r| AuthzRule {
                from: r
                    .from
                    .iter()
                    .map(|s| AuthzSource {
                        principals: s.principals.clone(),
                        not_principals: s.not_principals.clone(),
                        namespaces: s.namespaces.clone(),
                        not_namespaces: s.not_namespaces.clone(),
                        ip_blocks: s.ip_blocks.clone(),
                        not_ip_blocks: s.not_ip_blocks.clone(),
                    })
                    .collect(),
                to: r
                    .to
                    .iter()
                    .map(|o| AuthzOperation {
                        methods: o.methods.clone(),
                        not_methods: o.not_methods.clone(),
                        paths: o.paths.clone(),
                        not_paths: o.not_paths.clone(),
                        ports: o.ports.clone(),
                        not_ports: o.not_ports.clone(),
                        hosts: o.hosts.clone(),
                        not_hosts: o.not_hosts.clone(),
                    })
                    .collect(),
                when: r
                    .when
                    .iter()
                    .map(|c| AuthzCondition {
                        key: c.key.clone(),
                        values: c.values.clone(),
                        not_values: c.not_values.clone(),
                    })
                    .collect(),
            })
            .collect(),
    })
}
