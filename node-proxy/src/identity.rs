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
    /// Newest modification time of its two files, taken before they were read: while the
    /// files keep it (and the bundle is the same), a reload reuses this identity as it is.
    stamp: Option<SystemTime>,
}

/// Certificates for local identities, and the trust bundle. Replaced whole on change.
#[derive(Default)]
pub(crate) struct CertStore {
    pub(crate) bundle: Option<TrustBundle>,
    pub(crate) identities: HashMap<SpiffeId, Arc<Identity>>,
    /// Latest modification time of the files, taken before they were read: a change triggers
    /// a reload. `None` while an identity wanted failed to load, so that every tick retries it.
    pub(crate) stamp: Option<SystemTime>,
    /// The bundle file's modification time, taken before it was read.
    bundle_stamp: Option<SystemTime>,
    /// Why each identity that failed to load did, as last reported.
    pub(crate) failed: Vec<String>,
}

impl CertStore {
    /// Loads the bundle and the certificates of `wanted`. An identity whose files are missing
    /// or invalid is left out and reported; its pods are refused until it appears. What did not
    /// change since `previous` read it (the bundle, an identity's two files) is taken from
    /// `previous` rather than read and parsed again: one identity failing, retried every tick,
    /// costs the reading of that one.
    ///
    /// Stamps are taken first: a pair rewritten while it is read (a renewal writes the key,
    /// then the certificate) is newer than the stamp and read again on the next tick. Taken
    /// after, it would include that write, and an identity caught half-written would never be
    /// read again.
    pub(crate) fn load(
        dir: &Path,
        bundle_path: &Path,
        wanted: impl Iterator<Item = SpiffeId>,
        previous: &CertStore,
    ) -> (Self, Vec<CertError>) {
        let before = stamp(dir, bundle_path);
        let bundle_stamp = mtime(bundle_path);
        let mut errors = Vec::new();
        // The bundle as read last time, if its file has not changed since.
        let kept_bundle = previous
            .bundle
            .as_ref()
            .filter(|_| bundle_stamp.is_some() && bundle_stamp == previous.bundle_stamp);
        let same_bundle = kept_bundle.is_some();
        let bundle = match kept_bundle {
            Some(bundle) => Some(bundle.clone()),
            None => match TrustBundle::load(bundle_path) {
                Ok(bundle) => Some(bundle),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        let mut identities = HashMap::new();
        if let Some(bundle) = &bundle {
            for id in wanted {
                if identities.contains_key(&id) {
                    continue;
                }
                let files = cert_dir(dir, &id);
                let files_stamp = mtime(&files.join("cert.pem")).max(mtime(&files.join("key.pem")));
                if let Some(kept) = previous.identities.get(&id)
                    && same_bundle
                    && kept.stamp.is_some()
                    && kept.stamp == files_stamp
                    // An expired one is read again, and refused as a fresh read would be.
                    && kept.cert.remaining() > std::time::Duration::ZERO
                {
                    identities.insert(id, kept.clone());
                    continue;
                }
                let loaded = WorkloadCert::load(&id, &files).and_then(|cert| {
                    let server = tls::server_config(&cert, bundle)
                        .map_err(|e| CertError::Root(e.to_string()))?;
                    Ok(Identity {
                        cert,
                        server: Arc::new(server),
                        stamp: files_stamp,
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
            stamp: if errors.is_empty() { before } else { None },
            bundle_stamp,
            failed: errors.iter().map(ToString::to_string).collect(),
        };
        (store, errors)
    }

    pub(crate) fn get(&self, id: &SpiffeId) -> Option<&Arc<Identity>> {
        self.identities.get(id)
    }
}

pub(crate) use weft_core::ca_client::cert_dir;

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Newest modification time under the certificate directory (two levels) and of the bundle.
pub(crate) fn stamp(dir: &Path, bundle: &Path) -> Option<SystemTime> {
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use weft_core::identity::WorkloadCsr;
    use weft_core::testing::TestCa;

    use super::*;

    /// Writes `contents` to `path` and gives it the modification time `at`.
    fn write_at(path: &Path, contents: &str, at: SystemTime) {
        std::fs::write(path, contents).expect("write");
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(at).expect("mtime");
    }

    /// A renewal writes the key, then the certificate. A read between the two fails (the new
    /// key, the old certificate). If the certificate's write is as old as the read's stamp
    /// (within the same instant), a stamp taken after the read cannot tell it came later: the
    /// identity would stay refused until the next renewal. The store keeps no stamp while an
    /// identity is missing, so the next tick reads it again.
    #[test]
    fn an_identity_caught_half_written_is_read_again_on_the_next_tick() {
        let ca = TestCa::new("test").expect("ca");
        let id = SpiffeId::new("cluster.local", "default", "reviews");
        let root = std::env::temp_dir().join(format!("weft-certstore-{}", std::process::id()));
        let dir = cert_dir(&root, &id);
        std::fs::create_dir_all(&dir).expect("dir");
        let bundle = root.join("root-cert.pem");
        let at = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        write_at(&bundle, ca.root_pem(), at);
        let pair = || {
            let csr = WorkloadCsr::generate(&id).expect("csr");
            (csr.key_pem.clone(), ca.sign(&csr).expect("signed"))
        };
        let ((_, old_cert), (new_key, new_cert)) = (pair(), pair());
        write_at(&dir.join("key.pem"), &new_key, at);
        write_at(&dir.join("cert.pem"), &old_cert, at);

        let (torn, errors) = CertStore::load(
            &root,
            &bundle,
            [id.clone()].into_iter(),
            &CertStore::default(),
        );
        assert!(torn.get(&id).is_none() && errors.len() == 1, "{errors:?}");
        assert_eq!(torn.failed.len(), 1);

        // The certificate lands, no newer than what the failed read saw.
        write_at(&dir.join("cert.pem"), &new_cert, at);
        let now = stamp(&root, &bundle);
        assert_ne!(
            now, torn.stamp,
            "the next tick would not read the pair again"
        );
        let (read, errors) = CertStore::load(&root, &bundle, [id.clone()].into_iter(), &torn);
        assert!(read.get(&id).is_some(), "{errors:?}");
        // Loaded: the stamp settles, so the next tick reads nothing.
        assert_eq!(read.stamp, stamp(&root, &bundle));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_reload_reads_only_what_changed() {
        let ca = TestCa::new("test").expect("ca");
        let ids = [
            SpiffeId::new("cluster.local", "default", "reviews"),
            SpiffeId::new("cluster.local", "default", "ratings"),
        ];
        let root = std::env::temp_dir().join(format!("weft-certreuse-{}", std::process::id()));
        let bundle = root.join("root-cert.pem");
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(1_795_000_000 + secs);
        let write_pair = |id: &SpiffeId, secs: u64| {
            let csr = WorkloadCsr::generate(id).expect("csr");
            let dir = cert_dir(&root, id);
            std::fs::create_dir_all(&dir).expect("dir");
            write_at(&dir.join("key.pem"), &csr.key_pem, at(secs));
            write_at(
                &dir.join("cert.pem"),
                &ca.sign(&csr).expect("signed"),
                at(secs),
            );
        };
        std::fs::create_dir_all(&root).expect("root");
        write_at(&bundle, ca.root_pem(), at(0));
        ids.iter().for_each(|id| write_pair(id, 0));
        let load =
            |previous: &CertStore| CertStore::load(&root, &bundle, ids.iter().cloned(), previous);
        let (first, errors) = load(&CertStore::default());
        assert!(errors.is_empty(), "{errors:?}");
        let same = |a: &CertStore, b: &CertStore, id: &SpiffeId| {
            Arc::ptr_eq(a.get(id).expect("loaded"), b.get(id).expect("loaded"))
        };

        // ratings' certificate goes bad: reviews is kept as it was, not read again.
        write_at(
            &cert_dir(&root, &ids[1]).join("cert.pem"),
            "garbage",
            at(10),
        );
        let (second, errors) = load(&first);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            same(&first, &second, &ids[0]),
            "an unchanged identity was read again"
        );
        assert!(second.get(&ids[1]).is_none());
        // Every tick retries ratings; reviews stays the same one.
        let (third, _) = load(&second);
        assert!(same(&first, &third, &ids[0]));

        // reviews renewed: read again.
        write_pair(&ids[0], 20);
        write_pair(&ids[1], 20);
        let (fourth, errors) = load(&third);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            !same(&first, &fourth, &ids[0]),
            "a renewed identity was not read again"
        );
        // A new bundle: every identity's TLS config is built again.
        write_at(&bundle, ca.root_pem(), at(30));
        let (fifth, errors) = load(&fourth);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!same(&fourth, &fifth, &ids[0]) && !same(&fourth, &fifth, &ids[1]));
        let _ = std::fs::remove_dir_all(&root);
    }
}
