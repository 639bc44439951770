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
use weft_core::api::{WAYPOINT_PREFIX, v1};

use super::{Published, Shared};

/// What a proxy holds: at first the versions it declared, then the snapshot it acknowledged.
enum Held {
    Versions(BTreeMap<String, String>),
    Snapshot(Arc<Published>),
}

impl Held {
    /// The resources to send and the names to remove to bring the proxy to `current`, as far
    /// as `view` sees it.
    fn diff(&self, current: &Arc<Published>, view: &View) -> (Vec<v1::Resource>, Vec<String>) {
        let held_version = |name: &str| match self {
            Self::Versions(versions) => versions.get(name).map(String::as_str),
            Self::Snapshot(held) => held.resources.get(name).map(|r| r.version.as_str()),
        };
        if let Self::Snapshot(held) = self
            && Arc::ptr_eq(held, current)
        {
            return (Vec::new(), Vec::new());
        }
        let changed = current
            .resources
            .values()
            .filter(|r| view.sees(&r.name) && held_version(&r.name) != Some(r.version.as_str()))
            .cloned()
            .collect();
        let gone = |name: &&String| !current.resources.contains_key(*name);
        let removed = match self {
            // What a proxy says it holds but may not (any more) see goes too.
            Self::Versions(versions) => versions
                .keys()
                .filter(|n| gone(n) || !view.sees(n))
                .cloned()
                .collect(),
            Self::Snapshot(held) => held
                .resources
                .keys()
                .filter(|n| view.sees(n) && gone(n))
                .cloned()
                .collect(),
        };
        (changed, removed)
    }
}

/// Which resources a stream carries: everything but the waypoints' configs, which go to their
/// own waypoint only (a node proxy never reads them; one waypoint has no business with
/// another's).
struct View {
    /// The resource name of the waypoint this stream is for (`waypoint/<ns>/<name>`), if any.
    own_waypoint: Option<String>,
}

impl View {
    /// The view of a client streaming as `name` (a node, or `waypoint.<ns>.<name>`).
    fn of(name: &str) -> Self {
        let own_waypoint = name
            .strip_prefix(super::WAYPOINT_PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .map(|(ns, gateway)| format!("{WAYPOINT_PREFIX}{ns}/{gateway}"));
        Self { own_waypoint }
    }

    fn sees(&self, resource: &str) -> bool {
        !resource.starts_with(WAYPOINT_PREFIX) || self.own_waypoint.as_deref() == Some(resource)
    }

    /// How many of `published`'s resources it sees.
    fn count(&self, published: &Published) -> usize {
        published
            .resources
            .keys()
            .filter(|name| self.sees(name))
            .count()
    }
}

/// What a proxy said about itself, as kept for operators: at most 16 entries, keys of 64 and
/// values of 512 characters (the rest is cut), so a client cannot grow the controller's memory.
fn about_for_operators(
    about: &std::collections::HashMap<String, String>,
) -> BTreeMap<String, String> {
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    let mut keys: Vec<&String> = about.keys().collect();
    keys.sort();
    for key in keys.into_iter().take(16) {
        kept.insert(cut(key, 64), cut(&about[key], 512));
    }
    kept
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
            let about = about_for_operators(&first.about);
            shared.proxies.update(&node, |s| {
                s.connected = true;
                s.in_sync = false;
                s.about = about;
            });
            info!(%node, held = first.known.len(), "proxy connected");
            let held = Held::Versions(first.known.into_iter().collect());
            let view = View::of(&first.node);
            let reason = session(&shared, &node, &view, held, &mut inbound, &tx).await;
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
    view: &View,
    mut held: Held,
    inbound: &mut Streaming<v1::ConfigRequest>,
    tx: &mpsc::Sender<Result<v1::ConfigUpdate, Status>>,
) -> String {
    let mut published = shared.published.clone();
    let mut next_nonce = 0u64;
    // The update in flight: its nonce, what the proxy holds once it is applied, when it went.
    let mut in_flight: Option<(String, Arc<Published>, std::time::Instant)> = None;
    let role = crate::metrics::role(node);
    let metrics = &*crate::metrics::METRICS;
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
            let (resources, removed) = held.diff(&current, view);
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
                in_flight = Some((nonce, current, std::time::Instant::now()));
                metrics
                    .pushes
                    .get_or_create(&crate::metrics::labels(&[("role", role)]))
                    .inc();
            } else {
                // Nothing in this publication is new to the proxy: it holds the current config
                // (unless it refused the last one, which stays refused until things change).
                shared.proxies.update(node, |s| s.current = s.in_sync);
            }
        }
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    return "controller shutting down".into();
                }
                shared.proxies.update(node, |s| s.current = false);
                dirty = true;
            }
            message = inbound.message() => match message {
                Ok(Some(answer)) => {
                    let Some((nonce, after, sent)) = in_flight.take() else { continue };
                    if answer.response_nonce != nonce {
                        in_flight = Some((nonce, after, sent));
                        continue;
                    }
                    if answer.error.is_empty() {
                        metrics.push_ack_seconds.observe(sent.elapsed().as_secs_f64());
                        let count = view.count(&after);
                        let latest = Arc::ptr_eq(&after, &*published.borrow());
                        held = Held::Snapshot(after);
                        shared.proxies.update(node, |s| {
                            s.acks += 1;
                            s.acked_resources = count;
                            s.in_sync = true;
                            s.current = latest;
                        });
                    } else {
                        warn!(%node, nonce = %answer.response_nonce, reason = %answer.error, "proxy refused a config update (NACK); it keeps its last good config");
                        metrics
                            .nacks
                            .get_or_create(&crate::metrics::labels(&[
                                ("role", role),
                                ("reason", &crate::metrics::reason_label(&answer.error)),
                            ]))
                            .inc();
                        shared.proxies.update(node, |s| {
                            s.nacks += 1;
                            s.last_nack = Some(answer.error.clone());
                            s.in_sync = false;
                            s.current = false;
                        });
                    }
                }
                Ok(None) => return "proxy closed the stream".into(),
                Err(e) => return format!("stream error: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> Arc<Published> {
        let mesh: weft_core::mesh::MeshConfig = serde_yaml::from_str(
            "workloads:\n  - {name: a, namespace: shop, serviceAccount: a, ip: 10.0.0.1, node: n1}\nwaypoints:\n  - {name: w1, namespace: shop, services: []}\n  - {name: w2, namespace: shop, services: []}\n",
        )
        .expect("mesh");
        Arc::new(Published {
            resources: weft_core::api::resources(&mesh, "PEM"),
            mesh,
            waypoints: BTreeMap::new(),
        })
    }

    fn names(resources: &[v1::Resource]) -> Vec<&str> {
        resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn a_node_proxy_gets_no_waypoint_config_and_a_waypoint_only_its_own() {
        let current = published();
        let start = Held::Versions(BTreeMap::new());
        let (node, _) = start.diff(&current, &View::of("node1"));
        assert_eq!(names(&node), ["mesh", "workload/shop/a"]);
        let (w1, _) = start.diff(&current, &View::of("waypoint.shop.w1"));
        assert_eq!(names(&w1), ["mesh", "waypoint/shop/w1", "workload/shop/a"]);
        // A proxy that still holds another's config (from an older controller) drops it.
        let held = Held::Versions([("waypoint/shop/w2".to_owned(), "x".to_owned())].into());
        let (_, removed) = held.diff(&current, &View::of("node1"));
        assert_eq!(removed, ["waypoint/shop/w2"]);
        // Acknowledged snapshots remove only what the proxy could see.
        let acked = Held::Snapshot(current.clone());
        let mut next = Published {
            resources: current.resources.clone(),
            ..Published::default()
        };
        next.resources.remove("waypoint/shop/w2");
        let (_, removed) = acked.diff(&Arc::new(next), &View::of("waypoint.shop.w1"));
        assert!(removed.is_empty(), "{removed:?}");
    }

    #[test]
    fn what_a_proxy_says_about_itself_is_bounded() {
        let about: std::collections::HashMap<String, String> = (0..100)
            .map(|i| (format!("{i:03}{}", "k".repeat(100)), "v".repeat(10_000)))
            .collect();
        let kept = about_for_operators(&about);
        assert_eq!(kept.len(), 16);
        assert!(
            kept.iter()
                .all(|(k, v)| k.chars().count() == 64 && v.chars().count() == 512)
        );
        let small: std::collections::HashMap<String, String> =
            [("capture".to_owned(), "ebpf".to_owned())].into();
        assert_eq!(about_for_operators(&small)["capture"], "ebpf");
    }
}
