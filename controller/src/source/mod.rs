//! Where the controller learns the cluster's objects: the Kubernetes API ([`kubernetes`]) or a
//! manifest directory ([`manifests`]). Both read objects with the same parser.

pub mod kubernetes;
pub mod manifests;
pub(crate) mod object;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::error;

use crate::model::Objects;
use crate::model::status::Rejected;
use manifests::ManifestDir;

/// What a source saw.
pub struct Observed {
    pub objects: Objects,
    /// Errors, each naming the object (or file) and field.
    pub errors: Vec<String>,
    /// Policies whose latest version was refused.
    pub rejected: Vec<Rejected>,
}

/// Where the objects come from.
pub enum Source {
    /// A manifest directory, re-read every tick.
    Manifests {
        /// The directory.
        dir: ManifestDir,
        /// Its path, for the log.
        path: PathBuf,
        /// Whether it was read once.
        read: bool,
    },
    /// The Kubernetes API's watches.
    Kubernetes(watch::Receiver<Arc<kubernetes::Snapshot>>),
}

impl Source {
    /// A manifest directory.
    pub fn manifests(path: &std::path::Path) -> Self {
        Self::Manifests {
            dir: ManifestDir::new(path),
            path: path.to_owned(),
            read: false,
        }
    }

    /// Waits for the next change: the objects and the source's current errors (logged here as
    /// they appear). `None` when nothing changed.
    pub async fn next(&mut self, tick: &mut tokio::time::Interval) -> Option<Observed> {
        match self {
            Self::Manifests { dir, read, .. } => {
                tick.tick().await;
                let refresh = dir.refresh();
                for e in &refresh.errors {
                    error!("{e}");
                }
                // The first pass publishes even an empty directory.
                let first = !std::mem::replace(read, true);
                (refresh.changed || first).then(|| Observed {
                    objects: dir.objects(),
                    errors: dir.errors(),
                    rejected: Vec::new(),
                })
            }
            Self::Kubernetes(snapshots) => {
                if snapshots.changed().await.is_err() {
                    // The watches ended (the runtime is shutting down).
                    std::future::pending::<()>().await;
                }
                // The source logs each object's error once, as it appears.
                let snapshot = snapshots.borrow_and_update().clone();
                snapshot.synced.then(|| Observed {
                    objects: snapshot.objects.clone(),
                    errors: snapshot.errors.clone(),
                    rejected: snapshot.rejected.clone(),
                })
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manifests { path, .. } => write!(f, "manifests {}", path.display()),
            Self::Kubernetes(_) => f.write_str("Kubernetes API"),
        }
    }
}
