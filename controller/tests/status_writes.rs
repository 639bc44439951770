//! Policies' verdicts written as status conditions through kube's real client, against
//! recorded API-server exchanges: once per change, the Gateway API's per-parent form for
//! HTTPRoutes (other controllers' entries kept), Invalid for a refused policy.

mod support;

use support::{ApiServer, Reply};
use weft_controller::model::Objects;

#[tokio::test]
async fn policy_verdicts_become_status_conditions_written_once() {
    use weft_controller::k8s::StatusWriter;
    use weft_controller::model::policy::PolicyKind;
    use weft_controller::model::status::{Rejected, verdicts};
    use weft_controller::model::{Object, ObjectKey};
    use weft_controller::source::manifests::parse_file;

    let manifests = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {weft.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.30, selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop, labels: {weft.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.31, selector: {app: ratings}, ports: [{port: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop, generation: 3}
spec:
  hosts: [reviews]
  http:
  - corsPolicy: {allowOrigins: [{exact: "https://shop.example"}]}
    route: [{destination: {host: reviews}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: shop, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings, port: 9080}]
  rules: [{backendRefs: [{name: ratings-v1, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ingress-route, namespace: shop}
spec:
  parentRefs: [{name: public-gateway}]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: reviews-canary, namespace: shop}
spec: {service: reviews, backends: [{service: reviews-v1, weight: 90}]}
"#;
    let (parsed, errors) = parse_file(std::path::Path::new("shop.yaml"), manifests);
    assert!(errors.is_empty(), "{errors:?}");
    let mut objects = Objects::default();
    for object in parsed {
        objects.upsert(object);
    }
    assert!(matches!(
        objects.policies.values().next().map(|p| p.kind),
        Some(PolicyKind::VirtualService)
    ));
    let rejected = vec![Rejected {
        kind: PolicyKind::AuthorizationPolicy,
        key: ObjectKey::new("shop", "deny-all"),
        generation: Some(2),
        message: "spec.action: unknown variant `REJECT`".into(),
    }];
    let judged = verdicts(&objects, &rejected);
    // The ingress route is another controller's: no verdict, no status.
    assert_eq!(judged.len(), 4, "{judged:?}");

    let api = ApiServer::default();
    let vs = "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/reviews/status";
    let route = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/ratings/status";
    let authz = "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies/deny-all/status";
    for (path, kind) in [
        (vs, "VirtualService"),
        (route, "HTTPRoute"),
        (authz, "AuthorizationPolicy"),
    ] {
        api.push(
            &format!("patch {path}"),
            Reply::json(
                200,
                &serde_json::json!({"apiVersion": "x/v1", "kind": kind, "metadata": {"name": "n", "namespace": "shop"}}),
            ),
        );
    }
    // The route's status already holds another controller's entry: it must stay.
    api.push(
        &format!("get {route}"),
        Reply::json(
            200,
            &serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "ratings", "namespace": "shop", "resourceVersion": "4711"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "ratings", "port": 9080}]},
                "status": {"parents": [{"controllerName": "example.net/ingress", "parentRef": {"name": "public"}, "conditions": []}]},
            }),
        ),
    );
    let mut writer = StatusWriter::new(api.client());
    assert_eq!(
        writer.write(&judged).await,
        3,
        "TrafficSplit has no status to write"
    );
    let bodies = api.bodies();
    let body = |path: &str| {
        bodies
            .iter()
            .find(|(k, _)| k == &format!("patch {path}"))
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no patch of {path}: {bodies:?}"))
    };
    let condition = &body(vs)["status"]["conditions"][0];
    assert_eq!(condition["type"], "Accepted");
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "PartiallyHonoured");
    assert_eq!(condition["observedGeneration"], 3);
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.http[0].corsPolicy")),
        "{condition}"
    );
    let route_body = body(route);
    assert_eq!(
        route_body["status"]["parents"][0]["controllerName"], "example.net/ingress",
        "another controller's entry is kept: {route_body}"
    );
    assert_eq!(
        route_body["metadata"]["resourceVersion"], "4711",
        "written only over what was read"
    );
    let parent = &route_body["status"]["parents"][1];
    assert_eq!(parent["controllerName"], "weft.io/controller");
    assert_eq!(parent["parentRef"]["name"], "ratings");
    assert_eq!(parent["conditions"][0]["reason"], "Accepted");
    let refused = &body(authz)["status"]["conditions"][0];
    assert_eq!(refused["status"], "False");
    assert_eq!(refused["reason"], "Invalid");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("REJECT")),
        "{refused}"
    );

    // Nothing changed: nothing written. One policy fixed: one write.
    assert_eq!(writer.write(&judged).await, 0);
    let mut fixed = objects.clone();
    if let Some(Object::Policy(p)) = parse_file(
        std::path::Path::new("shop.yaml"),
        &manifests[manifests
            .find("apiVersion: networking")
            .expect("the VirtualService")..]
            .replace(
                "  - corsPolicy: {allowOrigins: [{exact: \"https://shop.example\"}]}\n    route",
                "  - route",
            )
            .replace("generation: 3", "generation: 4"),
    )
    .0
    .into_iter()
    .next()
    {
        fixed.upsert(Object::Policy(p));
    }
    api.push(
        &format!("patch {vs}"),
        Reply::json(
            200,
            &serde_json::json!({"apiVersion": "x/v1", "kind": "VirtualService", "metadata": {"name": "reviews", "namespace": "shop"}}),
        ),
    );
    assert_eq!(writer.write(&verdicts(&fixed, &rejected)).await, 1);
    let last = api.bodies().pop().expect("patch");
    assert_eq!(last.1["status"]["conditions"][0]["reason"], "Accepted");
}
