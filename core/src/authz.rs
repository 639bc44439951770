//! Authorization with Istio's semantics: a request matching any DENY policy is denied; then, if
//! any ALLOW policy applies, a request matching none of them is denied; otherwise it is allowed.
//!
//! Waypoints judge HTTP requests (every attribute known). Node proxies judge connections (L4):
//! there the HTTP attributes (methods, paths, hosts, request headers) are unknown, and a rule
//! that needs them is read to deny more, never less: in a DENY policy it matches, in an ALLOW
//! policy it does not. The same holds for anything else Weft cannot read (a condition on an
//! attribute it does not know, an address block that does not parse): a policy Weft cannot
//! evaluate fails closed.

use std::net::IpAddr;

use crate::mesh::{
    AuthzAction, AuthzCondition, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource, glob_matches,
};

/// What a request or connection is judged on.
pub struct Subject<'a> {
    /// The peer's SPIFFE ID without `spiffe://` (`cluster.local/ns/x/sa/y`), if mTLS.
    pub principal: Option<&'a str>,
    /// The peer's namespace, if mTLS.
    pub namespace: Option<&'a str>,
    /// The client's address.
    pub ip: IpAddr,
    /// The destination port.
    pub port: u16,
    /// The HTTP request, where it is known (at a waypoint).
    pub request: Option<Request<'a>>,
}

/// The HTTP attributes of a request.
pub struct Request<'a> {
    /// Method.
    pub method: &'a str,
    /// Path.
    pub path: &'a str,
    /// Host, without the port.
    pub host: &'a str,
    /// Headers.
    pub headers: &'a http::HeaderMap,
}

/// Denied by `policy` (named for the 403 body and the log).
#[derive(Debug)]
pub struct Denied {
    /// Which policy, or that no ALLOW policy matched.
    pub policy: String,
}

/// Judges `subject` under `policies` (those that apply to its destination).
pub fn check(policies: &[AuthzPolicy], subject: &Subject<'_>) -> Result<(), Denied> {
    for p in policies.iter().filter(|p| p.action == AuthzAction::Deny) {
        if p.rules.iter().any(|r| rule_matches(r, subject, true)) {
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
            .any(|p| p.rules.iter().any(|r| rule_matches(r, subject, false)))
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

/// Whether `ip` is in one of `blocks` (addresses or CIDRs, IPv4 or IPv6). A block that does not
/// parse counts as `unreadable`: the caller says which answer denies more.
fn in_blocks(blocks: &[String], ip: IpAddr, unreadable: bool) -> bool {
    blocks.iter().any(|b| in_block(b, ip).unwrap_or(unreadable))
}

fn in_block(block: &str, ip: IpAddr) -> Option<bool> {
    let (addr, len) = match block.split_once('/') {
        Some((addr, len)) => (addr, Some(len.parse::<u32>().ok()?)),
        None => (block, None),
    };
    Some(match (addr.parse::<IpAddr>().ok()?, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return None;
            }
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return None;
            }
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    })
}

/// `unknown`: what an attribute Weft cannot read gives (true in DENY, false in ALLOW).
fn source_matches(s: &AuthzSource, subject: &Subject<'_>, unknown: bool) -> bool {
    any_or_empty(&s.principals, subject.principal)
        && none_of(&s.not_principals, subject.principal)
        && any_or_empty(&s.namespaces, subject.namespace)
        && none_of(&s.not_namespaces, subject.namespace)
        && (s.ip_blocks.is_empty() || in_blocks(&s.ip_blocks, subject.ip, unknown))
        && !in_blocks(&s.not_ip_blocks, subject.ip, !unknown)
}

/// `unknown`: what an HTTP attribute test gives where the request is not known (L4).
fn operation_matches(o: &AuthzOperation, subject: &Subject<'_>, unknown: bool) -> bool {
    let port = subject.port.to_string();
    let l4 = any_or_empty(&o.ports, Some(&port)) && none_of(&o.not_ports, Some(&port));
    let needs_l7 = [
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
        &o.hosts,
        &o.not_hosts,
    ]
    .iter()
    .any(|v| !v.is_empty());
    let l7 = match &subject.request {
        Some(r) => {
            any_or_empty(&o.methods, Some(r.method))
                && none_of(&o.not_methods, Some(r.method))
                && any_or_empty(&o.paths, Some(r.path))
                && none_of(&o.not_paths, Some(r.path))
                && any_or_empty(&o.hosts, Some(r.host))
                && none_of(&o.not_hosts, Some(r.host))
        }
        None => !needs_l7 || unknown,
    };
    l4 && l7
}

fn condition_matches(c: &AuthzCondition, subject: &Subject<'_>, unknown: bool) -> bool {
    let port = subject.port.to_string();
    let ip = subject.ip.to_string();
    let value: Option<String> = match c.key.as_str() {
        "source.ip" => Some(ip),
        "source.namespace" => subject.namespace.map(str::to_owned),
        "source.principal" => subject.principal.map(str::to_owned),
        "destination.port" => Some(port),
        key => {
            let Some(name) = key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'))
            else {
                // An attribute Weft cannot evaluate: a DENY rule denies, an ALLOW rule does not
                // allow.
                return unknown;
            };
            let Some(request) = &subject.request else {
                return unknown;
            };
            request
                .headers
                .get(name.to_ascii_lowercase().as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }
    };
    let value = value.as_deref();
    any_or_empty(&c.values, value) && none_of(&c.not_values, value)
}

fn rule_matches(rule: &AuthzRule, subject: &Subject<'_>, unknown: bool) -> bool {
    (rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|s| source_matches(s, subject, unknown)))
        && (rule.to.is_empty()
            || rule
                .to
                .iter()
                .any(|o| operation_matches(o, subject, unknown)))
        && rule
            .when
            .iter()
            .all(|c| condition_matches(c, subject, unknown))
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
            port: 9080,
            request: Some(Request {
                method,
                path: "/reviews/1",
                host: "reviews",
                headers,
            }),
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

    #[test]
    fn at_l4_http_rules_deny_more_never_less() {
        let pp = "cluster.local/ns/default/sa/bookinfo-productpage";
        let connection = |principal| Subject {
            principal: Some(principal),
            namespace: Some("default"),
            ip: "10.0.0.1".parse().expect("ip"),
            port: 9080,
            request: None,
        };
        // ALLOW GET from productpage: a connection cannot show it is a GET: denied.
        assert!(check(&[guide_policy()], &connection(pp)).is_err());
        // ALLOW by principal only: decided at L4.
        let by_principal = AuthzPolicy {
            name: "default/pp".into(),
            action: AuthzAction::Allow,
            rules: vec![AuthzRule {
                from: vec![AuthzSource {
                    principals: vec![pp.into()],
                    ..AuthzSource::default()
                }],
                ..AuthzRule::default()
            }],
        };
        assert!(check(std::slice::from_ref(&by_principal), &connection(pp)).is_ok());
        assert!(check(&[by_principal], &connection("cluster.local/ns/x/sa/y")).is_err());
        // DENY POST: at L4 it may be a POST: denied.
        let deny_post = AuthzPolicy {
            name: "default/no-post".into(),
            action: AuthzAction::Deny,
            rules: vec![AuthzRule {
                to: vec![AuthzOperation {
                    methods: vec!["POST".into()],
                    ..AuthzOperation::default()
                }],
                ..AuthzRule::default()
            }],
        };
        assert!(check(&[deny_post], &connection(pp)).is_err());
    }

    fn l4(ip: &str) -> Subject<'static> {
        Subject {
            principal: Some("cluster.local/ns/shop/sa/client"),
            namespace: Some("shop"),
            ip: ip.parse().expect("ip"),
            port: 8080,
            request: None,
        }
    }

    fn policy(action: AuthzAction, rule: AuthzRule) -> AuthzPolicy {
        AuthzPolicy {
            name: "shop/p".into(),
            action,
            rules: vec![rule],
        }
    }

    #[test]
    fn a_condition_weft_cannot_evaluate_denies_in_deny_and_does_not_allow_in_allow() {
        let unknown = AuthzRule {
            when: vec![AuthzCondition {
                key: "request.auth.claims[groups]".into(),
                values: vec!["admin".into()],
                not_values: vec![],
            }],
            ..AuthzRule::default()
        };
        let deny = policy(AuthzAction::Deny, unknown.clone());
        assert!(check(&[deny], &l4("10.0.0.1")).is_err(), "DENY must deny");
        let allow = policy(AuthzAction::Allow, unknown);
        assert!(
            check(&[allow], &l4("10.0.0.1")).is_err(),
            "ALLOW must not allow"
        );
    }

    #[test]
    fn ip_blocks_honour_prefixes_in_both_families_and_unreadable_blocks_fail_closed() {
        let from = |blocks: &[&str]| AuthzRule {
            from: vec![AuthzSource {
                ip_blocks: blocks.iter().map(|b| (*b).to_owned()).collect(),
                ..AuthzSource::default()
            }],
            ..AuthzRule::default()
        };
        let deny_v6 = policy(AuthzAction::Deny, from(&["2001:db8::/32"]));
        assert!(check(std::slice::from_ref(&deny_v6), &l4("2001:db8:1::7")).is_err());
        assert!(check(&[deny_v6], &l4("2001:db9::7")).is_ok());
        let deny_v4 = policy(AuthzAction::Deny, from(&["10.1.0.0/16"]));
        assert!(check(std::slice::from_ref(&deny_v4), &l4("10.1.200.3")).is_err());
        assert!(check(&[deny_v4], &l4("10.2.0.3")).is_ok());
        let garbled = policy(AuthzAction::Deny, from(&["10.1.0.0/99"]));
        assert!(
            check(&[garbled], &l4("10.9.9.9")).is_err(),
            "DENY on an unreadable block denies"
        );
        let garbled = policy(AuthzAction::Allow, from(&["not-an-ip"]));
        assert!(
            check(&[garbled], &l4("10.9.9.9")).is_err(),
            "ALLOW on an unreadable block does not allow"
        );
    }
}
