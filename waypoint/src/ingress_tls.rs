//! TLS at an ingress gateway's listener: the certificate is chosen by SNI among the
//! listener's (the first whose host names match), and read from
//! `<credential dir>/<credential>/tls.crt` and `tls.key` — a Kubernetes TLS Secret mounted
//! under its name — so private keys never travel over the config stream. Files are re-read
//! when they change; a credential that cannot be read fails that handshake (and is logged),
//! never the listener.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::warn;

use crate::shared::Waypoint;

/// Credentials read from a directory, cached until their files change.
#[derive(Debug)]
pub(crate) struct Credentials {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug)]
struct Cached {
    stamps: (SystemTime, SystemTime),
    key: Arc<CertifiedKey>,
}

impl Credentials {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The certificate and key of `name`, read again if their files changed.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if !crate::credential::valid_name(name) {
            warn!(credential = %name, "not a Secret name: no certificate");
            return None;
        }
        let dir = self.dir.join(name);
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let stamp = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stamps = match (stamp(&crt), stamp(&key)) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                warn!(credential = %name, dir = %dir.display(), "no tls.crt and tls.key: no certificate");
                return None;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(name)
            && c.stamps == stamps
        {
            return Some(c.key.clone());
        }
        match load(&crt, &key) {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                cache.insert(
                    name.to_owned(),
                    Cached {
                        stamps,
                        key: loaded.clone(),
                    },
                );
                Some(loaded)
            }
            Err(e) => {
                warn!(credential = %name, error = %e, "credential not usable: no certificate");
                None
            }
        }
    }
}

fn load(crt: &PathBuf, key: &PathBuf) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(crt)
        .map_err(|e| format!("{}: {e}", crt.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", crt.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", crt.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the key: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("the key is not the certificate's: {e}"))?;
    Ok(certified)
}

/// Chooses a listener's certificate by SNI, from the config in force at the handshake.
pub(crate) struct SniResolver {
    pub(crate) waypoint: Arc<Waypoint>,
    pub(crate) port: u16,
    pub(crate) credentials: Arc<Credentials>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SniResolver(port {})", self.port)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.waypoint.snapshot.load();
        let listener = snapshot.listener(self.port)?;
        // Without SNI (a client dialing an address), the certificate for every host, if any.
        let sni = hello.server_name().unwrap_or("*");
        let cert = listener.certificates.iter().find(|c| {
            c.hostnames
                .iter()
                .any(|h| weft_core::mesh::host_matches(h, sni))
        })?;
        self.credentials.get(&cert.credential)
    }
}

/// The server config of a TLS listener on `port`: TLS 1.2 and 1.3, ALPN h2 and http/1.1, no
/// client certificates.
pub(crate) fn server_config(
    waypoint: Arc<Waypoint>,
    port: u16,
    credentials: Arc<Credentials>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(SniResolver {
        waypoint,
        port,
        credentials,
    }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
