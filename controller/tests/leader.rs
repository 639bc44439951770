//! Leader election (Lease) and the CA Secret through kube's real client, against recorded
//! API-server exchanges.

mod support;

use std::time::{Duration, SystemTime};

use support::{ApiServer, Reply, recorded};
use weft_controller::ca::files;
use weft_controller::k8s::{LeaderElection, ca_secret};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/weft-system/leases/weft-controller";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/weft-system/leases";
const SECRET: &str = "/api/v1/namespaces/weft-system/secrets/weft-ca";
const SECRETS: &str = "/api/v1/namespaces/weft-system/secrets";

/// 2026-11-25T10:05:00Z, the recorded holder's last renewal, plus `secs`.
fn after_renewal(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_601_100 + secs)
}

fn election(api: &ApiServer, me: &str) -> LeaderElection {
    LeaderElection::new(
        api.client(),
        "weft-system",
        "weft-controller",
        me,
        Duration::from_secs(15),
    )
}

#[tokio::test]
async fn a_free_lease_is_taken_a_held_one_respected_an_expired_one_taken_over() {
    let exchanges = recorded(include_str!("recorded/lease.json"));
    let api = ApiServer::default();
    let a = election(&api, "weft-controller-7f9c-a");

    // No lease yet: create it, holding it.
    api.push(
        &format!("get {LEASE}"),
        Reply::json(404, &exchanges["lease-not-found"]),
    );
    api.push(
        &format!("post {LEASES}"),
        Reply::json(201, &exchanges["lease-created"]),
    );
    assert!(
        a.round(after_renewal(0)).await.expect("round"),
        "free lease taken"
    );
    let (_, created) = api.bodies().pop().expect("create body");
    assert_eq!(created["spec"]["holderIdentity"], "weft-controller-7f9c-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);

    // Held by b, renewed 5 s ago (15 s lease): a stays a follower and writes nothing.
    api.push(
        &format!("get {LEASE}"),
        Reply::json(200, &exchanges["lease-held-by-b"]),
    );
    assert!(!a.round(after_renewal(5)).await.expect("round"));
    assert_eq!(api.bodies().len(), 1, "a follower does not write the lease");

    // b stopped renewing 20 s ago: a takes over with the lease's resourceVersion.
    api.push(
        &format!("get {LEASE}"),
        Reply::json(200, &exchanges["lease-held-by-b"]),
    );
    api.push(
        &format!("put {LEASE}"),
        Reply::json(200, &exchanges["lease-created"]),
    );
    assert!(
        a.round(after_renewal(20)).await.expect("round"),
        "expired lease taken over"
    );
    let (_, taken) = api.bodies().pop().expect("replace body");
    assert_eq!(
        taken["metadata"]["resourceVersion"], "5120",
        "optimistic concurrency"
    );
    assert_eq!(taken["spec"]["holderIdentity"], "weft-controller-7f9c-a");
    assert_eq!(taken["spec"]["leaseTransitions"], 4);

    // Both replicas saw it expired; the other one's write landed first: 409, a does not lead.
    api.push(
        &format!("get {LEASE}"),
        Reply::json(200, &exchanges["lease-held-by-b"]),
    );
    api.push(
        &format!("put {LEASE}"),
        Reply::json(409, &exchanges["conflict"]),
    );
    assert!(
        !a.round(after_renewal(20)).await.expect("round"),
        "lost the race"
    );
}

#[tokio::test]
async fn the_leader_creates_the_ca_secret_and_followers_wait_for_it() -> anyhow::Result<()> {
    let exchanges = recorded(include_str!("recorded/lease.json"));

    // The leader finds no Secret: it generates a root and an intermediate and stores them.
    let api = ApiServer::default();
    api.push(
        &format!("get {SECRET}"),
        Reply::json(404, &exchanges["secret-not-found"]),
    );
    api.push(&format!("post {SECRETS}"), Reply::json(201, &serde_json::json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "weft-ca", "namespace": "weft-system", "resourceVersion": "77"},
        "type": "Opaque"
    })));
    let (_leader, leading) = tokio::sync::watch::channel(true);
    let ca = ca_secret::load_or_create(
        api.client(),
        "weft-system",
        "weft-ca",
        "cluster.local",
        leading,
    )
    .await?;
    let (_, stored) = api.bodies().pop().expect("create body");
    let data = stored["data"].as_object().expect("data");
    for key in [
        files::ROOT_CERT,
        files::ROOT_KEY,
        files::CA_CERT,
        files::CA_KEY,
        files::CERT_CHAIN,
    ] {
        assert!(data.contains_key(key), "{key} stored: {data:?}");
    }
    let root = String::from_utf8(base64_decode(&data[files::ROOT_CERT]))?;
    assert_eq!(ca.root_pem(), root, "the CA in use is the one stored");

    // A follower finds no Secret and waits; when the leader's appears, it loads that one.
    let api = ApiServer::default();
    api.push(
        &format!("get {SECRET}"),
        Reply::json(404, &exchanges["secret-not-found"]),
    );
    let (_follower, following) = tokio::sync::watch::channel(false);
    let waiting = tokio::spawn(ca_secret::load_or_create(
        api.client(),
        "weft-system",
        "weft-ca",
        "cluster.local",
        following,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a follower does not create the root"
    );
    api.push(&format!("get {SECRET}"), Reply::json(200, &serde_json::json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "weft-ca", "namespace": "weft-system", "resourceVersion": "77"},
        "type": "Opaque",
        "data": stored["data"],
    })));
    let loaded = tokio::time::timeout(Duration::from_secs(5), waiting).await???;
    assert_eq!(loaded.root_pem(), ca.root_pem());
    assert!(api.bodies().is_empty(), "the follower wrote nothing");

    // Two leaders in a race (an old one not yet aware it lost): the second create gets 409
    // and the replica reads the winner's Secret instead of using its own.
    let api = ApiServer::default();
    api.push(
        &format!("get {SECRET}"),
        Reply::json(404, &exchanges["secret-not-found"]),
    );
    api.push(
        &format!("post {SECRETS}"),
        Reply::json(409, &exchanges["secret-already-exists"]),
    );
    api.push(
        &format!("get {SECRET}"),
        Reply::json(
            200,
            &serde_json::json!({
                "kind": "Secret", "apiVersion": "v1",
                "metadata": {"name": "weft-ca", "namespace": "weft-system"},
                "data": stored["data"],
            }),
        ),
    );
    let (_leader, leading) = tokio::sync::watch::channel(true);
    let raced = ca_secret::load_or_create(
        api.client(),
        "weft-system",
        "weft-ca",
        "cluster.local",
        leading,
    )
    .await?;
    assert_eq!(
        raced.root_pem(),
        ca.root_pem(),
        "the winner's root, not a second one"
    );
    Ok(())
}

fn base64_decode(value: &serde_json::Value) -> Vec<u8> {
    serde_json::from_value::<k8s_openapi::ByteString>(value.clone())
        .expect("base64")
        .0
}
