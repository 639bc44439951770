//! Workloads: a pod as the proxies know it, its identity's service account, whether it speaks
//! HBONE, and which inbound connections it takes (mTLS mode, L4 authorization).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::authz::AuthzPolicy;

/// How a workload receives mesh traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Enrolled: captured by its node proxy, reached over HBONE.
    #[default]
    Hbone,
    /// Not in the mesh: reached with plain TCP.
    Tcp,
}

/// A pod, as the proxies see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account: the identity is derived from it.
    pub service_account: String,
    /// Pod IP.
    pub ip: IpAddr,
    /// Node the pod runs on.
    pub node: String,
    /// Whether the pod is enrolled (HBONE) or not (TCP).
    #[serde(default)]
    pub protocol: Protocol,
    /// The pod's network namespace, as the node proxy on its node opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Whether plaintext may reach it (PeerAuthentication PERMISSIVE), by default and per port.
    #[serde(default, skip_serializing_if = "MtlsPolicy::is_strict")]
    pub mtls: MtlsPolicy,
    /// Authorization policies its node proxy enforces on connections to it (L4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authz: Vec<AuthzPolicy>,
}

/// Which inbound connections an enrolled workload accepts (PeerAuthentication).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsPolicy {
    /// Plaintext accepted on every port (PERMISSIVE).
    #[serde(default)]
    pub permissive: bool,
    /// Ports where the opposite of `permissive` holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except_ports: Vec<u16>,
}

impl MtlsPolicy {
    /// STRICT everywhere.
    pub fn is_strict(&self) -> bool {
        !self.permissive && self.except_ports.is_empty()
    }

    /// Whether plaintext to `port` is accepted.
    pub fn accepts_plaintext(&self, port: u16) -> bool {
        self.permissive != self.except_ports.contains(&port)
    }
}
