//! Certificate signing requests for workload identities: ECDSA P-256 keys whose only SAN is the
//! SPIFFE URI.

use super::spiffe::SpiffeId;

/// A freshly generated workload key and the CSR that asks the CA to certify it.
pub struct WorkloadCsr {
    /// The identity the CSR asks for.
    pub identity: SpiffeId,
    /// The private key, PKCS#8 PEM. It never leaves the proxy that generated it.
    pub key_pem: String,
    /// The PKCS#10 request, PEM.
    pub csr_pem: String,
}

/// Why a CSR could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Key generation or encoding failed.
    #[error("generating a CSR for {identity}: {source}")]
    Generate {
        /// The identity the CSR was for.
        identity: SpiffeId,
        /// What rcgen reported.
        source: rcgen::Error,
    },
}

impl WorkloadCsr {
    /// Generates a P-256 key and a CSR for `identity`.
    pub fn generate(identity: &SpiffeId) -> Result<Self, CsrError> {
        let wrap = |source| CsrError::Generate {
            identity: identity.clone(),
            source,
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(wrap)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(identity.to_string()).map_err(wrap)?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let csr = params.serialize_request(&key).map_err(wrap)?;
        Ok(Self {
            identity: identity.clone(),
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem().map_err(wrap)?,
        })
    }
}
