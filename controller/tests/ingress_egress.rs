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

/// Istio's egress gateway recipe, applied unchanged: a ServiceEntry for the outside host, a
/// Gateway on the egress gateway's pods, a VirtualService sending the mesh's port-80 traffic
/// for the host to the gateway and the gateway's on to the host's port 443, a DestinationRule
/// originating TLS there, and an AuthorizationPolicy at the gateway.
const EGRESS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Pod
metadata: {name: istio-egressgateway-5c8d7-abcde, namespace: istio-system, labels: {istio: egressgateway, app: istio-egressgateway, pod-template-hash: 5c8d7}, ownerReferences: [{kind: ReplicaSet, name: istio-egressgateway-5c8d7, controller: true}]}
spec: {nodeName: node1, serviceAccountName: istio-egressgateway, containers: [{name: gw, image: x, ports: [{name: http2, containerPort: 8080}]}]}
status: {podIP: 10.10.1.20}
---
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system}
spec: {clusterIP: 10.96.0.90, selector: {istio: egressgateway}, ports: [{name: http2, port: 80, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.test]
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS}
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [api.example.test]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-through-egress, namespace: default}
spec:
  hosts: [api.example.test]
  gateways: [istio-system/egress, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 80}}
  - match: [{gateways: [istio-system/egress], port: 8080}]
    route:
    - destination: {host: api.example.test, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api-tls, namespace: default}
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE, caCertificates: /etc/weft/outside-ca.pem}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: egress-api, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/reviews]}}]
    to: [{operation: {hosts: [api.example.test]}}]
"#;

#[test]
fn the_egress_gateway_recipe_sends_the_entrys_port_to_the_gateway_which_originates_tls() {
    let o = objects(EGRESS);
    let mesh = mesh_config(&o, "cluster.local");
    // The node proxies: port 80 of the entry goes to the gateway pod's listener (the Service's
    // port 80 targets 8080), proving the gateway's identity; 443 is not routed through it.
    let api = mesh
        .outbound
        .external
        .iter()
        .find(|e| e.name == "api")
        .expect("the entry");
    let via = api.via_for(80).expect("port 80 goes through the gateway");
    assert_eq!(via.gateway.ip.to_string(), "10.10.1.20");
    assert_eq!(
        via.gateway.identity.to_string(),
        "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway"
    );
    assert_eq!(via.gateway_port, 8080);
    assert!(api.via_for(443).is_none(), "{:?}", api.via);

    // The gateway: a listener on 8080 for the host, whose route (only the gateway's rule, not
    // the mesh's) goes to the host's 443 with TLS originated against the given CA, the host
    // resolved by DNS, and the policy selecting the gateway judging it.
    let gw = mesh
        .waypoints
        .iter()
        .find(|w| w.name == "istio-egressgateway")
        .expect("the gateway's config");
    let listener = gw.listeners.iter().find(|l| l.port == 8080).expect("8080");
    assert!(!listener.mesh_only && listener.certificates.is_empty());
    let host = &listener.hosts[0];
    assert!(host.serves("api.example.test"));
    assert_eq!(host.policy.routes.len(), 1, "{:?}", host.policy.routes);
    let backend = &host.policy.backends[host.policy.routes[0].backends[0].backend];
    let external = backend.external.as_ref().expect("outside the mesh");
    assert_eq!(external.host, "api.example.test");
    assert!(external.addresses.is_empty(), "DNS: resolved when dialing");
    assert_eq!(backend.ports[0].target_port, 443);
    let tls = external.tls.as_ref().expect("TLS originated on 443");
    assert_eq!(tls.sni, "api.example.test");
    assert_eq!(tls.ca_file.as_deref(), Some("/etc/weft/outside-ca.pem"));
    assert_eq!(host.policy.authz.len(), 1, "the gateway's policy");
    mesh.waypoints
        .iter()
        .try_for_each(|w| w.validate())
        .expect("valid");
}
