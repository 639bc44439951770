//! Node proxies and waypoints authenticate with their projected ServiceAccount token: the
//! controller asks the API server (TokenReview) whether the token is valid for Weft's audience.
//! A node proxy's token (its service account) names its node; any other service account is
//! `sa:<namespace>:<name>`, which the services accept only for what a waypoint may do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use tonic::Status;
use tracing::warn;

/// The `extra` key under which the API server names the node of the pod a token is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// How long a reviewed token is trusted before it is reviewed again.
const CACHE_FOR: Duration = Duration::from_secs(60);

/// Checks node proxies' tokens with the API server.
pub struct TokenReviewer {
    client: Client,
    audience: String,
    /// `system:serviceaccount:<namespace>:<name>` of the node proxy.
    username: String,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenReviewer {
    /// Accepts tokens for `audience` of the service account `namespace/name`.
    pub fn new(client: Client, audience: &str, namespace: &str, name: &str) -> Self {
        Self {
            client,
            audience: audience.to_owned(),
            username: format!("system:serviceaccount:{namespace}:{name}"),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The node whose proxy holds `token`.
    pub async fn node_of(&self, token: &str) -> Result<String, Status> {
        if let Some(node) = self.cached(token) {
            return Ok(node);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(vec![self.audience.clone()]),
                token: Some(token.to_owned()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                warn!(error = %e, "TokenReview failed");
                Status::unavailable(format!(
                    "cannot review the node token with the API server: {e}"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "the API server does not accept this token for audience {:?}: {}",
                self.audience,
                status.error.as_deref().unwrap_or("not authenticated")
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if username != self.username {
            // Another service account (a waypoint's): authenticated as `sa:<ns>:<sa>`; what it
            // may do is decided by the service it calls.
            let Some(sa) = username.strip_prefix("system:serviceaccount:") else {
                return Err(Status::permission_denied(format!(
                    "token of {username}: not a service account"
                )));
            };
            let caller = format!("sa:{sa}");
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(token.to_owned(), (caller.clone(), Instant::now()));
            return Ok(caller);
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|e| e.get(NODE_NAME_EXTRA))
            .and_then(|v| v.first())
            .filter(|n| !n.is_empty())
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "the token names no node ({NODE_NAME_EXTRA}): mount a projected token bound to the node proxy's pod"
                ))
            })?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), (node.clone(), Instant::now()));
        Ok(node)
    }

    fn cached(&self, token: &str) -> Option<String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
        cache.get(token).map(|(node, _)| node.clone())
    }
}
