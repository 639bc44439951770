//! The config stream: the first update is the difference between what the proxy says it holds
//! and the current resources; then one delta per change. One update is in flight at a time: the
//! next goes out once the proxy has answered. A refused update (NACK) is recorded with its
//! reason and not resent until the resources change again.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use weft_core::api::{diff, v1};

use super::{Published, Shared};

/// What a proxy holds: at first the versions it declared, then the snapshot it acknowledged.
enum Held {
    Versions(BTreeMap<String, String>),
    Snapshot(Arc<Published>),
}

impl Held {
    /// The resources to send and the names to remove to bring the proxy to `current`.
    fn diff(&self, current: &Arc<Published>) -> (Vec<v1::Resource>, Vec<String>) {
        match self {
            Self::Versions(versions) => diff(versions, &current.resources),
            Self::Snapshot(held) if Arc::ptr_eq(held, current) => (Vec::new(), Vec::new()),
            Self::Snapshot(held) => {
                let changed = current
                    .resources
                    .values()
                    .filter(|r| held.resources.get(&r.name).map(|h| &h.version) != Some(&r.version))
                    .cloned()
                    .collect();
                let removed = held
                    .resources
                    .keys()
                    .filter(|name| !current.resources.contains_key(*name))
                    .cloned()
                    .collect();
                (changed, removed)
            }
        }
    }
}

/// The `ConfigDiscovery` service.
pub struct ConfigService {
    shared: Shared,
}

impl ConfigService {
    /// Serves from `shared`.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<v1::ConfigUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl v1::config_discovery_server::ConfigDiscovery for ConfigService {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: Request<Streaming<v1::ConfigRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let node = self.shared.credentials.node_of(request.metadata()).await?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        if !self
            .shared
            .published
            .borrow()
            .may_stream_as(&node, &first.node)
        {
            return Err(Status::permission_denied(format!(
                "this credential belongs to {node}, not {}",
                first.node
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            shared.proxies.update(&node, |s| s.connected = true);
            info!(%node, held = first.known.len(), "proxy connected");
            let held = Held::Versions(first.known.into_iter().collect());
            let reason = session(&shared, &node, held, &mut inbound, &tx).await;
            shared.proxies.update(&node, |s| s.connected = false);
            info!(%node, %reason, "proxy stream ended");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn session(
    shared: &Shared,
    node: &str,
    mut held: Held,
    inbound: &mut Streaming<v1::ConfigRequest>,
    tx: &mpsc::Sender<Result<v1::ConfigUpdate, Status>>,
) -> String {
    let mut published = shared.published.clone();
    let mut next_nonce = 0u64;
    // The update in flight: its nonce and what the proxy holds once it is applied.
    let mut in_flight: Option<(String, Arc<Published>)> = None;
    // Whether there is something to send (always, at first: the proxy waits for it to be ready).
    let mut dirty = true;
    loop {
        if dirty && in_flight.is_none() {
            dirty = false;
            let current = published.borrow_and_update().clone();
            if current.resources.is_empty() {
                // Nothing published yet (the source has not been read): the proxy waits, as
                // it would for a slow controller, rather than receive an empty mesh.
                if published.changed().await.is_err() {
                    return "controller shutting down".into();
                }
                dirty = true;
                continue;
            }
            let (resources, removed) = held.diff(&current);
            let first = next_nonce == 0;
            if first || !resources.is_empty() || !removed.is_empty() {
                next_nonce += 1;
                let nonce = next_nonce.to_string();
                let update = v1::ConfigUpdate {
                    nonce: nonce.clone(),
                    resources,
                    removed,
                };
                if tx.send(Ok(update)).await.is_err() {
                    return "proxy went away".into();
                }
                // Once acknowledged, the proxy holds exactly this snapshot: remember it by
                // reference (shared by every stream), not as a per-stream copy of versions.
                in_flight = Some((nonce, current));
            }
        }
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    return "controller shutting down".into();
                }
                dirty = true;
            }
            message = inbound.message() => match message {
                Ok(Some(answer)) => {
                    let Some((nonce, after)) = in_flight.take() else { continue };
                    if answer.response_nonce != nonce {
                        in_flight = Some((nonce, after));
                        continue;
                    }
                    if answer.error.is_empty() {
                        let count = after.resources.len();
                        held = Held::Snapshot(after);
                        shared.proxies.update(node, |s| {
                            s.acks += 1;
                            s.acked_resources = count;
                        });
                    } else {
                        warn!(%node, nonce = %answer.response_nonce, reason = %answer.error, "proxy refused a config update (NACK); it keeps its last good config");
                        shared.proxies.update(node, |s| {
                            s.nacks += 1;
                            s.last_nack = Some(answer.error.clone());
                        });
                    }
                }
                Ok(None) => return "proxy closed the stream".into(),
                Err(e) => return format!("stream error: {e}"),
            },
        }
    }
}
