//! What tests share: a certificate authority (one self-signed root that signs workload
//! certificates directly, the way the controller's CA does: ECDSA P-256, the SPIFFE URI as the
//! only SAN, client and server use), so in-process tests of TLS and HBONE need no controller;
//! and [`Gen`], a seeded generator for property tests over parsers (bounded, repeatable).

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

/// A seeded pseudo-random source for property tests: the same seed gives the same cases, so a
/// failure can be replayed; the case count bounds the run.
#[derive(Clone, Debug)]
pub struct Gen(u64);

impl Gen {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Up to `max` pieces from `alphabet`, joined.
    pub fn string(&mut self, alphabet: &[&str], max: usize) -> String {
        let n = self.below(max + 1);
        (0..n).map(|_| *self.pick(alphabet)).collect()
    }

    /// `text` with a few random edits: bytes deleted, duplicated, or replaced by one of
    /// `noise` (for inputs that are almost right).
    pub fn mutate(&mut self, text: &str, noise: &[&str]) -> String {
        let mut out = text.to_owned();
        for _ in 0..=self.below(3) {
            if out.is_empty() {
                break;
            }
            let mut at = self.below(out.len());
            while !out.is_char_boundary(at) {
                at -= 1;
            }
            match self.below(3) {
                0 => {
                    let mut end = (at + 1 + self.below(8)).min(out.len());
                    while !out.is_char_boundary(end) {
                        end += 1;
                    }
                    out.replace_range(at..end, "");
                }
                1 => {
                    let piece = *self.pick(noise);
                    out.insert_str(at, piece);
                }
                _ => {
                    let piece: String = out[at..].chars().take(1 + self.below(6)).collect();
                    out.insert_str(at, &piece);
                }
            }
        }
        out
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
