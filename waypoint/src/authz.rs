//! L7 authorization with Istio's semantics: a request matching any DENY policy is denied; then,
//! if any ALLOW policy applies to the service, a request matching none of them is denied;
//! otherwise it is allowed.

use std::net::IpAddr;

use weft_core::l7::{
    AuthzAction, AuthzCondition, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource, glob_matches,
};

/// What a request is judged on.
pub(crate) struct Subject<'a> {
    /// The peer's SPIFFE ID without `spiffe://` (`cluster.local/ns/x/sa/y`), if mTLS.
    pub(crate) principal: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) ip: IpAddr,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) headers: &'a http::HeaderMap,
}

/// Denied by `policy` (named for the 403 body and the log).
pub(crate) struct Denied {
    pub(crate) policy: String,
}

pub(crate) fn check(policies: &[AuthzPolicy], subject: &Subject<'_>) -> Result<(), Denied> {
    for p in policies.iter().filter(|p| p.action == AuthzAction::Deny) {
        if p.rules.iter().any(|r| rule_matches(r, subject)) {
            return Err(Denied {
                policy: format!("DENY policy {}", p.name),
            });
        }
    }
    let allows: Vec<&AuthzPolicy> = policies
        .iter()
        .filter(|p| p.action == AuthzAction::Allow)
        .collect();
    if allows.is_empty()
        || allows
            .iter()
            .any(|p| p.rules.iter().any(|r| rule_matches(r, subject)))
    {
        return Ok(());
    }
    Err(Denied {
        policy: format!(
            "no ALLOW policy matched ({})",
            allows
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

fn any_or_empty(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob_matches(p, v)))
}

fn none_of(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || !value.is_some_and(|v| patterns.iter().any(|p| glob_matches(p, v)))
}

fn in_blocks(blocks: &[String], ip: IpAddr) -> bool {
    blocks.iter().any(|b| {
        let (addr, len) = b.split_once('/').unwrap_or((b, ""));
        let Ok(net) = addr.parse::<IpAddr>() else {
            return false;
        };
        match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let len: u32 = len.parse().unwrap_or(32).min(32);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(n) & mask == u32::from(i) & mask
            }
            (n, i) => n == i,
        }
    })
}

fn source_matches(s: &AuthzSource, subject: &Subject<'_>) -> bool {
    any_or_empty(&s.principals, subject.principal)
        && none_of(&s.not_principals, subject.principal)
        && any_or_empty(&s.namespaces, subject.namespace)
        && none_of(&s.not_namespaces, subject.namespace)
        && (s.ip_blocks.is_empty() || in_blocks(&s.ip_blocks, subject.ip))
        && !in_blocks(&s.not_ip_blocks, subject.ip)
}

fn operation_matches(o: &AuthzOperation, subject: &Subject<'_>) -> bool {
    let port = subject.port.to_string();
    any_or_empty(&o.methods, Some(subject.method))
        && none_of(&o.not_methods, Some(subject.method))
        && any_or_empty(&o.paths, Some(subject.path))
        && none_of(&o.not_paths, Some(subject.path))
        && any_or_empty(&o.ports, Some(&port))
        && none_of(&o.not_ports, Some(&port))
        && any_or_empty(&o.hosts, Some(subject.host))
        && none_of(&o.not_hosts, Some(subject.host))
}

fn condition_matches(c: &AuthzCondition, subject: &Subject<'_>) -> bool {
    let port = subject.port.to_string();
    let ip = subject.ip.to_string();
    let value: Option<String> = match c.key.as_str() {
        "source.ip" => Some(ip),
        "source.namespace" => subject.namespace.map(str::to_owned),
        "source.principal" => subject.principal.map(str::to_owned),
        "destination.port" => Some(port),
        key => key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
            .and_then(|name| subject.headers.get(name.to_ascii_lowercase().as_str()))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let value = value.as_deref();
    any_or_empty(&c.values, value) && none_of(&c.not_values, value)
}

fn rule_matches(rule: &AuthzRule, subject: &Subject<'_>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, subject)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, subject)))
        && rule.when.iter().all(|c| condition_matches(c, subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guide_policy() -> AuthzPolicy {
        AuthzPolicy {
            name: "default/allow-get-reviews".into(),
            action: AuthzAction::Allow,
            rules: vec![AuthzRule {
                from: vec![AuthzSource {
                    principals: vec!["cluster.local/ns/default/sa/bookinfo-productpage".into()],
                    ..AuthzSource::default()
                }],
                to: vec![AuthzOperation {
                    methods: vec!["GET".into()],
                    ..AuthzOperation::default()
                }],
                when: vec![],
            }],
        }
    }

    fn subject<'a>(
        principal: &'a str,
        method: &'a str,
        headers: &'a http::HeaderMap,
    ) -> Subject<'a> {
        Subject {
            principal: Some(principal),
            namespace: Some("default"),
            ip: "10.0.0.1".parse().expect("ip"),
            method,
            path: "/reviews/1",
            host: "reviews",
            port: 9080,
            headers,
        }
    }

    #[test]
    fn istio_semantics_deny_first_then_allow() {
        let h = http::HeaderMap::new();
        let allow = vec![guide_policy()];
        let pp = "cluster.local/ns/default/sa/bookinfo-productpage";
        assert!(check(&allow, &subject(pp, "GET", &h)).is_ok());
        assert!(check(&allow, &subject(pp, "POST", &h)).is_err());
        assert!(
            check(
                &allow,
                &subject("cluster.local/ns/default/sa/other", "GET", &h)
            )
            .is_err()
        );
        assert!(
            check(&[], &subject("x", "DELETE", &h)).is_ok(),
            "no policy: allowed"
        );
        let mut both = allow;
        both.push(AuthzPolicy {
            name: "default/deny-all-from-pp".into(),
            action: AuthzAction::Deny,
            rules: vec![AuthzRule {
                from: vec![AuthzSource {
                    principals: vec!["*/sa/bookinfo-productpage".into()],
                    ..AuthzSource::default()
                }],
                ..AuthzRule::default()
            }],
        });
        assert!(check(&both, &subject(pp, "GET", &h)).is_err(), "DENY wins");
        // An ALLOW policy without rules allows nothing.
        let empty = vec![AuthzPolicy {
            name: "default/none".into(),
            action: AuthzAction::Allow,
            rules: vec![],
        }];
        assert!(check(&empty, &subject(pp, "GET", &h)).is_err());
    }
}
