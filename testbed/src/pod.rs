//! Nodes and pods as the test bed made them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use weft_core::identity::SpiffeId;

/// A node of the test bed.
#[derive(Clone, Debug)]
pub struct Node {
    /// Logical name (`node1`...), as workloads refer to it.
    pub name: String,
    /// The network namespace.
    pub netns: String,
    /// Its address on the fabric.
    pub ip: Ipv4Addr,
    /// Pod subnet (`/24`).
    pub pod_subnet: Ipv4Addr,
}

/// A pod of the test bed.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    pub service_account: String,
    /// Index of its node.
    pub node: usize,
    /// The network namespace.
    pub netns: String,
    /// The IP the CNI plugin gave it.
    pub ip: Ipv4Addr,
    /// Whether it is enrolled in the mesh.
    pub enrolled: bool,
    /// The primary (bridge) plugin's result, the `prevResult` weft-cni is chained on.
    pub cni_result: String,
    /// Extra labels (e.g. `version: v1`).
    pub labels: Vec<(String, String)>,
}

impl Pod {
    /// `/run/netns/<netns>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Its SPIFFE identity.
    pub fn identity(&self) -> SpiffeId {
        SpiffeId::new("cluster.local", &self.namespace, &self.service_account)
    }
}
