//! Ingress gateways: the pods an Istio `Gateway`'s `selector` picks run `weft-waypoint` in the
//! gateway role. Each served server of each Gateway selecting a pod is a listener for clients
//! outside the mesh; the VirtualServices naming the Gateway in `gateways` route it, by host.
//! The gateway enters the mesh over HBONE as its own workload (its service account's SPIFFE
//! identity), so AuthorizationPolicies at the destinations can name it; the policies selecting
//! the gateway's pods judge the outside clients' requests at the gateway.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use weft_core::mesh::{
    Listener, ListenerCert, ServicePolicy, VirtualHost, WaypointConfig, host_matches,
};

use super::authz::workload_authz;
use super::backends::Backends;
use super::common::labels_match;
use super::endpoints::Membership;
use super::gateway_api::rule_routes;
use super::istio::vs_routes;
use super::waypoints::{GATEWAY_NAME, RunningWaypoint};
use crate::model::key::ObjectKey;
use crate::model::objects::{Objects, Pod};
use crate::model::policy::gateway::{GatewaySpec, INGRESS_CLASS};
use crate::model::policy::istio::{self, IstioGatewaySpec, Server, Serving};
use crate::model::policy::{Policy, PolicySpec};

/// The Istio Gateways (ingress) and their specs.
fn istio_gateways(objects: &Objects) -> impl Iterator<Item = (&Policy, &IstioGatewaySpec)> {
    objects.policies.values().filter_map(|p| match &p.spec {
        PolicySpec::IstioGateway(g) => Some((p, &**g)),
        _ => None,
    })
}

/// Whether `pod` is an ingress gateway's: some Istio Gateway's (non-empty) selector picks it.
pub fn is_ingress_pod(objects: &Objects, pod: &Pod) -> bool {
    istio_gateways(objects)
        .any(|(_, g)| !g.selector.is_empty() && labels_match(&g.selector, &pod.labels))
}

/// The name a gateway pod runs as: its workload (the Deployment behind its ReplicaSet), else
/// the pod's own.
fn gateway_name(pod: &Pod) -> String {
    let workload = super::names::telemetry_names(pod).workload;
    if workload.is_empty() {
        pod.name.clone()
    } else {
        workload
    }
}

/// Gateway API Gateways of class `weft`.
fn api_gateways(objects: &Objects) -> impl Iterator<Item = (&Policy, &GatewaySpec)> {
    objects.policies.values().filter_map(|p| match &p.spec {
        PolicySpec::Gateway(g) if g.gateway_class_name == INGRESS_CLASS => Some((p, &**g)),
        _ => None,
    })
}

/// Ingress gateways that run: one per gateway workload with a pod that has an address (the
/// first such pod names its identity; replicas share it). An Istio Gateway's pods run as their
/// workload; a Gateway API Gateway's (class `weft`, pods labelled
/// `gateway.networking.k8s.io/gateway-name`) as the Gateway.
pub fn running_gateways(objects: &Objects) -> Vec<RunningWaypoint<'_>> {
    let mut out: BTreeMap<ObjectKey, &Pod> = BTreeMap::new();
    for pod in objects.pods.values() {
        if pod.ip.is_none() || pod.terminating {
            continue;
        }
        if is_ingress_pod(objects, pod) {
            out.entry(ObjectKey::new(&pod.namespace, &gateway_name(pod)))
                .or_insert(pod);
        }
        if let Some(name) = pod.labels.get(GATEWAY_NAME)
            && api_gateways(objects)
                .any(|(p, _)| p.key.namespace == pod.namespace && &p.key.name == name)
        {
            out.entry(ObjectKey::new(&pod.namespace, name))
                .or_insert(pod);
        }
    }
    out.into_iter()
        .map(|(key, pod)| RunningWaypoint { key, pod })
        .collect()
}

/// The hosts both the server admits and the VirtualService names.
fn hostnames(server: &Server, vs_hosts: &[String]) -> Vec<String> {
    let admitted: Vec<&str> = server.hostnames().collect();
    let allows = |host: &str| {
        admitted.iter().any(|a| {
            *a == "*"
                || a.eq_ignore_ascii_case(host)
                || a.strip_prefix("*.")
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
        })
    };
    let mut out = Vec::new();
    for h in vs_hosts {
        if h == "*" {
            // The VirtualService takes whatever the server admits.
            out.extend(admitted.iter().map(|a| (*a).to_owned()));
        } else if allows(h) {
            out.push(h.clone());
        }
    }
    out.dedup();
    out
}

/// 0 for a list holding a host name, 1 for `*.suffix` at best, 2 for `*` (or nothing).
fn specificity(names: &[String]) -> u8 {
    names
        .iter()
        .map(|n| match n.as_str() {
            "*" => 2,
            n if n.starts_with("*.") => 1,
            _ => 0,
        })
        .min()
        .unwrap_or(2)
}

/// What the gateway `running` serves: a listener per served port of the Gateways selecting
/// its pod, each with the bound VirtualServices' routes by host.
pub(super) fn gateway_config(
    objects: &Objects,
    members: &Membership<'_>,
    running: &RunningWaypoint<'_>,
    tracing: Option<weft_core::mesh::Tracing>,
) -> WaypointConfig {
    let pod = running.pod;
    let authz = workload_authz(objects, pod);
    let mut listeners: BTreeMap<u16, Listener> = BTreeMap::new();
    for (gateway, spec) in istio_gateways(objects) {
        if spec.selector.is_empty() || !labels_match(&spec.selector, &pod.labels) {
            continue;
        }
        for (i, server) in spec.servers.iter().enumerate() {
            let Some(serving) = server.serving() else {
                continue;
            };
            let listener = listeners
                .entry(server.port.number)
                .or_insert_with(|| Listener {
                    name: format!("{} server {i}", gateway.describe()),
                    port: server.port.number,
                    hosts: Vec::new(),
                    certificates: Vec::new(),
                    https_redirect: false,
                    mesh_only: false,
                });
            match serving {
                Serving::Http => {}
                Serving::RedirectToHttps => listener.https_redirect = true,
                Serving::MeshOnly => listener.mesh_only = true,
                Serving::Https { credential } => listener.certificates.push(ListenerCert {
                    hostnames: server.hostnames().map(str::to_owned).collect(),
                    credential,
                }),
            }
            for p in objects.policies.values() {
                let PolicySpec::VirtualService(vs) = &p.spec else {
                    continue;
                };
                if !vs.binds(&p.key.namespace, &gateway.key) {
                    continue;
                }
                let hostnames = hostnames(server, &vs.hosts);
                if hostnames.is_empty() {
                    continue;
                }
                listener.hosts.push(virtual_host(
                    objects,
                    members,
                    &p.key,
                    hostnames,
                    &authz,
                    |backends| {
                        vs_routes(
                            objects,
                            backends,
                            &p.key,
                            vs,
                            None,
                            istio::Context::Gateway(&gateway.key),
                        )
                    },
                ));
            }
        }
    }
    if let Some((gateway, spec)) = api_gateways(objects).find(|(p, _)| p.key == running.key) {
        api_listeners(objects, members, gateway, spec, &authz, &mut listeners);
    }
    // The most specific host first (Istio's order): names, then `*.suffix`, then `*`; the
    // same for the certificates SNI picks from.
    for listener in listeners.values_mut() {
        listener.hosts.sort_by_key(|h| specificity(&h.hostnames));
        listener
            .certificates
            .sort_by_key(|c| specificity(&c.hostnames));
    }
    WaypointConfig {
        name: running.key.name.clone(),
        namespace: running.key.namespace.clone(),
        services: Vec::new(),
        tracing,
        listeners: listeners.into_values().collect(),
    }
}

/// The virtual host of one routing object (`key`) for `hostnames`: its routes (those that send
/// somewhere) and the backends they use, judged by the gateway's `authz`.
fn virtual_host(
    objects: &Objects,
    members: &Membership<'_>,
    key: &ObjectKey,
    hostnames: Vec<String>,
    authz: &[weft_core::mesh::AuthzPolicy],
    routes: impl FnOnce(&mut Backends<'_>) -> Vec<weft_core::mesh::Route>,
) -> VirtualHost {
    let mut backends = Backends::new(objects, members);
    let mut routes = routes(&mut backends);
    routes.retain(|r| r.backends.iter().any(|b| b.weight > 0));
    VirtualHost {
        hostnames,
        policy: ServicePolicy {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            vip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: Vec::new(),
            routes,
            backends: backends.list,
            authz: authz.to_vec(),
        },
    }
}

/// A Gateway API Gateway's listeners, with the HTTPRoutes attached to each.
fn api_listeners(
    objects: &Objects,
    members: &Membership<'_>,
    gateway: &Policy,
    spec: &GatewaySpec,
    authz: &[weft_core::mesh::AuthzPolicy],
    listeners: &mut BTreeMap<u16, Listener>,
) {
    for l in spec.listeners.iter().filter(|l| l.served()) {
        let listener = listeners.entry(l.port).or_insert_with(|| Listener {
            name: format!("{} listener {}", gateway.describe(), l.name),
            port: l.port,
            hosts: Vec::new(),
            certificates: Vec::new(),
            https_redirect: false,
            mesh_only: false,
        });
        let own = l.hostname.clone().unwrap_or_else(|| "*".into());
        if let Some(credential) = l.credential() {
            listener.certificates.push(ListenerCert {
                hostnames: vec![own.clone()],
                credential: credential.to_owned(),
            });
        }
        for p in objects.policies.values() {
            let PolicySpec::HttpRoute(route) = &p.spec else {
                continue;
            };
            if !route.attaches_to(&p.key.namespace, &gateway.key, l) {
                continue;
            }
            // The route's hosts within the listener's (none: the listener's).
            let hostnames: Vec<String> = if route.hostnames.is_empty() {
                vec![own.clone()]
            } else {
                route
                    .hostnames
                    .iter()
                    .filter(|h| host_matches(&own, h) || host_matches(h, &own))
                    .cloned()
                    .collect()
            };
            if hostnames.is_empty() {
                continue;
            }
            listener.hosts.push(virtual_host(
                objects,
                members,
                &p.key,
                hostnames,
                authz,
                |backends| rule_routes(objects, backends, &p.key, route, None),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_core::mesh::Protocol;

    use crate::model::Objects;
    use crate::model::translate::mesh_config;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {weft.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: istio-ingressgateway-7d4b9-x2x4q, namespace: istio-system, labels: {istio: ingressgateway, pod-template-hash: 7d4b9}, ownerReferences: [{kind: ReplicaSet, name: istio-ingressgateway-7d4b9, controller: true}]}
spec: {serviceAccountName: istio-ingressgateway, nodeName: node1, containers: [{name: gw}]}
status: {podIP: 10.10.1.9}
---
apiVersion: v1
kind: Pod
metadata: {name: productpage, namespace: default, labels: {app: productpage}}
spec: {nodeName: node2, containers: [{name: app, ports: [{containerPort: 9080}]}]}
status: {podIP: 10.10.2.5}
---
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec: {selector: {app: productpage}, clusterIP: 10.96.0.40, ports: [{port: 9080, targetPort: 9080}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: bookinfo-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - route: [{destination: {host: productpage}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop.example.test]
  gateways: [default/bookinfo-gateway]
  http:
  - route: [{destination: {host: productpage}}]
"#;

    #[test]
    fn a_pod_the_gateway_selects_gets_a_listener_per_http_server_with_bound_routes_by_host() {
        let (objects, errors) =
            crate::source::manifests::parse_file(std::path::Path::new("t.yaml"), CLUSTER);
        assert!(errors.is_empty(), "{errors:?}");
        let objects: Objects = objects.into_iter().collect();
        let mesh = mesh_config(&objects, "cluster.local");
        // Named after its Deployment, published as a workload speaking HBONE itself.
        let gw = mesh
            .waypoints
            .iter()
            .find(|w| w.name == "istio-ingressgateway" && w.namespace == "istio-system")
            .expect("the gateway's config");
        let workload = mesh
            .workloads
            .iter()
            .find(|w| w.namespace == "istio-system")
            .expect("the gateway's pod is a workload");
        assert_eq!(workload.protocol, Protocol::Tcp);
        assert_eq!(workload.service_account, "istio-ingressgateway");
        // Port 80, and 443 with TLS by the Secret's name.
        assert_eq!(gw.listeners.len(), 2, "{:?}", gw.listeners);
        let listener = &gw.listeners[0];
        assert_eq!(listener.port, 80);
        assert!(listener.certificates.is_empty());
        let tls = &gw.listeners[1];
        assert_eq!(tls.port, 443);
        assert_eq!(tls.certificates[0].credential, "bookinfo-cert");
        assert_eq!(tls.certificates[0].hostnames, ["*"]);
        assert_eq!(tls.hosts.len(), 2, "the same routes over TLS");
        // The exact host first, then `*`.
        let names: Vec<_> = listener
            .hosts
            .iter()
            .map(|h| h.policy.name.as_str())
            .collect();
        assert_eq!(names, ["shop", "bookinfo"]);
        assert!(listener.hosts[0].serves("SHOP.example.test"));
        assert!(!listener.hosts[0].serves("other.example.test"));
        let backend = &listener.hosts[1].policy.backends[0];
        assert_eq!(backend.endpoints, ["productpage"]);
    }
}
