//! The mesh certificate authority: a root generated on first start and kept in a directory (or
//! supplied by the operator), which signs workload CSRs into short-lived X.509 SVIDs.
//!
//! The CA checks that a CSR asks for exactly the identity the caller is entitled to and nothing
//! else: its only SAN must be that SPIFFE URI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use weft_core::identity::SpiffeId;

/// Default lifetime of a workload certificate.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Lifetime of a generated root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Clock skew tolerated between the CA and the proxies.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why the CA refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA's files could not be read or written.
    #[error("CA storage {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The stored or supplied root is unusable.
    #[error("CA root in {path}: {reason}")]
    Root {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CSR could not be parsed or its signature is wrong.
    #[error("CSR rejected: {0}")]
    Csr(String),
    /// The CSR asks for something other than the identity the caller may have.
    #[error(
        "CSR rejected: it must ask for exactly {expected} (and no other name), it asks for {found:?}"
    )]
    Identity {
        /// The identity the caller may have.
        expected: SpiffeId,
        /// The SANs the CSR holds.
        found: Vec<String>,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// An issued certificate: the leaf (PEM) and the chain up to, not including, the root.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf followed by any intermediates, PEM.
    pub chain_pem: String,
    /// The root the chain verifies against, PEM.
    pub root_pem: String,
}

/// The mesh CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    trust_domain: String,
}

impl Ca {
    /// Generates a fresh root in memory.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        dn.push(
            DnType::CommonName,
            format!("Weft mesh root ({trust_domain})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_TTL;
        let root = params.self_signed(&key)?;
        Ok(Self {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Loads `root-cert.pem` and `root-key.pem` from `dir`, or generates and stores them there
    /// if neither exists (first start). A half-present pair is an error, never overwritten.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let cert_path = dir.join("root-cert.pem");
        let key_path = dir.join("root-key.pem");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path, trust_domain),
            (false, false) => {
                let ca = Self::generate(trust_domain)?;
                let io = |path: &Path| {
                    let path = path.to_path_buf();
                    move |source| CaError::Io { path, source }
                };
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                write_private(&key_path, &ca.issuer.key().serialize_pem()).map_err(io(&key_path))?;
                std::fs::write(&cert_path, &ca.root_pem).map_err(io(&cert_path))?;
                Ok(ca)
            }
            _ => Err(CaError::Root {
                path: dir.to_path_buf(),
                reason: "only one of root-cert.pem and root-key.pem exists; restore the other or remove both to generate a new root".into(),
            }),
        }
    }

    /// Loads an operator-supplied (plug-in) root.
    pub fn load(cert_path: &Path, key_path: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let root_pem = read(cert_path)?;
        let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| CaError::Root {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&root_pem, key).map_err(|e| CaError::Root {
            path: cert_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            issuer,
            root_pem,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The root certificate, PEM: the mesh trust bundle.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs `csr_pem` if it asks for exactly `identity`, valid from now for `ttl`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let now = OffsetDateTime::now_utc();
        self.sign_csr_valid(csr_pem, identity, now - BACKDATE, now + ttl)
    }

    /// Signs `csr_pem` for `identity` with an explicit validity window (tests use this to make
    /// expired or not-yet-valid certificates).
    pub fn sign_csr_valid(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let expected = identity.to_string();
        let found: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if identity.trust_domain() != self.trust_domain || found != [expected] {
            return Err(CaError::Identity {
                expected: identity.clone(),
                found,
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Issued {
            chain_pem: cert.pem(),
            root_pem: self.root_pem.clone(),
        })
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::identity::{WorkloadCert, WorkloadCsr};

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", sa)
    }

    #[test]
    fn signs_a_csr_for_the_identity_it_asks_for() -> anyhow::Result<()> {
        let ca = Ca::generate("cluster.local")?;
        let csr = WorkloadCsr::generate(&id("reviews"))?;
        let issued = ca.sign_csr(&csr.csr_pem, &id("reviews"), DEFAULT_WORKLOAD_TTL)?;
        let cert = WorkloadCert::from_pem(&id("reviews"), &issued.chain_pem, &csr.key_pem)?;
        assert_eq!(cert.identity(), &id("reviews"));
        let left = cert.remaining().as_secs();
        assert!((23 * 3600..=24 * 3600).contains(&left), "ttl {left}s");
        Ok(())
    }

    #[test]
    fn refuses_a_csr_for_another_identity() -> anyhow::Result<()> {
        let ca = Ca::generate("cluster.local")?;
        let csr = WorkloadCsr::generate(&id("reviews"))?;
        let err = ca
            .sign_csr(&csr.csr_pem, &id("ratings"), DEFAULT_WORKLOAD_TTL)
            .expect_err("must refuse");
        assert!(err.to_string().contains("sa/ratings"), "{err}");
        let foreign = SpiffeId::new("evil.example", "shop", "reviews");
        assert!(
            ca.sign_csr(&csr.csr_pem, &foreign, DEFAULT_WORKLOAD_TTL)
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn refuses_garbage_csr() -> anyhow::Result<()> {
        let ca = Ca::generate("cluster.local")?;
        let err = ca
            .sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &id("a"),
                DEFAULT_WORKLOAD_TTL,
            )
            .expect_err("garbage");
        assert!(matches!(err, CaError::Csr(_)));
        Ok(())
    }

    #[test]
    fn root_persists_across_restarts() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("weft-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Ca::load_or_generate(&dir, "cluster.local")?;
        let second = Ca::load_or_generate(&dir, "cluster.local")?;
        assert_eq!(first.root_pem(), second.root_pem());
        // A certificate from the reloaded CA verifies against the first root.
        let csr = WorkloadCsr::generate(&id("a"))?;
        let issued = second.sign_csr(&csr.csr_pem, &id("a"), DEFAULT_WORKLOAD_TTL)?;
        assert_eq!(issued.root_pem, first.root_pem());
        std::fs::remove_file(dir.join("root-key.pem"))?;
        assert!(Ca::load_or_generate(&dir, "cluster.local").is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
