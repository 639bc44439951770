//! The Kubernetes source: one watch per resource kind (kube's watcher: list, then watch with
//! bookmarks; a `410 Gone` relists, and objects missing from the new list are dropped), each
//! object read through the same parser as the manifest directory, into one [`Objects`].
//!
//! An object that fails to parse keeps its last good version, and its error names the object
//! and the field; nothing else in the model moves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_kind};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tracing::{debug, error, info, warn};

use super::object::parse_object;
use crate::model::policy::PolicyKind;
use crate::model::status::Rejected;
use crate::model::{Object, Objects};

/// A resource kind the controller watches.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    pub kind: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Only objects this field selector picks (`metadata.name=linkerd-config`).
    pub fields: Option<&'static str>,
}

impl Kind {
    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            api_version: if self.group.is_empty() {
                self.version.to_owned()
            } else {
                format!("{}/{}", self.group, self.version)
            },
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}

/// The kinds the model is built from, one cluster-wide watch each: namespaces, pods, services,
/// EndpointSlices (endpoints of services without a selector) and every policy kind (of the
/// ConfigMaps, only those named `linkerd-config`).
pub fn watched() -> Vec<Kind> {
    let core = |kind, plural| Kind {
        group: "",
        version: "v1",
        kind,
        plural,
        fields: None,
    };
    let mut kinds = vec![
        core("Namespace", "namespaces"),
        core("Pod", "pods"),
        core("Service", "services"),
        Kind {
            group: "discovery.k8s.io",
            version: "v1",
            kind: "EndpointSlice",
            plural: "endpointslices",
            fields: None,
        },
    ];
    for policy in PolicyKind::ALL {
        let api = policy.api();
        kinds.push(Kind {
            group: api.group,
            version: api.version,
            kind: policy.kind(),
            plural: api.plural,
            // Of the ConfigMaps, only Linkerd's mesh config.
            fields: (policy == PolicyKind::LinkerdConfig).then_some("metadata.name=linkerd-config"),
        });
    }
    kinds
}

/// What the source knows now.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every object, as last seen (or last parsed successfully).
    pub objects: Objects,
    /// Objects whose latest version could not be read, each naming the object and field.
    pub errors: Vec<String>,
    /// The policies among them (their status says why).
    pub rejected: Vec<Rejected>,
    /// Whether every kind has been listed once (until then the model is incomplete and nothing
    /// should be published).
    pub synced: bool,
}

/// Starts one watch per kind in [`watched`] and returns the snapshots they build.
pub fn spawn(client: &Client) -> watch::Receiver<Arc<Snapshot>> {
    spawn_kinds(client, &watched())
}

/// [`spawn`] over a chosen set of kinds.
pub fn spawn_kinds(client: &Client, kinds: &[Kind]) -> watch::Receiver<Arc<Snapshot>> {
    let (events_tx, events) = mpsc::channel(1024);
    for (index, kind) in kinds.iter().enumerate() {
        tokio::spawn(watch_one(client.clone(), index, *kind, events_tx.clone()));
    }
    let (snapshots_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(aggregate(kinds.len(), events, snapshots_tx));
    snapshots
}

/// What one kind's watch reports.
enum Change {
    Relisting,
    Listed(String, serde_yaml::Value),
    RelistDone,
    Applied(String, serde_yaml::Value),
    Deleted(String),
}

async fn watch_one(client: Client, index: usize, kind: Kind, out: mpsc::Sender<(usize, Change)>) {
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut config = watcher::Config::default();
    if let Some(fields) = kind.fields {
        config = config.fields(fields);
    }
    let stream = watch_kind(api, config).backoff(WatchBackoff::default());
    let mut stream = std::pin::pin!(stream);
    let mut listed = false;
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::InitDone) => {
                listed = true;
                Change::RelistDone
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404 && !kind.group.is_empty() =>
            {
                // The CRD is not installed: no objects of this kind, and the watcher keeps
                // trying, so installing it later is picked up.
                if !listed {
                    listed = true;
                    info!(
                        kind = kind.kind,
                        group = kind.group,
                        "API not installed; no objects of this kind"
                    );
                    if out.send((index, Change::Relisting)).await.is_err() {
                        return;
                    }
                    Change::RelistDone
                } else {
                    continue;
                }
            }
            Ok(Event::Init) => Change::Relisting,
            Ok(Event::InitApply(object)) => {
                Change::Listed(key(&kind, &object), value(&kind, &object))
            }
            Ok(Event::Apply(object)) => Change::Applied(key(&kind, &object), value(&kind, &object)),
            Ok(Event::Delete(object)) => Change::Deleted(key(&kind, &object)),
            Err(e) => {
                // The watcher relists by itself after 410 Gone and retries other errors with
                // backoff; the last good objects stay meanwhile.
                warn!(kind = kind.kind, error = %e, "watch interrupted; retrying");
                crate::metrics::METRICS
                    .watch_restarts
                    .get_or_create(&crate::metrics::labels(&[("kind", kind.kind)]))
                    .inc();
                continue;
            }
        };
        if out.send((index, change)).await.is_err() {
            return;
        }
    }
}

fn key(kind: &Kind, object: &DynamicObject) -> String {
    match object.namespace() {
        Some(ns) => format!("{} {ns}/{}", kind.kind, object.name_any()),
        None => format!("{} {}", kind.kind, object.name_any()),
    }
}

/// The object as the manifest parser reads it. List items carry no `kind`: it is set from the
/// watch it came from.
fn value(kind: &Kind, object: &DynamicObject) -> serde_yaml::Value {
    let mut value = serde_yaml::to_value(object).unwrap_or(serde_yaml::Value::Null);
    if let serde_yaml::Value::Mapping(map) = &mut value {
        map.insert("kind".into(), kind.kind.into());
        map.insert("apiVersion".into(), kind.api_resource().api_version.into());
    }
    value
}

/// One kind's objects: the last good object by key, and the errors of the newest versions.
/// Why an object's latest version was refused.
#[derive(Clone)]
struct Failure {
    message: String,
    rejected: Option<Rejected>,
}

#[derive(Default)]
struct KindState {
    objects: BTreeMap<String, Object>,
    errors: BTreeMap<String, Failure>,
    /// Objects of a relist in progress.
    relist: Option<KindRelist>,
    listed: bool,
}

#[derive(Default)]
struct KindRelist {
    objects: BTreeMap<String, Object>,
    errors: BTreeMap<String, Failure>,
}

impl KindState {
    /// Reads one object into `objects`/`errors`; an unreadable object keeps the version in
    /// `last_good`, if any.
    fn read(
        key: String,
        value: &serde_yaml::Value,
        last_good: Option<&Object>,
        objects: &mut BTreeMap<String, Object>,
        errors: &mut BTreeMap<String, Failure>,
    ) {
        match parse_object(value) {
            Ok(Some(object)) => {
                errors.remove(&key);
                objects.insert(key, object);
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(good) = last_good {
                    objects.insert(key.clone(), good.clone());
                }
                let message = format!("{e}; keeping its last good version");
                if errors.get(&key).map(|f| &f.message) != Some(&message) {
                    error!("{message}");
                }
                let rejected = Rejected::of(value, &e);
                errors.insert(key, Failure { message, rejected });
            }
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Relisting => self.relist = Some(KindRelist::default()),
            Change::Listed(key, value) => {
                let relist = self.relist.get_or_insert_with(KindRelist::default);
                let last_good = self.objects.get(&key);
                Self::read(
                    key,
                    &value,
                    last_good,
                    &mut relist.objects,
                    &mut relist.errors,
                );
            }
            Change::RelistDone => {
                // Whatever the new list lacks was deleted while the watch was away.
                let relist = self.relist.take().unwrap_or_default();
                self.objects = relist.objects;
                self.errors = relist.errors;
                self.listed = true;
            }
            Change::Applied(key, value) => {
                let last_good = self.objects.get(&key).cloned();
                Self::read(
                    key,
                    &value,
                    last_good.as_ref(),
                    &mut self.objects,
                    &mut self.errors,
                );
            }
            Change::Deleted(key) => {
                self.objects.remove(&key);
                self.errors.remove(&key);
            }
        }
    }
}

async fn aggregate(
    kinds: usize,
    mut events: mpsc::Receiver<(usize, Change)>,
    out: watch::Sender<Arc<Snapshot>>,
) {
    let mut states: Vec<KindState> = (0..kinds).map(|_| KindState::default()).collect();
    let mut was_synced = false;
    while let Some((index, change)) = events.recv().await {
        states[index].apply(change);
        // Take everything already queued before building one snapshot for all of it.
        while let Ok((index, change)) = events.try_recv() {
            states[index].apply(change);
        }
        let synced = states.iter().all(|s| s.listed);
        if synced && !was_synced {
            info!(kinds, "Kubernetes objects listed; watching for changes");
        }
        was_synced = synced;
        let mut snapshot = Snapshot {
            synced,
            ..Snapshot::default()
        };
        for state in &states {
            for object in state.objects.values() {
                snapshot.objects.upsert(object.clone());
            }
            for failure in state.errors.values() {
                snapshot.errors.push(failure.message.clone());
                snapshot.rejected.extend(failure.rejected.clone());
            }
        }
        debug!(
            pods = snapshot.objects.pods.len(),
            errors = snapshot.errors.len(),
            "Kubernetes snapshot"
        );
        if out.send(Arc::new(snapshot)).is_err() {
            return;
        }
    }
}

/// How a broken watch is retried: 250 ms doubling to 2 s, started over after a success. An API
/// server back from an outage is watched again within 2 s (kube's default waits up to 30 s).
#[derive(Debug, Default)]
pub struct WatchBackoff {
    last: Option<Duration>,
}

/// The first retry's wait, and the longest.
const WATCH_RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let next = self
            .last
            .map_or(WATCH_RETRY.0, |d| (d * 2).min(WATCH_RETRY.1));
        self.last = Some(next);
        Some(next)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod backoff_tests {
    use kube::runtime::utils::Backoff;

    use super::*;

    #[test]
    fn a_broken_watch_is_retried_within_two_seconds_at_most() {
        let mut b = WatchBackoff::default();
        let waits: Vec<u64> = (0..6)
            .map(|_| b.next().map_or(0, |d| d.as_millis() as u64))
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}
