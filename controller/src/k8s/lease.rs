//! Leader election with a `coordination.k8s.io/v1` Lease: two controller replicas may run; only
//! the holder of the lease does the writing parts (creating the CA root, writing status). Every
//! write carries the lease's resourceVersion, so two replicas can never both win a round.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, Error};
use tokio::sync::watch;
use tracing::{info, warn};

/// One replica's view of a lease.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElection {
    /// Competes for the lease `namespace/name` as `identity` (the pod's name), holding it for
    /// `duration` after each renewal.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// One round at time `now`: takes a free or expired lease, renews our own, or observes
    /// another holder's. Returns whether this replica leads after the round. A write that
    /// loses a race (409 Conflict) means another replica won: not leader.
    pub async fn round(&self, now: SystemTime) -> Result<bool, Error> {
        let now = micro_time(now);
        let current = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now.clone(), now, 0)),
                };
                return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
            }
            Some(lease) => lease,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next_spec = if holder == self.identity {
            self.spec(
                spec.acquire_time.clone().unwrap_or(now.clone()),
                now,
                transitions,
            )
        } else {
            let expires = spec.renew_time.as_ref().map(|t| {
                t.0.as_microsecond()
                    + i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1_000_000
            });
            if !holder.is_empty() && expires.is_some_and(|e| e > now.0.as_microsecond()) {
                return Ok(false);
            }
            self.spec(now.clone(), now, transitions + 1)
        };
        let mut next = current;
        next.spec = Some(next_spec);
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &next)
                .await,
        )
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Gives the lease up if this replica holds it (on shutdown), so another takes over at
    /// its next round instead of after the lease expires.
    pub async fn release(&self) -> Result<bool, Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Runs rounds every third of the lease duration; the receiver says whether this replica
    /// leads. An API error ends leadership at once: better no writer than two. Dropping or
    /// firing the returned [`Release`] ends the rounds and gives the lease up.
    pub fn spawn(self) -> (watch::Receiver<bool>, Release) {
        let (tx, rx) = watch::channel(false);
        let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.duration / 3);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stop => {
                        match self.release().await {
                            Ok(true) => info!(lease = %self.name, identity = %self.identity, "lease released"),
                            Ok(false) => {}
                            Err(e) => warn!(lease = %self.name, error = %e, "could not release the lease"),
                        }
                        let _ = tx.send(false);
                        return;
                    }
                }
                let leading = match self.round(SystemTime::now()).await {
                    Ok(leading) => leading,
                    Err(e) => {
                        warn!(lease = %self.name, error = %e, "leader election round failed; not leading");
                        false
                    }
                };
                if *tx.borrow() != leading {
                    info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                }
                if tx.send(leading).is_err() {
                    return;
                }
            }
        });
        (
            rx,
            Release {
                stop: Some(stop_tx),
                task,
            },
        )
    }
}

/// Ends a replica's leader election, giving the lease up.
pub struct Release {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Release {
    /// Stops competing and releases the lease (waits up to `within`).
    pub async fn release(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(within, &mut self.task).await;
    }
}

/// Work only the leader does: what it wrote is forgotten when leadership is lost (the next
/// leader writes its own), and redone when the input changes or leadership returns.
pub trait LeaderTask<T>: Send {
    /// Brings the cluster in line with `input`. Failures are retried on the next round.
    fn act(&mut self, input: &T) -> impl std::future::Future<Output = ()> + Send;
    /// Forgets what was written (another replica leads now).
    fn forget(&mut self);
}

/// Runs `task` on every change of `input` while `leading` says this replica leads, and every
/// 10 s (to retry failed writes); ends when either channel closes.
pub async fn while_leading<T, W>(
    mut task: W,
    mut input: watch::Receiver<T>,
    mut leading: watch::Receiver<bool>,
) where
    T: Clone + Send + Sync,
    W: LeaderTask<T>,
{
    loop {
        if *leading.borrow_and_update() {
            let current = input.borrow_and_update().clone();
            task.act(&current).await;
        } else {
            task.forget();
        }
        tokio::select! {
            changed = input.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

fn micro_time(t: SystemTime) -> MicroTime {
    let micros = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn conflict_is_false<T>(result: Result<T, Error>) -> Result<bool, Error> {
    match result {
        Ok(_) => Ok(true),
        Err(Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
