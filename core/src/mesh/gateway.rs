//! Names at a gateway's edge: the certificates of a TLS listener, and host-name patterns
//! (`*`, `*.example.com` or a name) as Gateways, VirtualServices and SNI use them.

use serde::{Deserialize, Serialize};

/// A certificate of a TLS listener, named by its credential (the gateway reads
/// `<credential dir>/<credential>/tls.crt` and `tls.key`: the private key never leaves it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerCert {
    /// The SNI names it serves (`*`, `*.example.com` or a name).
    pub hostnames: Vec<String>,
    pub credential: String,
}

/// Whether `pattern` (`*`, `*.example.com` or a name) matches `host` (no port).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    pattern == "*"
        || pattern.eq_ignore_ascii_case(host)
        || pattern.strip_prefix("*.").is_some_and(|suffix| {
            host.len() > suffix.len() + 1
                && host
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
        })
}
