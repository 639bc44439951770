//! Workload certificates (X.509 SVIDs), the mesh trust bundle, and reading a peer's identity off
//! its certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe::SpiffeId;

/// Why a certificate, key or bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// PEM input held no certificate.
    #[error("{what}: no PEM certificate found")]
    NoCertificate {
        /// What was being read (a file name or a description).
        what: String,
    },
    /// PEM input could not be decoded.
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// What was being read.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The DER of a certificate is malformed.
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    /// The certificate has no SPIFFE URI SAN, or more than one.
    #[error("certificate must carry exactly one spiffe:// URI SAN, found {0}")]
    SpiffeSan(usize),
    /// The SPIFFE URI is not a workload identity.
    #[error(transparent)]
    SpiffeId(#[from] super::spiffe::SpiffeIdError),
    /// A workload certificate is for another identity than the one asked for.
    #[error("certificate is for {found}, expected {expected}")]
    WrongIdentity {
        /// The identity that was asked for.
        expected: Box<SpiffeId>,
        /// The identity the certificate carries.
        found: Box<SpiffeId>,
    },
    /// A root could not be added to the trust store.
    /// The private key is not the one the certificate was issued for (for instance a key and a
    /// certificate from two different issuances).
    #[error("{0}: the private key does not match the certificate")]
    KeyMismatch(String),
    #[error("trust bundle: {0}")]
    Root(String),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A workload's certificate chain (leaf first) and private key.
#[derive(Debug)]
pub struct WorkloadCert {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl WorkloadCert {
    /// Builds a workload certificate from PEM, checking that the leaf carries `identity`.
    pub fn from_pem(
        identity: &SpiffeId,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CertError> {
        let what = identity.to_string();
        let chain = parse_certs(&what, chain_pem.as_bytes())?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
                what: format!("{what} key"),
                reason: e.to_string(),
            })?;
        let (found, not_before, not_after, spki) = leaf_identity(&chain[0])?;
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| CertError::Pem {
                what: format!("{what} key"),
                reason: e.to_string(),
            })?;
        if signing
            .public_key()
            .is_none_or(|public| public.as_ref() != spki.as_slice())
        {
            return Err(CertError::KeyMismatch(what));
        }
        if &found != identity {
            return Err(CertError::WrongIdentity {
                expected: Box::new(identity.clone()),
                found: Box::new(found),
            });
        }
        Ok(Self {
            identity: found,
            chain,
            key,
            not_before,
            not_after,
        })
    }

    /// Reads `<dir>/cert.pem` (leaf first, then intermediates) and `<dir>/key.pem`.
    pub fn load(identity: &SpiffeId, dir: &std::path::Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CertError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        Self::from_pem(identity, &read("cert.pem")?, &read("key.pem")?)
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the private key, for building a TLS config.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to renew: half-way through the validity period.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 2
    }

    /// Time left before expiry (zero when already expired).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

/// The set of roots that mesh certificates must chain to.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    roots: Arc<RootCertStore>,
    pem: Arc<str>,
}

impl TrustBundle {
    /// Parses one or more PEM root certificates.
    pub fn from_pem(what: &str, pem: &str) -> Result<Self, CertError> {
        let certs = parse_certs(what, pem.as_bytes())?;
        let mut store = RootCertStore::empty();
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| CertError::Root(format!("{what}: {e}")))?;
        }
        Ok(Self {
            roots: Arc::new(store),
            pem: pem.into(),
        })
    }

    /// Reads a PEM bundle from a file.
    pub fn load(path: &std::path::Path) -> Result<Self, CertError> {
        let pem = std::fs::read_to_string(path).map_err(|source| CertError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&path.display().to_string(), &pem)
    }

    /// The roots as a rustls store.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The bundle as PEM, as it was read.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

fn parse_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the SPIFFE identity a (chain-verified) peer certificate carries.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, CertError> {
    leaf_identity(cert).map(|(id, ..)| id)
}

/// When each certificate in `pem` expires (a CA's root, say), in order.
pub fn expiries(what: &str, pem: &str) -> Result<Vec<SystemTime>, CertError> {
    parse_certs(what, pem.as_bytes())?
        .iter()
        .map(|cert| {
            let (_, x509) = X509Certificate::from_der(cert.as_ref())
                .map_err(|e| CertError::Parse(e.to_string()))?;
            let after = x509.validity().not_after.timestamp();
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(after.max(0) as u64))
        })
        .collect()
}

/// The leaf's SPIFFE ID, validity window and SubjectPublicKeyInfo (DER).
fn leaf_identity(
    cert: &CertificateDer<'_>,
) -> Result<(SpiffeId, SystemTime, SystemTime, Vec<u8>), CertError> {
    let (_, x509) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| CertError::Parse(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                uris.push(*uri);
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(CertError::SpiffeSan(uris.len()));
    };
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let validity = x509.validity();
    Ok((
        uri.parse()?,
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
        x509.public_key().raw.to_vec(),
    ))
}
