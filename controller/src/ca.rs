//! The mesh certificate authority: a root and an intermediate generated on first start and kept
//! in a directory or a Secret (or supplied by the operator), the intermediate signing workload
//! CSRs into short-lived X.509 SVIDs.
//!
//! The CA checks that a CSR asks for exactly the identity the caller is entitled to and nothing
//! else: its only SAN must be that SPIFFE URI.

use std::collections::BTreeMap;
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

/// Lifetime of a generated intermediate.
const INTERMEDIATE_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

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

/// Names of the CA's files, in a directory or as keys of the CA Secret (Istio's `cacerts`
/// layout, so an operator's plug-in CA drops in unchanged).
pub mod files {
    /// The root: the mesh trust bundle.
    pub const ROOT_CERT: &str = "root-cert.pem";
    /// The root's key (only where Weft generated the root).
    pub const ROOT_KEY: &str = "root-key.pem";
    /// The signing (intermediate) certificate.
    pub const CA_CERT: &str = "ca-cert.pem";
    /// The signing certificate's key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// The signing certificate and any intermediates above it, not the root.
    pub const CERT_CHAIN: &str = "cert-chain.pem";
}

/// The CA's key material by file name (see [`files`]).
pub type CaFiles = BTreeMap<String, String>;

/// The mesh CA: an intermediate that signs workload certificates, under a root that is the
/// mesh's trust bundle.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the certificates between a leaf and the root (the intermediate first).
    chain_pem: String,
    root_pem: String,
    trust_domain: String,
}

impl Ca {
    /// Generates a fresh root and an intermediate under it, and the files to keep them in.
    pub fn generate(trust_domain: &str) -> Result<(Self, CaFiles), CaError> {
        let now = OffsetDateTime::now_utc();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut root = ca_params(
            &format!("Weft mesh root ({trust_domain})"),
            BasicConstraints::Constrained(1),
        );
        root.not_before = now - BACKDATE;
        root.not_after = now + ROOT_TTL;
        let root_cert = root.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root, root_key);

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut intermediate = ca_params(
            &format!("Weft mesh intermediate ({trust_domain})"),
            BasicConstraints::Constrained(0),
        );
        intermediate.not_before = now - BACKDATE;
        intermediate.not_after = now + INTERMEDIATE_TTL;
        intermediate.use_authority_key_identifier_extension = true;
        let intermediate_cert = intermediate.signed_by(&key, &root_issuer)?;

        let files: CaFiles = [
            (files::ROOT_CERT, root_cert.pem()),
            (files::ROOT_KEY, root_issuer.key().serialize_pem()),
            (files::CA_CERT, intermediate_cert.pem()),
            (files::CA_KEY, key.serialize_pem()),
            (files::CERT_CHAIN, intermediate_cert.pem()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok((
            Self {
                issuer: Issuer::new(intermediate, key),
                chain_pem: intermediate_cert.pem(),
                root_pem: root_cert.pem(),
                trust_domain: trust_domain.to_owned(),
            },
            files,
        ))
    }

    /// The CA in `files` (from `origin`, for messages): `ca-cert.pem` and `ca-key.pem` sign,
    /// `cert-chain.pem` (or `ca-cert.pem`) goes after each leaf, `root-cert.pem` is the trust
    /// bundle. A root alone (`root-cert.pem` and `root-key.pem`) signs directly.
    pub fn from_files(files: &CaFiles, origin: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let get = |name: &str| files.get(name).filter(|v| !v.trim().is_empty());
        let bad = |name: &str, reason: String| CaError::Root {
            path: origin.join(name),
            reason,
        };
        let root_pem = get(files::ROOT_CERT)
            .ok_or_else(|| bad(files::ROOT_CERT, "missing: the CA needs its root".into()))?
            .clone();
        let (cert_name, key_name) = match (get(files::CA_CERT), get(files::CA_KEY)) {
            (Some(_), Some(_)) => (files::CA_CERT, files::CA_KEY),
            (None, None) => (files::ROOT_CERT, files::ROOT_KEY),
            (Some(_), None) => {
                return Err(bad(
                    files::CA_KEY,
                    "missing, but ca-cert.pem is there: supply both or neither".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    files::CA_CERT,
                    "missing, but ca-key.pem is there: supply both or neither".into(),
                ));
            }
        };
        let cert_pem = get(cert_name).ok_or_else(|| bad(cert_name, "missing".into()))?;
        let key_pem = get(key_name).ok_or_else(|| {
            bad(key_name, "missing: the signing certificate needs its key (or supply ca-cert.pem and ca-key.pem)".into())
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(key_name, e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| bad(cert_name, e.to_string()))?;
        let chain_pem = if cert_name == files::ROOT_CERT {
            String::new()
        } else {
            get(files::CERT_CHAIN).unwrap_or(cert_pem).clone()
        };
        Ok(Self {
            issuer,
            chain_pem,
            root_pem,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Loads the CA's files from `dir`, or generates a root and an intermediate and stores them
    /// there if the directory holds none (first start). Incomplete files are an error, never
    /// overwritten.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        let mut found = CaFiles::new();
        for name in [
            files::ROOT_CERT,
            files::ROOT_KEY,
            files::CA_CERT,
            files::CA_KEY,
            files::CERT_CHAIN,
        ] {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    found.insert(name.to_owned(), text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        if !found.is_empty() {
            return Self::from_files(&found, dir, trust_domain);
        }
        let (ca, files) = Self::generate(trust_domain)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for (name, contents) in &files {
            let path = dir.join(name);
            if name.ends_with("key.pem") {
                write_private(&path, contents).map_err(io(&path))?;
            } else {
                std::fs::write(&path, contents).map_err(io(&path))?;
            }
        }
        Ok(ca)
    }

    /// The root certificate, PEM: the mesh trust bundle.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The controller's own certificate for its gRPC endpoint (a year; it is re-issued at
    /// every start).
    pub fn serving_cert(&self) -> Result<weft_core::identity::WorkloadCert, CaError> {
        let identity = weft_core::control::controller_identity(&self.trust_domain);
        let csr = weft_core::identity::WorkloadCsr::generate(&identity)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let issued = self.sign_csr(
            &csr.csr_pem,
            &identity,
            Duration::from_secs(365 * 24 * 3600),
        )?;
        weft_core::identity::WorkloadCert::from_pem(&identity, &issued.chain_pem, &csr.key_pem)
            .map_err(|e| CaError::Csr(e.to_string()))
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
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            root_pem: self.root_pem.clone(),
        })
    }
}

fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Weft");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
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
        let (ca, _) = Ca::generate("cluster.local")?;
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
        let (ca, _) = Ca::generate("cluster.local")?;
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
        let (ca, _) = Ca::generate("cluster.local")?;
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
        std::fs::remove_file(dir.join("ca-key.pem"))?;
        let err = Ca::load_or_generate(&dir, "cluster.local")
            .err()
            .expect("half a signing pair is refused");
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn workload_certificates_chain_through_the_intermediate_to_the_root() -> anyhow::Result<()> {
        let (ca, files) = Ca::generate("cluster.local")?;
        let csr = WorkloadCsr::generate(&id("a"))?;
        let issued = ca.sign_csr(&csr.csr_pem, &id("a"), DEFAULT_WORKLOAD_TTL)?;
        let cert = WorkloadCert::from_pem(&id("a"), &issued.chain_pem, &csr.key_pem)?;
        assert_eq!(cert.chain().len(), 2, "leaf and intermediate, not the root");
        assert!(!issued.chain_pem.contains(files[files::ROOT_CERT].trim()));
        assert!(issued.chain_pem.contains(files[files::CA_CERT].trim()));
        Ok(())
    }

    #[test]
    fn a_plug_in_intermediate_without_the_root_key_signs() -> anyhow::Result<()> {
        let (_, mut files) = Ca::generate("cluster.local")?;
        // The operator keeps the root key offline and hands Weft only the intermediate.
        files.remove(files::ROOT_KEY);
        let ca = Ca::from_files(&files, Path::new("cacerts"), "cluster.local")?;
        assert_eq!(ca.root_pem(), files[files::ROOT_CERT]);
        let csr = WorkloadCsr::generate(&id("a"))?;
        let issued = ca.sign_csr(&csr.csr_pem, &id("a"), DEFAULT_WORKLOAD_TTL)?;
        assert_eq!(
            WorkloadCert::from_pem(&id("a"), &issued.chain_pem, &csr.key_pem)?
                .chain()
                .len(),
            2
        );
        // Without a root nothing can be trusted.
        files.remove(files::ROOT_CERT);
        let err = Ca::from_files(&files, Path::new("cacerts"), "cluster.local")
            .err()
            .expect("no root");
        assert!(err.to_string().contains("root-cert.pem"), "{err}");
        Ok(())
    }
}
