//! SPIFFE IDs: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.

use std::fmt;
use std::str::FromStr;

/// The default trust domain, as in Kubernetes and Istio.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A SPIFFE identity of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a Weft SPIFFE identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    /// The string does not start with `spiffe://`.
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    /// The path is not `/ns/<namespace>/sa/<serviceaccount>` with Kubernetes names.
    #[error(
        "{0:?} is not a workload SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>, with Kubernetes names"
    )]
    Path(String),
}

impl SpiffeId {
    /// Builds the identity of a service account.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace of the service account.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account name.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The principal as Istio's AuthorizationPolicy spells it: the ID without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Written as its URI (`spiffe://...`) in YAML and JSON.
impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa]
                if valid_trust_domain(td) && valid_name(ns) && valid_name(sa) =>
            {
                Ok(Self::new(td, ns, sa))
            }
            _ => Err(SpiffeIdError::Path(s.to_owned())),
        }
    }
}

/// Whether `name` is a Kubernetes object name (a DNS-1123 subdomain: lowercase letters, digits,
/// `-` and `.`, starting and ending with a letter or digit, at most 253 characters). Namespaces
/// and service accounts become path components of certificate directories: `..` must never
/// pass.
pub fn valid_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.contains("..")
}

/// Whether `td` is a SPIFFE trust domain (lowercase letters, digits, `.`, `-`, `_`).
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        && td != "."
        && td != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_workload_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/reviews"
            .parse()
            .expect("valid id");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/reviews");
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/reviews");
    }

    #[test]
    fn rejects_non_workload_ids() {
        assert!(matches!(
            "https://cluster.local/ns/a/sa/b".parse::<SpiffeId>(),
            Err(SpiffeIdError::Scheme(_))
        ));
        for bad in [
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a/sa/..",
            "spiffe://cluster.local/ns/./sa/b",
            "spiffe://cluster.local/ns/Shop/sa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
            "spiffe://../ns/a/sa/b",
        ] {
            assert!(
                matches!(bad.parse::<SpiffeId>(), Err(SpiffeIdError::Path(_))),
                "{bad}"
            );
        }
    }
}
