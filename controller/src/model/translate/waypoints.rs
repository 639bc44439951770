//! Waypoints: which run (a `weft-waypoint` Gateway with a pod), which services are bound to
//! one (`weft.io/use-waypoint`), and what a waypoint applies to each of them.
//!
//! Precedence for a service's routes: an HTTPRoute whose parent is the service, else an Istio
//! VirtualService for it, else its ServiceProfile routes, then a default route (split by a
//! TrafficSplit on the service, if any, else every endpoint).

use weft_core::mesh::{Route, ServicePolicy, WaypointConfig};

use super::authz::authz_for;
use super::backends::Backends;
use super::common::default_retry;
use super::endpoints::Membership;
use super::gateway_api::http_route_routes;
use super::istio::virtual_service_routes;
use super::linkerd::profile_routes;
use super::smi::default_backends;
use crate::model::key::ObjectKey;
use crate::model::objects::{Objects, Pod, Service};
use crate::model::policy::gateway::WAYPOINT_CLASS;
use crate::model::policy::{Policy, PolicySpec};

/// Label on a Service or Namespace naming the waypoint its traffic goes through (`none` on a
/// Service opts it out of its namespace's waypoint).
pub const USE_WAYPOINT: &str = "weft.io/use-waypoint";

/// Label a waypoint's pods carry (as Gateway API implementations label them).
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// A waypoint that runs: its Gateway and its pod.
pub struct RunningWaypoint<'a> {
    /// `namespace/name` of the Gateway.
    pub key: ObjectKey,
    /// Its pod.
    pub pod: &'a Pod,
}

/// Waypoints whose Gateway (class `weft-waypoint`) exists and whose pod has an IP.
pub fn running_waypoints(objects: &Objects) -> Vec<RunningWaypoint<'_>> {
    let mut out = Vec::new();
    for policy in waypoint_gateways(objects) {
        let pod = objects.pods.values().find(|p| {
            p.namespace == policy.key.namespace
                && p.labels.get(GATEWAY_NAME) == Some(&policy.key.name)
                && p.ip.is_some()
                // A terminating waypoint drains: it takes no new tunnels.
                && !p.terminating
        });
        if let Some(pod) = pod {
            out.push(RunningWaypoint {
                key: policy.key.clone(),
                pod,
            });
        }
    }
    out
}

/// Whether `policy` is a Gateway of class `weft-waypoint`: a waypoint Weft runs.
pub fn is_waypoint_gateway(policy: &Policy) -> bool {
    matches!(&policy.spec, PolicySpec::Gateway(gw) if gw.gateway_class_name == WAYPOINT_CLASS)
}

/// The Gateways of class `weft-waypoint`.
pub fn waypoint_gateways(objects: &Objects) -> impl Iterator<Item = &Policy> {
    objects.policies.values().filter(|p| is_waypoint_gateway(p))
}

/// Whether `pod` is a waypoint's (never captured: it speaks HBONE itself).
pub fn is_waypoint_pod(pod: &Pod) -> bool {
    pod.labels.contains_key(GATEWAY_NAME)
}

/// The waypoint (`namespace/name`) a service is bound to, if any.
pub fn waypoint_of(objects: &Objects, svc: &Service) -> Option<ObjectKey> {
    let name = match svc.labels.get(USE_WAYPOINT) {
        Some(name) => name,
        None => objects
            .namespaces
            .get(&svc.namespace)
            .and_then(|ns| ns.labels.get(USE_WAYPOINT))?,
    };
    if name == "none" || name.is_empty() {
        return None;
    }
    Some(ObjectKey::new(&svc.namespace, name))
}

/// What `waypoint` applies to each service bound to it.
pub fn waypoint_config(
    objects: &Objects,
    members: &Membership<'_>,
    waypoint: &ObjectKey,
) -> WaypointConfig {
    let mut services = Vec::new();
    for svc in objects.services.values() {
        if waypoint_of(objects, svc).as_ref() != Some(waypoint) {
            continue;
        }
        let Some(vip) = svc.cluster_ip else { continue };
        let mut backends = Backends::new(objects, members);
        let explicit = http_route_routes(objects, &mut backends, svc)
            .or_else(|| virtual_service_routes(objects, &mut backends, svc));
        let routes = match explicit {
            Some(routes) => routes,
            None => {
                let default = default_backends(objects, &mut backends, svc);
                let mut routes = profile_routes(objects, svc, &default);
                routes.push(Route {
                    name: "default".into(),
                    matches: Vec::new(),
                    backends: default,
                    timeout_ms: None,
                    retry: Some(default_retry()),
                    ..Route::default()
                });
                routes
            }
        };
        // A rule whose backends all weigh 0 sends nothing anywhere: leave it out rather than
        // hand the proxies a route they would refuse (with the whole update).
        let mut routes = routes;
        routes.retain(|r| r.backends.iter().any(|b| b.weight > 0));
        let this = backends.get(svc, None);
        let ports = backends.list[this].ports.clone();
        services.push(ServicePolicy {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            vip,
            ports,
            routes,
            authz: authz_for(objects, members, svc, waypoint),
            backends: backends.list,
        });
    }
    WaypointConfig {
        name: waypoint.name.clone(),
        namespace: waypoint.namespace.clone(),
        services,
        tracing: super::tracing::tracing_for(objects, &waypoint.namespace),
        listeners: Vec::new(),
    }
}
