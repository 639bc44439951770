//! Workload certificates as the CA issues them: a key must belong to its certificate.

use weft_core::identity::{CertError, SpiffeId, WorkloadCert, WorkloadCsr};
use weft_core::testing::TestCa;

#[test]
fn a_key_from_another_issuance_is_refused() {
    let ca = TestCa::new("mesh").expect("ca");
    let id = SpiffeId::new("cluster.local", "shop", "web");
    let first = WorkloadCsr::generate(&id).expect("csr");
    let second = WorkloadCsr::generate(&id).expect("csr");
    let chain_pem = ca.sign(&first).expect("sign");

    let good = WorkloadCert::from_pem(&id, &chain_pem, &first.key_pem);
    assert!(good.is_ok(), "{:?}", good.err());
    // A renewal caught half-written: the new key beside the old certificate.
    let mixed = WorkloadCert::from_pem(&id, &chain_pem, &second.key_pem);
    assert!(
        matches!(mixed, Err(CertError::KeyMismatch(_))),
        "mismatched key accepted: {:?}",
        mixed.err()
    );
}
