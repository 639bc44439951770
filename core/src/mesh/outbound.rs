//! Where enrolled pods may connect outside the mesh: the outbound traffic policy (`ALLOW_ANY`,
//! or `REGISTRY_ONLY` mesh-wide and per namespace) and the external services the registry
//! holds besides the mesh's own (Istio's ServiceEntry): addresses and ports. Under
//! `REGISTRY_ONLY` a connection to an address that is neither a mesh workload or service nor an
//! external service's is refused by the source's node proxy.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::service::WaypointRef;

/// The outbound traffic policy and the external services.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    /// `REGISTRY_ONLY` mesh-wide (else `ALLOW_ANY`).
    #[serde(default)]
    pub registry_only: bool,
    /// Namespaces whose mode is not the mesh's: namespace → `REGISTRY_ONLY`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, bool>,
    /// Destinations outside the mesh that the registry holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<External>,
    /// The node proxies answer enrolled pods' DNS queries for the registry's names (services,
    /// external hosts); off, every query is forwarded upstream unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dns_proxy: bool,
}

/// An external service (a ServiceEntry): where it is, and on which ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct External {
    pub name: String,
    pub namespace: String,
    /// Its host names (for logs; resolving them is the DNS proxy's).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Its addresses (`10.1.2.3` or `10.1.0.0/16`).
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    /// Its ports (none: every port).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Addresses the mesh gave its hosts, from a block no network uses (240.240.0.0/16), where
    /// it has none of its own to answer DNS with: connections to one go to the entry's
    /// endpoints, or its host as resolved upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocated: Vec<HostAddress>,
    /// Ports whose connections go through an egress gateway instead of straight out (a
    /// VirtualService routes the mesh's traffic for the entry's hosts to the gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<EgressVia>,
}

/// A host name and the address given to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostAddress {
    pub host: String,
    pub ip: std::net::Ipv4Addr,
}

/// An egress gateway a connection to an external service is carried to, over HBONE with the
/// source's identity, addressed to one of the gateway's listeners (which routes it by host).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressVia {
    /// The connection's destination port (none: every port of the entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The gateway: its pod's address and the identity it proves.
    pub gateway: WaypointRef,
    /// The gateway's listener the tunnel is addressed to.
    pub gateway_port: u16,
}

/// A destination outside the mesh, as an egress gateway reaches it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalBackend {
    /// Its host name.
    pub host: String,
    /// Its addresses (a ServiceEntry's STATIC endpoints); none: the host is resolved by DNS
    /// for each new connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Set: the gateway speaks TLS to it (a DestinationRule's `tls.mode: SIMPLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsOrigination>,
}

/// TLS originated to a destination outside the mesh: the server's certificate must chain to
/// the given CAs and name `sni` (or one of `subjectAltNames`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsOrigination {
    /// The name sent in SNI.
    pub sni: String,
    /// A PEM file of CA certificates on the gateway (`caCertificates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// A credential mounted on the gateway (`credentialName`): its `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Names the certificate may hold instead of `sni`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

impl External {
    /// Whether a connection to `dst` is for it.
    pub fn holds(&self, dst: SocketAddr) -> bool {
        (self.addresses.iter().any(|a| a.contains(dst.ip()))
            || self.allocated_host(dst.ip()).is_some())
            && (self.ports.is_empty() || self.ports.contains(&dst.port()))
    }

    /// The host whose allocated address `ip` is, if any.
    pub fn allocated_host(&self, ip: IpAddr) -> Option<&str> {
        self.allocated
            .iter()
            .find(|a| IpAddr::V4(a.ip) == ip)
            .map(|a| a.host.as_str())
    }

    /// The addresses DNS answers for `host` (one of its hosts): its own single addresses,
    /// else the one allocated to the host.
    pub fn addresses_of(&self, host: &str) -> Vec<std::net::Ipv4Addr> {
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Vec::new();
        }
        let own: Vec<_> = self
            .addresses
            .iter()
            .filter_map(|a| match a.ip {
                IpAddr::V4(ip) if a.prefix == 32 => Some(ip),
                _ => None,
            })
            .collect();
        if !own.is_empty() {
            return own;
        }
        self.allocated
            .iter()
            .filter(|a| a.host.eq_ignore_ascii_case(host))
            .map(|a| a.ip)
            .collect()
    }

    /// The egress gateway a connection to port `port` goes through, if any.
    pub fn via_for(&self, port: u16) -> Option<&EgressVia> {
        self.via.iter().find(|v| v.port.is_none_or(|p| p == port))
    }
}

impl Outbound {
    /// Whether pods of `namespace` may reach only what the registry holds.
    pub fn registry_only(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.registry_only)
    }

    /// The external service a connection to `dst` is for, if any.
    pub fn external_for(&self, dst: SocketAddr) -> Option<&External> {
        self.external.iter().find(|e| e.holds(dst))
    }

    /// Whether nothing is set (the file form leaves it out).
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// An address block: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|e| format!("{text:?} is not an address or block: {e}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length is 0 to {max}"))?,
        };
        Ok(Self { ip, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_their_addresses_and_a_namespace_overrides_the_mesh() {
        let block: Cidr = "203.0.113.0/24".parse().expect("cidr");
        assert!(block.contains("203.0.113.7".parse().expect("ip")));
        assert!(!block.contains("203.0.114.7".parse().expect("ip")));
        let one: Cidr = "198.51.100.9".parse().expect("cidr");
        assert_eq!(one.prefix, 32);
        assert!(one.contains("198.51.100.9".parse().expect("ip")));
        assert!(!one.contains("198.51.100.8".parse().expect("ip")));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .expect("all")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
        let outbound = Outbound {
            registry_only: true,
            namespaces: [("legacy".to_owned(), false)].into(),
            external: vec![External {
                name: "api".into(),
                namespace: "shop".into(),
                hosts: vec!["api.example.test".into()],
                addresses: vec![block],
                ports: vec![443],
                allocated: Vec::new(),
                via: Vec::new(),
            }],
            dns_proxy: false,
        };
        assert!(outbound.registry_only("shop"));
        assert!(!outbound.registry_only("legacy"));
        assert!(
            outbound
                .external_for("203.0.113.7:443".parse().expect("addr"))
                .is_some()
        );
        assert!(
            outbound
                .external_for("203.0.113.7:80".parse().expect("addr"))
                .is_none()
        );
    }
}
