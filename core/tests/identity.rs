//! Workload certificates as the CA issues them: a key must belong to its certificate.

use weft_controller::ca::{Ca, DEFAULT_WORKLOAD_TTL};
use weft_core::identity::{CertError, SpiffeId, WorkloadCert, WorkloadCsr};

#[test]
fn a_key_from_another_issuance_is_refused() {
    let ca = Ca::generate("cluster.local").expect("ca").0;
    let id = SpiffeId::new("cluster.local", "shop", "web");
    let first = WorkloadCsr::generate(&id).expect("csr");
    let second = WorkloadCsr::generate(&id).expect("csr");
    let issued = ca
        .sign_csr(&first.csr_pem, &id, DEFAULT_WORKLOAD_TTL)
        .expect("sign");

    let good = WorkloadCert::from_pem(&id, &issued.chain_pem, &first.key_pem);
    assert!(good.is_ok(), "{:?}", good.err());
    // A renewal caught half-written: the new key beside the old certificate.
    let mixed = WorkloadCert::from_pem(&id, &issued.chain_pem, &second.key_pem);
    assert!(
        matches!(mixed, Err(CertError::KeyMismatch(_))),
        "mismatched key accepted: {:?}",
        mixed.err()
    );
}
