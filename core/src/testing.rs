//! A certificate authority for tests: one self-signed root that signs workload certificates
//! directly, the way the controller's CA does (ECDSA P-256, the SPIFFE URI as the only SAN,
//! client and server use). With it, in-process tests of TLS and HBONE need no controller.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{CertError, SpiffeId, TrustBundle, WorkloadCert, WorkloadCsr};

/// Why a test certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TestCaError {
    /// rcgen refused a parameter.
    #[error("generating a test certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CSR could not be made.
    #[error("generating a CSR: {0}")]
    Csr(#[from] crate::identity::CsrError),
    /// What was issued does not load (a bug in this module).
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// A test CA: a root key and certificate, valid for a day either side of now.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl TestCa {
    /// A fresh root named after `name` (two CAs made in one test are distinct roots).
    pub fn new(name: &str) -> Result<Self, TestCaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Weft test root ({name})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(1);
        let root = params.self_signed(&key)?;
        Ok(Self {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The root, PEM: what a trust bundle holds.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The trust bundle of this CA alone.
    pub fn bundle(&self) -> Result<TrustBundle, CertError> {
        TrustBundle::from_pem("test root", &self.root_pem)
    }

    /// A certificate for `identity`, valid from an hour ago for a day.
    pub fn issue(&self, identity: &SpiffeId) -> Result<WorkloadCert, TestCaError> {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(identity, now - Duration::hours(1), now + Duration::days(1))
    }

    /// A certificate for `identity` valid from `not_before` to `not_after` (expired or
    /// not-yet-valid ones included).
    pub fn issue_valid(
        &self,
        identity: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<WorkloadCert, TestCaError> {
        let csr = WorkloadCsr::generate(identity)?;
        let chain = self.sign_valid(&csr, not_before, not_after)?;
        Ok(WorkloadCert::from_pem(identity, &chain, &csr.key_pem)?)
    }

    /// Signs `csr` (valid from an hour ago for a day); returns the certificate, PEM.
    pub fn sign(&self, csr: &WorkloadCsr) -> Result<String, TestCaError> {
        let now = OffsetDateTime::now_utc();
        self.sign_valid(csr, now - Duration::hours(1), now + Duration::days(1))
    }

    fn sign_valid(
        &self,
        csr: &WorkloadCsr,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<String, TestCaError> {
        let request = CertificateSigningRequestParams::from_pem(&csr.csr_pem)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = request.params.subject_alt_names.clone();
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_identity() {
        let ca = TestCa::new("a").expect("ca");
        let id = SpiffeId::new("cluster.local", "shop", "web");
        let cert = ca.issue(&id).expect("issued");
        assert_eq!(cert.identity(), &id);
        let san = crate::identity::peer_identity(&cert.chain()[0]).expect("a SPIFFE SAN");
        assert_eq!(san, id);
        assert!(cert.remaining() > std::time::Duration::from_secs(3600));
        assert_eq!(ca.bundle().expect("bundle").roots().len(), 1);
    }
}
