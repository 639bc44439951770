//! What AuthorizationPolicies become at the waypoint and at the node proxies: selection,
//! targetRefs, CUSTOM and AUDIT, ServiceAccounts, and sources Weft cannot verify.

mod common;

use std::path::Path;

use common::objects;
use weft_controller::model::{Objects, mesh_config};
use weft_core::mesh::AuthzAction;

#[test]
fn authorization_policies_apply_to_the_service_whose_pods_they_select() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guide/istio-security.yaml"),
    )
    .expect("guide");
    let o = objects(&format!(
        "{guide}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: other, namespace: default}}\nspec: {{selector: {{matchLabels: {{app: ratings}}}}, action: DENY, rules: [{{}}]}}\n"
    ));
    let mesh = mesh_config(&o, "cluster.local");
    let authz = &mesh.waypoints[0].services[0].authz;
    assert_eq!(
        authz.len(),
        1,
        "only the policy selecting reviews' pods: {authz:?}"
    );
    assert_eq!(authz[0].name, "default/allow-get-reviews");
    assert_eq!(authz[0].rules[0].to[0].methods, vec!["GET".to_owned()]);
}

#[test]
fn a_custom_policy_weft_cannot_delegate_denies_and_audit_decides_nothing() {
    let o = objects(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec: {selector: {matchLabels: {app: reviews}}, action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: [/admin*]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: default}
spec: {selector: {matchLabels: {app: reviews}}, action: AUDIT, rules: [{}]}
",
    );
    let mesh = mesh_config(&o, "cluster.local");
    let at_waypoint = &mesh.waypoints[0].services[0].authz;
    assert_eq!(at_waypoint.len(), 1, "{at_waypoint:?}");
    assert_eq!(at_waypoint[0].name, "default/ext-authz");
    assert_eq!(at_waypoint[0].action, AuthzAction::Deny, "fails closed");
    let v1 = mesh
        .workloads
        .iter()
        .find(|w| w.name == "reviews-v1")
        .expect("reviews-v1");
    assert!(
        v1.authz
            .iter()
            .any(|p| p.name == "default/ext-authz" && p.action == AuthzAction::Deny),
        "{:?}",
        v1.authz
    );
    let verdicts = weft_controller::model::status::verdicts(&o, &[]);
    let custom = verdicts
        .iter()
        .find(|v| v.key.name == "ext-authz")
        .expect("verdict");
    assert!(
        custom.message.contains("CUSTOM not honoured"),
        "{}",
        custom.message
    );
    assert!(custom.message.contains("denied"), "{}", custom.message);
}

#[test]
fn a_policy_attached_with_target_refs_is_judged_at_the_waypoint_alone() {
    let o = objects(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: default}
spec:
  targetRefs: [{kind: Service, group: \"\", name: reviews}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
",
    );
    let verdicts = weft_controller::model::status::verdicts(&o, &[]);
    let verdict = verdicts
        .iter()
        .find(|v| v.key.name == "get-only")
        .expect("verdict");
    assert_eq!(
        verdict.reason,
        weft_controller::model::status::Reason::Accepted,
        "{}",
        verdict.message
    );
    let mesh = mesh_config(&o, "cluster.local");
    assert!(
        mesh.workloads.iter().all(|w| w.authz.is_empty()),
        "no node proxy reads it"
    );
    assert_eq!(mesh.waypoints[0].services[0].authz.len(), 1);
}

#[test]
fn service_accounts_are_principals_and_unverifiable_sources_fail_closed() {
    use weft_core::authz::{Subject, check};
    let o = objects(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-productpage, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {serviceAccounts: [bookinfo-productpage, other/robot]}}]}]
",
    );
    let jwt = objects(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]
",
    );
    let authz_of = |o: &Objects, name: &str| {
        mesh_config(o, "cluster.local")
            .workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.authz.clone())
            .unwrap_or_default()
    };
    let subject = |principal: &'static str| Subject {
        principal: Some(principal),
        namespace: Some("default"),
        ip: "10.0.0.9".parse().expect("ip"),
        port: 9080,
        request: None,
    };
    let reviews = authz_of(&o, "reviews-v1");
    assert!(
        check(
            &reviews,
            &subject("cluster.local/ns/default/sa/bookinfo-productpage")
        )
        .is_ok()
    );
    assert!(check(&reviews, &subject("cluster.local/ns/other/sa/robot")).is_ok());
    assert!(check(&reviews, &subject("cluster.local/ns/default/sa/intruder")).is_err());
    // No JWT is verified: an ALLOW that needs one allows nothing.
    let ratings = authz_of(&jwt, "reviews-v1");
    assert!(!ratings.is_empty(), "the policy selects reviews");
    assert!(
        check(
            &ratings,
            &subject("cluster.local/ns/default/sa/bookinfo-productpage")
        )
        .is_err()
    );
}
