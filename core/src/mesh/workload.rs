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
    /// What telemetry calls it: its workload, app and version (from the pod's owner and labels).
    #[serde(default, skip_serializing_if = "WorkloadMeta::is_empty")]
    pub meta: WorkloadMeta,
}

/// The names telemetry gives a pod beyond its own: the controller fills them from the pod's
/// owner and labels; an empty field falls back as each accessor says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadMeta {
    /// The owning Deployment, StatefulSet, DaemonSet or Job; empty: the pod's own name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// The pod's `app` label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// The pod's `version` label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`; empty:
    /// the workload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_service: String,
    /// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else
    /// `version`; empty: `latest`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_revision: String,
}

impl WorkloadMeta {
    /// Nothing known beyond the pod.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Workload {
    /// The workload name telemetry reports: the owner's, or the pod's own.
    pub fn workload_name(&self) -> &str {
        if self.meta.workload.is_empty() {
            &self.name
        } else {
            &self.meta.workload
        }
    }

    /// The canonical service telemetry reports.
    pub fn canonical_service(&self) -> &str {
        if self.meta.canonical_service.is_empty() {
            self.workload_name()
        } else {
            &self.meta.canonical_service
        }
    }

    /// The canonical revision telemetry reports.
    pub fn canonical_revision(&self) -> &str {
        if self.meta.canonical_revision.is_empty() {
            "latest"
        } else {
            &self.meta.canonical_revision
        }
    }
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
