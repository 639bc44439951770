//! The certificates of the workloads on this node, read from the directory the bootstrap (and,
//! later, the CA client) writes: `<dir>/<namespace>/<serviceaccount>/{cert,key}.pem` and the
//! trust bundle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use weft_core::identity::{CertError, SpiffeId, TrustBundle, WorkloadCert};
use weft_core::tls;

/// A workload certificate with its server-side TLS config, built once.
pub(crate) struct Identity {
    pub(crate) cert: WorkloadCert,
    pub(crate) server: Arc<rustls::ServerConfig>,
}

/// Certificates for local identities, and the trust bundle. Replaced whole on change.
#[derive(Default)]
pub(crate) struct CertStore {
    pub(crate) bundle: Option<TrustBundle>,
    pub(crate) identities: HashMap<SpiffeId, Arc<Identity>>,
    /// Latest modification time of the files read: a change triggers a reload.
    pub(crate) stamp: Option<SystemTime>,
}

impl CertStore {
    /// Loads the bundle and the certificates of `wanted`. An identity whose files are missing
    /// or invalid is left out and reported; its pods are refused until it appears.
    pub(crate) fn load(
        dir: &Path,
        bundle_path: &Path,
        wanted: impl Iterator<Item = SpiffeId>,
    ) -> (Self, Vec<CertError>) {
        let mut errors = Vec::new();
        let bundle = match TrustBundle::load(bundle_path) {
            Ok(bundle) => Some(bundle),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let mut identities = HashMap::new();
        if let Some(bundle) = &bundle {
            for id in wanted {
                if identities.contains_key(&id) {
                    continue;
                }
                let loaded = WorkloadCert::load(&id, &cert_dir(dir, &id)).and_then(|cert| {
                    let server = tls::server_config(&cert, bundle)
                        .map_err(|e| CertError::Root(e.to_string()))?;
                    Ok(Identity {
                        cert,
                        server: Arc::new(server),
                    })
                });
                match loaded {
                    Ok(identity) => {
                        identities.insert(id, Arc::new(identity));
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let store = Self {
            bundle,
            identities,
            stamp: stamp(dir, bundle_path),
        };
        (store, errors)
    }

    pub(crate) fn get(&self, id: &SpiffeId) -> Option<&Arc<Identity>> {
        self.identities.get(id)
    }
}

pub(crate) use weft_core::ca_client::cert_dir;

/// Newest modification time under the certificate directory (two levels) and of the bundle.
pub(crate) fn stamp(dir: &Path, bundle: &Path) -> Option<SystemTime> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut newest = mtime(bundle);
    let mut consider = |t: Option<SystemTime>| {
        if t > newest {
            newest = t;
        }
    };
    for ns in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for sa in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            consider(mtime(&sa.path().join("cert.pem")));
            consider(mtime(&sa.path().join("key.pem")));
        }
    }
    newest
}
