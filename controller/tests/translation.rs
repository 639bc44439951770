//! What the policies become for the waypoint and the node proxies: HTTPRoute, ServiceProfile
//! and VirtualService routes for a waypoint-bound service, and PeerAuthentication precedence
//! (AuthorizationPolicy: `authz.rs`).

use std::path::Path;

use weft_controller::model::policy::istio::MtlsMode;
use weft_controller::model::{Objects, mesh_config, translate};
use weft_controller::source::manifests::parse_file;
use weft_core::mesh::Protocol;
use weft_core::mesh::{PathPart, StrMatch};

mod common;

use common::objects;

#[test]
fn a_gamma_http_route_becomes_routes_with_timeouts_and_retries() {
    let o = objects(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {codes: [503], attempts: 2, backoff: 100ms}
"#,
    );
    let mesh = mesh_config(&o, "cluster.local");
    let reviews = mesh
        .services
        .iter()
        .find(|s| s.name == "reviews")
        .expect("svc");
    let waypoint = reviews.waypoint.as_ref().expect("bound to the waypoint");
    assert_eq!(waypoint.ip.to_string(), "10.10.1.9");
    assert_eq!(
        waypoint.identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );
    let wp_pod = mesh
        .workloads
        .iter()
        .find(|w| w.name == "waypoint-abc")
        .expect("pod");
    assert_eq!(
        wp_pod.protocol,
        Protocol::Tcp,
        "a waypoint is never captured"
    );

    let config = &mesh.waypoints[0];
    let svc = &config.services[0];
    assert_eq!(svc.routes.len(), 2, "no default route after an HTTPRoute");
    let prefix = &svc.routes[0];
    match &prefix.matches[0].path {
        Some(StrMatch::Regex(re)) => {
            let re = regex::Regex::new(&format!("^(?:{re})$")).expect("regex");
            assert!(re.is_match("/v2") && re.is_match("/v2/x") && !re.is_match("/v2x"));
        }
        other => panic!("PathPrefix /v2 became {other:?}"),
    }
    let v2 = &svc.backends[prefix.backends[0].backend];
    assert_eq!(v2.endpoints, vec!["reviews-v2".to_owned()]);
    let all = &svc.routes[1];
    assert_eq!(all.timeout_ms, Some(2000));
    let retry = all.retry.as_ref().expect("retry");
    assert_eq!(
        (
            retry.attempts,
            retry.per_try_timeout_ms,
            retry.backoff_base_ms
        ),
        (2, Some(500), 100)
    );
    assert!(retry.on.statuses.contains(&503));
    assert_eq!(svc.backends[all.backends[0].backend].endpoints.len(), 2);
    assert_eq!(svc.ports[0].target_port, 8080, "named target port resolved");
}

#[test]
fn a_service_profile_becomes_routes_before_the_default_with_its_conditions() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guide/linkerd-config.yaml"),
    )
    .expect("guide");
    let o = objects(&guide.replace(
        "name: emoji-svc\n  namespace: emojivoto",
        "name: reviews.default.svc.cluster.local\n  namespace: default",
    ));
    let mesh = mesh_config(&o, "cluster.local");
    let svc = &mesh.waypoints[0].services[0];
    assert_eq!(svc.routes.len(), 2, "the profile's route, then the default");
    let list = &svc.routes[0];
    assert_eq!(list.name, "GET /api/list");
    assert_eq!(list.matches[0].method, Some(StrMatch::Exact("GET".into())));
    assert_eq!(
        list.matches[0].path,
        Some(StrMatch::Regex("/api/list".into()))
    );
    assert!(list.retry.is_none(), "not retryable");
    assert_eq!(svc.routes[1].name, "default");
}

#[test]
fn an_http_route_for_one_port_of_a_service_leaves_the_others_their_default() {
    let o = objects(
        r#"
apiVersion: v1
kind: Service
metadata: {name: two-ports, namespace: default, labels: {weft.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.50, selector: {app: reviews}, ports: [{name: a, port: 9080, targetPort: 8080}, {name: b, port: 9090, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: only-9090, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: two-ports, port: 9090}]
  rules:
  - backendRefs: [{name: reviews-v2, port: 9080}]
    timeouts: {request: 2s}
"#,
    );
    let mesh = mesh_config(&o, "cluster.local");
    let svc = mesh.waypoints[0]
        .services
        .iter()
        .find(|s| s.name == "two-ports")
        .expect("bound");
    assert_eq!(svc.routes.len(), 2, "{:?}", svc.routes);
    assert!(
        svc.routes[0].matches.iter().all(|m| m.port == Some(9090)),
        "the route is for port 9090 only"
    );
    assert_eq!(svc.routes[0].timeout_ms, Some(2000));
    assert_eq!(svc.routes[1].name, "default");
    assert!(
        svc.routes[1].matches.is_empty(),
        "9080 keeps the default route"
    );
}

#[test]
fn http_route_filters_become_route_edits_mirrors_and_redirects_and_others_are_named() {
    let o = objects(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Route, value: gamma}], remove: [x-secret]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-via, value: waypoint}]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-v2, port: 9080}, fraction: {numerator: 1, denominator: 8}}
    - type: ExtensionRef
      extensionRef: {group: example.io, kind: Filter, name: f}
  - matches: [{path: {type: PathPrefix, value: /old}}, {path: {value: /older/}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: Exact, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: internal, path: {type: ReplaceFullPath, replaceFullPath: /v2/api}}
"#,
    );
    let mesh = mesh_config(&o, "cluster.local");
    let routes = &mesh.waypoints[0].services[0].routes;
    let route = &routes[0];
    assert_eq!(route.mirrors.len(), 1, "{route:?}");
    assert_eq!(route.mirrors[0].percent, 12.5);
    assert_eq!(route.mirrors[0].port, Some(9080));
    // One route per prefix, each replacing its own.
    let prefixes: Vec<_> = routes[1..3]
        .iter()
        .map(|r| r.redirect.as_ref().expect("a redirect").replaces.clone())
        .collect();
    assert_eq!(
        prefixes,
        vec![
            PathPart::Prefix("/old".into()),
            PathPart::Prefix("/older/".into())
        ]
    );
    let redirect = routes[1].redirect.as_ref().expect("a redirect");
    assert_eq!((redirect.status, redirect.port), (302, Some(443)));
    let rewrite = routes[3].rewrite.as_ref().expect("a rewrite");
    assert_eq!(rewrite.path.as_deref(), Some("/v2/api"));
    assert_eq!(rewrite.replaces, PathPart::Whole);
    assert_eq!(rewrite.authority.as_deref(), Some("internal"));
    assert_eq!(
        route.request_headers.set.get("x-route").map(String::as_str),
        Some("gamma")
    );
    assert_eq!(route.request_headers.remove, vec!["x-secret".to_owned()]);
    assert_eq!(
        route.response_headers.add.get("x-via").map(String::as_str),
        Some("waypoint")
    );
    let verdicts = weft_controller::model::status::verdicts(&o, &[]);
    let verdict = verdicts
        .iter()
        .find(|v| v.key.name == "reviews")
        .expect("verdict");
    assert!(
        verdict
            .message
            .contains("spec.rules[0].filters[3]: ExtensionRef not honoured"),
        "{}",
        verdict.message
    );
    assert!(
        !verdict.message.contains("filters[0]"),
        "{}",
        verdict.message
    );
}

#[test]
fn accepted_policies_that_would_do_nothing_say_so_by_field() {
    let o = objects(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v3}, weight: 60}
    - {destination: {host: reviews-v2}, weight: 30}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ghost, namespace: default}
spec: {host: ghost}
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: split, namespace: default}
spec: {service: reviews, backends: [{service: reviews-v2, weight: 50}, {service: reviews-v9, weight: 50}]}
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: reviews-v2.default.svc.cluster.local, namespace: default}
spec: {routes: [{name: all, condition: {method: GET}, timeout: 1s}]}
"#,
    );
    let verdicts = weft_controller::model::status::verdicts(&o, &[]);
    let message = |name: &str| {
        let v = verdicts
            .iter()
            .find(|v| v.key.name == name)
            .unwrap_or_else(|| panic!("no verdict for {name}"));
        assert_eq!(
            v.reason,
            weft_controller::model::status::Reason::PartiallyHonoured,
            "{name}: {}",
            v.message
        );
        v.message.clone()
    };
    let a = message("a-reviews");
    assert!(a.contains("spec.http[0].route: weights sum to 90"), "{a}");
    assert!(
        a.contains("spec.http[0].route[0].destination.subset"),
        "{a}"
    );
    let b = message("b-reviews");
    assert!(
        b.contains("VirtualService default/a-reviews already routes reviews"),
        "{b}"
    );
    assert!(message("ghost").contains("spec.host: no service \"ghost\""));
    let split = message("split");
    assert!(
        split.contains("spec.backends[1].service: no service \"reviews-v9\""),
        "{split}"
    );
    let profile = message("reviews-v2.default.svc.cluster.local");
    assert!(profile.contains("not bound to a waypoint"), "{profile}");
}

#[test]
fn peer_authentication_workload_beats_namespace_beats_mesh() {
    let o = objects(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: v2, namespace: default}
spec:
  selector: {matchLabels: {version: v2}}
  mtls: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: v1-ports, namespace: default}
spec:
  selector: {matchLabels: {version: v1}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
"#,
    );
    let pod = |name: &str| o.pods.values().find(|p| p.name == name).expect("pod");
    let (v1_mode, v1) = translate::peer_authentication(&o, pod("reviews-v1"));
    assert_eq!(v1_mode, MtlsMode::Strict);
    assert!(
        !v1.accepts_plaintext(8080) && v1.accepts_plaintext(9090),
        "per port"
    );
    let (v2_mode, _) = translate::peer_authentication(&o, pod("reviews-v2"));
    assert_eq!(v2_mode, MtlsMode::Disable);
    let mesh = mesh_config(&o, "cluster.local");
    let workload = |n: &str| mesh.workloads.iter().find(|w| w.name == n).expect("w");
    assert_eq!(
        workload("reviews-v2").protocol,
        Protocol::Tcp,
        "DISABLE: plain TCP"
    );
    assert_eq!(workload("reviews-v1").protocol, Protocol::Hbone);
    let (ns_mode, ns) = translate::peer_authentication(&o, pod("waypoint-abc"));
    assert_eq!(
        ns_mode,
        MtlsMode::Permissive,
        "the namespace's, over the mesh's"
    );
    assert!(ns.accepts_plaintext(1));
}

#[test]
fn a_service_without_a_selector_takes_its_endpoints_from_endpoint_slices() {
    let o = objects(
        r#"
apiVersion: v1
kind: Service
metadata: {name: legacy-db, namespace: default, labels: {weft.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.40, ports: [{port: 5432, targetPort: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-db-abc12
  namespace: default
  labels: {kubernetes.io/service-name: legacy-db}
addressType: IPv4
endpoints:
- addresses: [10.10.2.2]
  conditions: {ready: true}
- addresses: [10.10.1.2]
  conditions: {ready: false}
ports: [{name: "", port: 5432, protocol: TCP}]
"#,
    );
    let mesh = mesh_config(&o, "cluster.local");
    let db = mesh
        .services
        .iter()
        .find(|s| s.name == "legacy-db")
        .expect("svc");
    assert_eq!(
        db.endpoints,
        vec!["reviews-v2".to_owned()],
        "only the ready address"
    );
    // Behind a waypoint, the waypoint balances over the same endpoints the node proxies use.
    let waypoint = mesh.waypoints.first().expect("the waypoint runs");
    let policy = waypoint
        .services
        .iter()
        .find(|s| s.name == "legacy-db")
        .expect("legacy-db is bound to the waypoint");
    let endpoints: Vec<&String> = policy.backends.iter().flat_map(|b| &b.endpoints).collect();
    assert_eq!(endpoints, vec!["reviews-v2"]);
}

#[test]
fn a_waypoint_gateway_reports_whether_its_waypoint_runs() {
    use weft_controller::k8s::status::patch_body;
    use weft_controller::model::policy::PolicyKind;
    use weft_controller::model::status::verdicts;

    let running = objects("");
    let judged = verdicts(&running, &[]);
    let gateway = judged
        .iter()
        .find(|v| v.kind == PolicyKind::Gateway)
        .expect("the waypoint Gateway is judged");
    assert_eq!(
        gateway.programmed,
        Some(Ok("waypoint pod running at 10.10.1.9".to_owned()))
    );
    let body = patch_body(gateway, std::time::SystemTime::now());
    assert_eq!(body["status"]["conditions"][1]["type"], "Programmed");
    assert_eq!(body["status"]["conditions"][1]["status"], "True");

    let (parsed, _) = parse_file(
        Path::new("gw.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: lonely, namespace: default}\nspec: {gatewayClassName: weft-waypoint}\n",
    );
    let mut pending = Objects::default();
    for o in parsed {
        pending.upsert(o);
    }
    let judged = verdicts(&pending, &[]);
    assert!(matches!(&judged[0].programmed, Some(Err(m)) if m.contains("no waypoint pod")));
    let body = patch_body(&judged[0], std::time::SystemTime::now());
    assert_eq!(body["status"]["conditions"][1]["status"], "False");
    assert_eq!(body["status"]["conditions"][1]["reason"], "Pending");

    // A waypoint pod being deleted drains: it is not the programmed waypoint any more.
    let (parsed, _) = parse_file(
        Path::new("gw.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: old, namespace: default}\nspec: {gatewayClassName: weft-waypoint}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: old-abc, namespace: default, deletionTimestamp: \"2026-11-26T10:00:00Z\", labels: {gateway.networking.k8s.io/gateway-name: old}}\nspec: {nodeName: node1, containers: [{name: w, image: x}]}\nstatus: {podIP: 10.10.1.8}\n",
    );
    let mut draining = Objects::default();
    for o in parsed {
        draining.upsert(o);
    }
    let judged = verdicts(&draining, &[]);
    let old = judged.iter().find(|v| v.key.name == "old").expect("judged");
    assert!(
        matches!(&old.programmed, Some(Err(_))),
        "{:?}",
        old.programmed
    );
}
