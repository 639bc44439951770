//! The mesh the proxies are told about: workloads (enrolled or not, with their mTLS mode and
//! L4 authorization), services with their endpoints and waypoint, and each waypoint's config.

use weft_core::identity::SpiffeId;
use weft_core::mesh::{MeshConfig, Protocol, WaypointRef, Workload};

use super::authz::workload_authz;
use super::endpoints::Membership;
use super::ingress::{gateway_config, is_ingress_pod, running_gateways};
use super::names::telemetry_names;
use super::peer_auth::peer_authentication;
use super::waypoints::{is_waypoint_pod, running_waypoints, waypoint_config, waypoint_of};
use crate::model::objects::{Objects, Pod};
use crate::model::policy::istio::MtlsMode;

/// Namespace (and pod) label that enrolls a namespace in the mesh, or opts a pod out.
pub const DATAPLANE_MODE: &str = "weft.io/dataplane-mode";
/// [`DATAPLANE_MODE`] value on a namespace: its pods are in the mesh.
pub const AMBIENT: &str = "ambient";
/// [`DATAPLANE_MODE`] value on a pod: leave it out even in an enrolled namespace.
pub const OPT_OUT: &str = "none";

/// Whether `pod` is in the mesh: its namespace is labelled ambient and the pod did not opt out.
pub fn enrolled(objects: &Objects, pod: &Pod) -> bool {
    let namespace_ambient = objects
        .namespaces
        .get(&pod.namespace)
        .and_then(|ns| ns.labels.get(DATAPLANE_MODE))
        .is_some_and(|v| v == AMBIENT);
    let opted_out = pod.labels.get(DATAPLANE_MODE).is_some_and(|v| v == OPT_OUT);
    namespace_ambient && !opted_out
}

/// What the proxies act on, from the objects: every service with a cluster IP gets the pods
/// that back it as endpoints (`Membership`); every scheduled pod with an IP that is in the
/// mesh becomes a workload (HBONE, or TCP under PeerAuthentication DISABLE). A pod outside the
/// mesh is published (as TCP) only where a
/// proxy needs it: as a service's endpoint (the source proxy balances to it) or as a
/// waypoint. The rest of the cluster, whose traffic no proxy captures or resolves, stays out
/// of every proxy's config. Pods whose IP another pod already holds are skipped (the older
/// object wins: a stale pod does not take over a live one's traffic).
pub fn mesh_config(objects: &Objects, trust_domain: &str) -> MeshConfig {
    let members = Membership::new(objects);
    let running = running_waypoints(objects);
    let mut services = Vec::new();
    let mut backing = std::collections::BTreeSet::new();
    for svc in objects.services.values() {
        let Some(vip) = svc.cluster_ip else { continue };
        let endpoints = members.endpoints(svc);
        let ports = Membership::ports(svc, &endpoints);
        if ports.is_empty() {
            continue;
        }
        backing.extend(endpoints.iter().map(|p| (&p.namespace, &p.name)));
        services.push(weft_core::mesh::Service {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            vip,
            ports,
            endpoints: endpoints.iter().map(|m| m.name.clone()).collect(),
            waypoint: waypoint_of(objects, svc).and_then(|key| {
                let w = running.iter().find(|w| w.key == key)?;
                Some(WaypointRef {
                    name: key.to_string(),
                    ip: w.pod.ip?,
                    identity: SpiffeId::new(trust_domain, &w.pod.namespace, &w.pod.service_account),
                })
            }),
        });
    }
    let mut workloads = Vec::new();
    for pod in objects.pods.values() {
        if !members.holds_its_ip(pod) {
            continue;
        }
        let (Some(ip), Some(node)) = (pod.ip, pod.node.as_ref()) else {
            continue;
        };
        // A waypoint speaks HBONE itself and is never captured; PeerAuthentication DISABLE
        // makes a workload plain TCP both ways.
        let (mode, mtls) = peer_authentication(objects, pod);
        // An ingress gateway's pod, like a waypoint's, speaks HBONE itself.
        let waypoint = is_waypoint_pod(pod) || is_ingress_pod(objects, pod);
        let in_mesh = enrolled(objects, pod);
        let hbone = in_mesh && !waypoint && mode != MtlsMode::Disable;
        // In the mesh with DISABLE, a pod is still the proxies' business: sources reach it in
        // plain TCP knowingly (and report it so).
        if !in_mesh && !waypoint && !backing.contains(&(&pod.namespace, &pod.name)) {
            continue;
        }
        workloads.push(Workload {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            ip,
            node: node.clone(),
            protocol: if hbone {
                Protocol::Hbone
            } else {
                Protocol::Tcp
            },
            netns: None,
            mtls: if hbone { mtls } else { Default::default() },
            authz: if hbone {
                workload_authz(objects, pod)
            } else {
                Vec::new()
            },
            meta: telemetry_names(pod),
        });
    }
    let waypoints = running
        .iter()
        .map(|w| waypoint_config(objects, &members, &w.key))
        .chain(running_gateways(objects).iter().map(|g| {
            gateway_config(
                objects,
                &members,
                g,
                super::tracing::tracing_for(objects, &g.key.namespace),
            )
        }))
        .collect();
    MeshConfig {
        trust_domain: trust_domain.to_owned(),
        workloads,
        services,
        waypoints,
        outbound: super::outbound::outbound(objects, trust_domain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::model::objects::{Namespace, PodPort, Service, ServicePortSpec, TargetPort};

    fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            name: name.into(),
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            service_account: "default".into(),
            node: Some("node1".into()),
            ip: ip.parse().ok(),
            ports: vec![PodPort {
                name: Some("http".into()),
                container_port: 8080,
            }],
            terminating: false,
            owner: None,
        }
    }

    fn objects() -> Objects {
        let mut o = Objects::default();
        o.upsert_namespace(Namespace {
            name: "shop".into(),
            labels: [(DATAPLANE_MODE.to_owned(), AMBIENT.to_owned())].into(),
        });
        o.upsert_namespace(Namespace {
            name: "legacy".into(),
            labels: BTreeMap::new(),
        });
        o.upsert_pod(pod("shop", "web-1", "10.10.1.2", &[("app", "web")]));
        o.upsert_pod(pod(
            "shop",
            "debug",
            "10.10.1.3",
            &[(DATAPLANE_MODE, OPT_OUT)],
        ));
        o.upsert_pod(pod("legacy", "batch", "10.10.1.4", &[("app", "web")]));
        o.upsert_pod(pod("shop", "pending", "", &[("app", "web")]));
        o.upsert_service(Service {
            name: "web".into(),
            namespace: "shop".into(),
            labels: BTreeMap::new(),
            selector: [("app".to_owned(), "web".to_owned())].into(),
            cluster_ip: "10.96.0.10".parse().ok(),
            ports: vec![ServicePortSpec {
                port: 80,
                target_port: TargetPort::Name("http".into()),
            }],
        });
        o
    }

    #[test]
    fn enrollment_follows_namespace_and_pod_labels() {
        let mut o = objects();
        o.upsert_pod(pod(
            "shop",
            "web-legacy",
            "10.10.1.5",
            &[("app", "web"), (DATAPLANE_MODE, OPT_OUT)],
        ));
        let mesh = mesh_config(&o, "cluster.local");
        let protocol = |name: &str| {
            mesh.workloads
                .iter()
                .find(|w| w.name == name)
                .map(|w| w.protocol)
        };
        assert_eq!(protocol("web-1"), Some(Protocol::Hbone));
        // Outside the mesh, a pod is published only as a service's endpoint: the proxies
        // balance to it (in plain TCP) but have no other use for it.
        assert_eq!(
            protocol("web-legacy"),
            Some(Protocol::Tcp),
            "opted out, backs web"
        );
        assert_eq!(protocol("debug"), None, "opted out, backs nothing");
        assert_eq!(
            protocol("batch"),
            None,
            "namespace not enrolled, backs nothing"
        );
        assert_eq!(protocol("pending"), None, "no IP yet");
    }

    #[test]
    fn services_select_pods_in_their_namespace_and_resolve_named_ports() {
        let mesh = mesh_config(&objects(), "cluster.local");
        let web = &mesh.services[0];
        assert_eq!(web.endpoints, vec!["web-1".to_owned()]);
        assert_eq!(web.ports[0].target_port, 8080);
        // The result is a config the proxies accept.
        assert!(
            MeshConfig::parse(
                std::path::Path::new("test"),
                &serde_yaml::to_string(&mesh).expect("yaml")
            )
            .is_ok()
        );
    }

    #[test]
    fn a_pod_changing_ip_and_a_duplicate_ip() {
        let mut o = objects();
        o.upsert_pod(pod("shop", "web-1", "10.10.1.9", &[("app", "web")]));
        o.upsert_pod(pod("shop", "web-2", "10.10.1.9", &[("app", "web")]));
        let mesh = mesh_config(&o, "cluster.local");
        let holders: Vec<_> = mesh
            .workloads
            .iter()
            .filter(|w| w.ip.to_string() == "10.10.1.9")
            .collect();
        assert_eq!(holders.len(), 1, "one workload per IP");
        assert_eq!(mesh.services[0].endpoints.len(), 1);
    }

    #[test]
    fn telemetry_names_the_deployment_behind_a_replicaset_and_the_canonical_labels() {
        let mut p = pod(
            "shop",
            "reviews-v2-5d9f8c7b6-x2x4q",
            "10.0.0.9",
            &[
                ("pod-template-hash", "5d9f8c7b6"),
                ("app", "reviews"),
                ("version", "v2"),
                ("app.kubernetes.io/name", "reviews-api"),
            ],
        );
        p.owner = Some(("ReplicaSet".into(), "reviews-v2-5d9f8c7b6".into()));
        let meta = telemetry_names(&p);
        assert_eq!(meta.workload, "reviews-v2");
        assert_eq!(
            (meta.app.as_str(), meta.version.as_str()),
            ("reviews", "v2")
        );
        assert_eq!(meta.canonical_service, "reviews-api");
        assert_eq!(meta.canonical_revision, "v2");

        p.owner = Some(("StatefulSet".into(), "db".into()));
        assert_eq!(telemetry_names(&p).workload, "db");
        let bare = pod("shop", "lonely", "10.0.0.10", &[]);
        let w = Workload {
            name: bare.name.clone(),
            namespace: bare.namespace.clone(),
            service_account: "default".into(),
            ip: "10.0.0.10".parse().expect("an IP"),
            node: "node1".into(),
            protocol: Protocol::Hbone,
            netns: None,
            mtls: Default::default(),
            authz: Vec::new(),
            meta: telemetry_names(&bare),
        };
        assert_eq!(
            (
                w.workload_name(),
                w.canonical_service(),
                w.canonical_revision()
            ),
            ("lonely", "lonely", "latest")
        );
    }
}
