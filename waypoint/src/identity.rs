//! The waypoint's own certificate (`<cert-dir>/<ns>/<sa>/{cert,key}.pem`) and the trust bundle,
//! reloaded when the files change; a bad version keeps the last good one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tracing::{info, warn};
use weft_core::identity::{SpiffeId, TrustBundle, WorkloadCert};

/// What the waypoint proves and trusts.
pub(crate) struct Identity {
    pub(crate) id: SpiffeId,
    pub(crate) cert: WorkloadCert,
    pub(crate) bundle: TrustBundle,
    pub(crate) server: Arc<rustls::ServerConfig>,
}

/// Watches the files.
pub(crate) struct Certs {
    dir: PathBuf,
    bundle: PathBuf,
    id: SpiffeId,
    current: ArcSwapOption<Identity>,
}

impl Certs {
    pub(crate) fn new(cert_dir: &Path, bundle: &Path, id: SpiffeId) -> Arc<Self> {
        let certs = Arc::new(Self {
            dir: cert_dir.join(id.namespace()).join(id.service_account()),
            bundle: bundle.to_path_buf(),
            id,
            current: ArcSwapOption::empty(),
        });
        certs.reload();
        certs
    }

    pub(crate) fn get(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }

    fn reload(&self) {
        let loaded = (|| -> Result<Identity, String> {
            let cert = WorkloadCert::load(&self.id, &self.dir).map_err(|e| e.to_string())?;
            let bundle = TrustBundle::load(&self.bundle).map_err(|e| e.to_string())?;
            let server =
                weft_core::tls::server_config(&cert, &bundle).map_err(|e| e.to_string())?;
            Ok(Identity {
                id: self.id.clone(),
                cert,
                bundle,
                server: Arc::new(server),
            })
        })();
        match loaded {
            Ok(identity) => {
                info!(identity = %self.id, "certificate loaded");
                self.current.store(Some(Arc::new(identity)));
            }
            Err(e) => {
                warn!(identity = %self.id, error = %e, "certificate not loaded; keeping the last good one")
            }
        }
    }

    /// Reloads whenever the files change.
    pub(crate) async fn watch(self: Arc<Self>) {
        let stamp = |certs: &Self| {
            [
                certs.dir.join("cert.pem"),
                certs.dir.join("key.pem"),
                certs.bundle.clone(),
            ]
            .iter()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        let mut last = stamp(&self);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = stamp(&self);
            if now != last {
                last = now;
                self.reload();
            }
        }
    }
}
