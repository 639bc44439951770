//! The controller's gRPC layer: the config stream ([`config`]) and the certificate service
//! ([`certs`]), both authenticating the calling node by its credential.

pub mod certs;
pub mod config;
pub mod publish;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use weft_core::api::Resources;
use weft_core::mesh::MeshConfig;

/// What the controller currently tells the proxies.
#[derive(Debug, Default)]
pub struct Published {
    /// The mesh config (the CA authorizes against it).
    pub mesh: MeshConfig,
    /// The same, as stream resources (with the trust bundle).
    pub resources: Resources,
    /// Running waypoints' identities, by the name they stream as (`waypoint.<ns>.<name>`).
    pub waypoints: BTreeMap<String, weft_core::identity::SpiffeId>,
}

/// Prefix of the names waypoints stream as.
pub const WAYPOINT_PREFIX: &str = "waypoint.";

impl Published {
    /// The identity `caller` may have as a waypoint: a caller named after a waypoint (local
    /// credentials) or authenticated as its service account (`sa:<ns>:<sa>`, TokenReview).
    pub fn waypoint_identity(&self, caller: &str) -> Option<&weft_core::identity::SpiffeId> {
        if caller.starts_with(WAYPOINT_PREFIX) {
            return self.waypoints.get(caller);
        }
        let (ns, sa) = caller.strip_prefix("sa:")?.split_once(':')?;
        self.waypoints
            .values()
            .find(|id| id.namespace() == ns && id.service_account() == sa)
    }

    /// Whether `caller` may stream as `name`: a node proxy as its own node, a waypoint as the
    /// waypoint it proves. Any other service account (`sa:<ns>:<sa>`: a token with the right
    /// audience, but no node proxy's and no waypoint's) streams as nothing.
    pub fn may_stream_as(&self, caller: &str, name: &str) -> bool {
        if caller == name && !caller.starts_with("sa:") {
            return true;
        }
        name.starts_with(WAYPOINT_PREFIX)
            && caller.starts_with("sa:")
            && self
                .waypoints
                .get(name)
                .is_some_and(|id| Some(id) == self.waypoint_identity(caller))
    }
}

/// Per-node credentials (local mode: issued by the lab; in Kubernetes a projected service
/// account token checked with TokenReview takes this place).
#[derive(Clone, Debug, Default)]
pub struct NodeCredentials {
    by_token: BTreeMap<String, String>,
}

impl NodeCredentials {
    /// Reads a YAML map `node: token`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let by_node: BTreeMap<String, String> =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::from_nodes(by_node))
    }

    /// From `node → token`.
    pub fn from_nodes(by_node: BTreeMap<String, String>) -> Self {
        Self {
            by_token: by_node.into_iter().map(|(n, t)| (t, n)).collect(),
        }
    }

    /// The node `token` belongs to.
    pub fn node_of_token(&self, token: &str) -> Result<String, tonic::Status> {
        self.by_token
            .get(token)
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("unknown node credential"))
    }
}

/// How the controller tells which node a caller is.
pub enum NodeAuth {
    /// Per-node bootstrap credentials (local mode: the lab issues them).
    Credentials(NodeCredentials),
    /// Projected ServiceAccount tokens checked with the API server (Kubernetes mode).
    TokenReview(crate::k8s::TokenReviewer),
}

impl NodeAuth {
    /// The node a request's `authorization: Bearer <token>` belongs to.
    pub async fn node_of(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<String, tonic::Status> {
        let value = metadata
            .get(weft_core::api::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                tonic::Status::unauthenticated("no node credential (authorization: Bearer <token>)")
            })?;
        let token = value.strip_prefix("Bearer ").unwrap_or(value).trim();
        match self {
            Self::Credentials(credentials) => credentials.node_of_token(token),
            Self::TokenReview(reviewer) => reviewer.node_of(token).await,
        }
    }
}

/// What the controller knows of each proxy's stream, for operators.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProxyStatus {
    /// Whether a stream is open now.
    pub connected: bool,
    /// Resources the proxy has acknowledged.
    pub acked_resources: usize,
    /// Updates acknowledged.
    pub acks: u64,
    /// Updates refused.
    pub nacks: u64,
    /// The last refusal's reason.
    pub last_nack: Option<String>,
    /// Whether the proxy's latest answer was an ACK: it holds what was last sent (false after
    /// a NACK, until an update is acknowledged again).
    pub in_sync: bool,
    /// Whether the proxy holds the controller's latest publication (false from the moment a
    /// new one is published until the proxy acknowledged it, or it had nothing new for it).
    pub current: bool,
    /// What the proxy said about itself when its stream opened (role, version, capture mode,
    /// why it fell back to nftables).
    pub about: BTreeMap<String, String>,
    /// The certificates the CA issued to this caller, by identity: the latest one's validity.
    pub certificates: BTreeMap<String, Issued>,
    /// When the stream last changed state (seconds since the epoch).
    pub since_unix: u64,
}

/// A certificate's validity, in seconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Issued {
    pub issued_unix: u64,
    pub expires_unix: u64,
}

/// Status of every proxy that ever connected, by node.
#[derive(Clone, Debug, Default)]
pub struct Proxies(Arc<Mutex<BTreeMap<String, ProxyStatus>>>);

impl Proxies {
    /// Updates a node's status.
    pub fn update(&self, node: &str, f: impl FnOnce(&mut ProxyStatus)) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let status = all.entry(node.to_owned()).or_default();
        f(status);
        status.since_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
    }

    /// A copy of every node's status.
    pub fn snapshot(&self) -> BTreeMap<String, ProxyStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The shared inputs of both services.
#[derive(Clone)]
pub struct Shared {
    /// What is published now.
    pub published: watch::Receiver<Arc<Published>>,
    /// How callers are authenticated.
    pub credentials: Arc<NodeAuth>,
    /// Proxy status.
    pub proxies: Proxies,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_node_proxies_and_waypoints_may_stream() {
        let published = Published {
            waypoints: [(
                "waypoint.shop.wp".to_owned(),
                weft_core::identity::SpiffeId::new("cluster.local", "shop", "wp"),
            )]
            .into(),
            ..Published::default()
        };
        assert!(published.may_stream_as("node1", "node1"));
        assert!(!published.may_stream_as("node1", "node2"));
        assert!(published.may_stream_as("sa:shop:wp", "waypoint.shop.wp"));
        assert!(!published.may_stream_as("sa:shop:other", "waypoint.shop.wp"));
        assert!(
            !published.may_stream_as("sa:shop:other", "sa:shop:other"),
            "any service account token streamed the mesh's config as itself"
        );
    }
}
