//! Ingress and egress as the controller translates them: a VirtualService bound only to an
//! ingress gateway stays out of the mesh, a Gateway API ingress Gateway's status and config,
//! and the outbound traffic policy with ServiceEntries.

use weft_controller::model::Objects;
use weft_controller::model::mesh_config;

mod common;

use common::objects;

#[test]
fn a_virtual_service_bound_only_to_an_ingress_gateway_does_not_route_inside_the_mesh() {
    let vs = |gateways: &str| {
        objects(&format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  gateways: {gateways}
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: reviews}}}}]
  - route: [{{destination: {{host: reviews}}}}]
"#
        ))
    };
    let routes = |o: &Objects| {
        let mesh = mesh_config(o, "cluster.local");
        mesh.waypoints[0].services[0]
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    // At the gateway only: the waypoint keeps its default route.
    assert_eq!(routes(&vs("[bookinfo-gateway]")), ["default"]);
    // `mesh` among them (or none): the waypoint applies it.
    assert_eq!(
        routes(&vs("[bookinfo-gateway, mesh]")),
        ["reviews.default.0", "reviews.default.1"]
    );
    assert_eq!(
        routes(&vs("[]")),
        ["reviews.default.0", "reviews.default.1"]
    );
}

#[test]
fn the_outbound_policy_comes_from_the_istio_operator_and_namespace_labels_and_entries_hold_addresses()
 {
    let o = objects(
        r#"
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: mesh, namespace: istio-system}
spec:
  meshConfig:
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy, labels: {weft.io/outbound-traffic-policy: ALLOW_ANY}}
---
apiVersion: v1
kind: Namespace
metadata: {name: typo, labels: {weft.io/outbound-traffic-policy: ALLOW-ANY}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.example.test]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 203.0.113.10}, {address: 203.0.113.11}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partners, namespace: shop}
spec:
  hosts: [partners.example.test]
  addresses: [198.51.100.0/24]
  resolution: NONE
"#,
    );
    let outbound = mesh_config(&o, "cluster.local").outbound;
    assert!(outbound.registry_only("shop"));
    assert!(!outbound.registry_only("legacy"));
    // A value that is neither mode reads as the stricter one.
    assert!(outbound.registry_only("typo"));
    let held = |addr: &str| {
        outbound
            .external_for(addr.parse().expect("addr"))
            .map(|e| e.name.clone())
    };
    assert_eq!(held("203.0.113.11:443").as_deref(), Some("payments"));
    assert_eq!(held("203.0.113.11:80"), None, "only its ports");
    assert_eq!(held("198.51.100.77:8443").as_deref(), Some("partners"));
    assert_eq!(held("192.0.2.1:443"), None);
}

#[test]
fn an_ingress_gateway_of_class_weft_reports_its_address_listeners_and_attached_routes() {
    let o = objects(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shop-gw, namespace: default, labels: {gateway.networking.k8s.io/gateway-name: shop}}
spec: {nodeName: node1, containers: [{name: gw}]}
status: {podIP: 10.10.1.20}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop, namespace: default}
spec:
  gatewayClassName: weft
  listeners:
  - {name: web, port: 80, protocol: HTTP}
  - name: tls
    port: 443
    protocol: HTTPS
    hostname: shop.example.test
    tls: {mode: Terminate, certificateRefs: [{kind: Secret, name: shop-cert}]}
  - {name: raw, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: shop}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: other}
spec:
  parentRefs: [{name: shop, namespace: default}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
"#,
    );
    let verdicts = weft_controller::model::status::verdicts(&o, &[]);
    let gateway = verdicts
        .iter()
        .find(|v| v.key.to_string() == "default/shop" && v.kind.kind() == "Gateway")
        .expect("a verdict for the Gateway");
    assert_eq!(gateway.addresses, ["10.10.1.20"]);
    assert_eq!(
        gateway.programmed,
        Some(Ok("gateway pod running at 10.10.1.20".to_owned()))
    );
    let listeners: Vec<_> = gateway
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.served, l.attached_routes))
        .collect();
    // A route from another namespace does not attach (allowedRoutes defaults to Same).
    assert_eq!(
        listeners,
        [("web", true, 1), ("tls", true, 1), ("raw", false, 1)]
    );
    assert!(
        gateway
            .notes
            .iter()
            .any(|n| n.starts_with("spec.listeners[2]")),
        "{:?}",
        gateway.notes
    );
    // As the status writer patches it: addresses and each listener's state.
    let body = weft_controller::k8s::status::patch_body(gateway, std::time::SystemTime::now());
    let status = &body["status"];
    assert_eq!(status["addresses"][0]["value"], "10.10.1.20");
    assert_eq!(status["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(
        status["listeners"][2]["conditions"][0]["reason"],
        "UnsupportedProtocol"
    );
    let programmed = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Programmed")
        .expect("Programmed");
    assert_eq!(programmed["status"], "True");
    // The route's verdict names the Gateway as its parent.
    let route = verdicts
        .iter()
        .find(|v| v.key.to_string() == "default/shop" && v.kind.kind() == "HTTPRoute")
        .expect("a verdict for the HTTPRoute");
    assert_eq!(route.parents[0].name, "shop");
    // The gateway's config: port 80 plain, 443 with the Secret's name for SNI.
    let mesh = mesh_config(&o, "cluster.local");
    let config = mesh
        .waypoints
        .iter()
        .find(|w| w.name == "shop")
        .expect("the gateway's config");
    let ports: Vec<u16> = config.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [80, 443]);
    assert_eq!(config.listeners[1].certificates[0].credential, "shop-cert");
    assert_eq!(
        config.listeners[1].hosts[0].hostnames,
        ["shop.example.test"]
    );
}
