//! Workload identity: SPIFFE IDs, workload certificates and the checks made on a peer's
//! certificate.
//!
//! A workload's identity is `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`; its
//! X.509 SVID carries that URI as its only subject alternative name.

mod cert;
mod csr;
mod spiffe;

pub use cert::{CertError, TrustBundle, WorkloadCert, expiries, peer_identity};
pub use csr::{CsrError, WorkloadCsr};
pub use spiffe::{DEFAULT_TRUST_DOMAIN, SpiffeId, SpiffeIdError, valid_name, valid_trust_domain};
