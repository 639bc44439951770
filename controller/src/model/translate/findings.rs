//! What a policy accepted on its own would still not do, once the other objects are read: a
//! host or backend that names no service, a second VirtualService for a host another already
//! routes, a subset no DestinationRule defines, weights that do not sum to 100, routing for a
//! service no waypoint serves. Each finding names the field; the verdict then says
//! PartiallyHonoured instead of an Accepted that would have no effect.

use super::backends::destination_rule;
use super::common::{ROOT_NAMESPACES, host_is, labels_match, service_for};
use super::tracing::tracing_findings;
use super::waypoints::waypoint_of;
use crate::model::objects::{Objects, Service};
use crate::model::policy::{Policy, PolicySpec};

/// The findings on `policy` among `objects`, each `field: what`.
pub fn findings(objects: &Objects, policy: &Policy) -> Vec<String> {
    let ns = policy.key.namespace.as_str();
    let mut out = Vec::new();
    let unbound = |svc: &Service| {
        waypoint_of(objects, svc).is_none().then(|| {
            format!(
                "{}.{} is not bound to a waypoint (weft.io/use-waypoint): its L7 routing applies only through one",
                svc.name, svc.namespace
            )
        })
    };
    match &policy.spec {
        PolicySpec::VirtualService(vs) => {
            for (i, g) in vs.gateways.iter().enumerate() {
                if g == "mesh" {
                    continue;
                }
                let (gns, gname) = g.split_once('/').unwrap_or((ns, g.as_str()));
                let exists = objects.policies.values().any(|p| {
                    matches!(p.spec, PolicySpec::IstioGateway(_))
                        && p.key.namespace == gns
                        && p.key.name == gname
                });
                if !exists {
                    out.push(format!(
                        "spec.gateways[{i}]: no Istio Gateway {gns}/{gname}: no gateway serves these routes"
                    ));
                }
            }
            // Bound only to gateways: the hosts are what outside clients ask for, not services.
            let hosts: &[String] = if vs.in_mesh() { &vs.hosts } else { &[] };
            for (i, host) in hosts.iter().enumerate() {
                let Some(svc) = service_for(objects, host, ns) else {
                    out.push(format!(
                        "spec.hosts[{i}]: no service {host:?}: nothing applies it"
                    ));
                    continue;
                };
                // The first VirtualService for a host routes it (as the translation reads them).
                let first = objects.policies.values().find(|p| {
                    matches!(&p.spec, PolicySpec::VirtualService(other)
                        if other.in_mesh() && other.hosts.iter().any(|h| host_is(h, &p.key.namespace, svc)))
                });
                if let Some(first) = first
                    && first.key != policy.key
                {
                    out.push(format!(
                        "spec.hosts[{i}]: VirtualService {} already routes {host}; this one is not applied to it",
                        first.key
                    ));
                }
                out.extend(unbound(svc).map(|why| format!("spec.hosts[{i}]: {why}")));
            }
            for (i, http) in vs.http.iter().enumerate() {
                let weights: Vec<Option<u32>> = http.route.iter().map(|d| d.weight).collect();
                if weights.len() > 1 && weights.iter().all(Option::is_some) {
                    let sum: u32 = weights.iter().flatten().sum();
                    if sum != 100 {
                        out.push(format!(
                            "spec.http[{i}].route: weights sum to {sum}, not 100: traffic is split in proportion"
                        ));
                    }
                }
                let destinations =
                    http.route
                        .iter()
                        .enumerate()
                        .map(|(j, d)| (format!("route[{j}].destination"), &d.destination))
                        .chain(http.mirror.iter().map(|d| ("mirror".to_owned(), d)))
                        .chain(
                            http.mirrors.iter().enumerate().map(|(k, m)| {
                                (format!("mirrors[{k}].destination"), &m.destination)
                            }),
                        );
                for (field, d) in destinations {
                    let at = format!("spec.http[{i}].{field}");
                    let Some(target) = service_for(objects, &d.host, ns) else {
                        out.push(format!(
                            "{at}.host: no service {:?}: this destination is left out",
                            d.host
                        ));
                        continue;
                    };
                    if let Some(subset) = &d.subset {
                        let defined = destination_rule(objects, target)
                            .is_some_and(|dr| dr.subsets.iter().any(|s| &s.name == subset));
                        if !defined {
                            out.push(format!(
                                "{at}.subset: no DestinationRule for {} defines subset {subset:?}: it has no endpoints",
                                d.host
                            ));
                        }
                    }
                }
            }
        }
        PolicySpec::DestinationRule(dr) if service_for(objects, &dr.host, ns).is_none() => {
            out.push(format!(
                "spec.host: no service {:?}: nothing applies it",
                dr.host
            ));
        }
        PolicySpec::TrafficSplit(ts) => match service_for(objects, &ts.service, ns) {
            None => out.push(format!(
                "spec.service: no service {:?}: nothing applies it",
                ts.service
            )),
            Some(apex) => {
                out.extend(unbound(apex).map(|why| format!("spec.service: {why}")));
                for (i, b) in ts.backends.iter().enumerate() {
                    if service_for(objects, &b.service, ns).is_none() {
                        out.push(format!(
                            "spec.backends[{i}].service: no service {:?}: this backend is left out",
                            b.service
                        ));
                    }
                }
            }
        },
        PolicySpec::HttpRoute(route) => {
            let mut parent_ports: Vec<u16> = Vec::new();
            for (i, parent) in route.parent_refs.iter().enumerate() {
                if !route.service_parents().any(|p| std::ptr::eq(p, parent)) {
                    continue;
                }
                let parent_ns = parent.namespace.as_deref().unwrap_or(ns);
                match objects
                    .services
                    .get(&crate::model::key::ObjectKey::new(parent_ns, &parent.name))
                {
                    None => out.push(format!(
                        "spec.parentRefs[{i}]: no service {parent_ns}/{}: nothing applies it",
                        parent.name
                    )),
                    Some(svc) => {
                        parent_ports.extend(svc.ports.iter().map(|p| p.port));
                        out.extend(unbound(svc).map(|why| format!("spec.parentRefs[{i}]: {why}")));
                    }
                }
            }
            // A backend is reached on the port the request arrived on: a backendRef naming
            // another port is not honoured.
            for (i, rule) in route.rules.iter().enumerate() {
                for (j, b) in rule.backend_refs.iter().enumerate() {
                    if let Some(port) = b.port
                        && !parent_ports.is_empty()
                        && !parent_ports.contains(&port)
                    {
                        out.push(format!(
                            "spec.rules[{i}].backendRefs[{j}].port: {port} is not a port of the parent Service; the backend is reached on the port the request arrived on"
                        ));
                    }
                }
            }
        }
        PolicySpec::AuthorizationPolicy(ap) => {
            let root = ROOT_NAMESPACES.contains(&ns);
            if let Some(selector) = &ap.selector
                && !selector.match_labels.is_empty()
                && !objects.pods.values().any(|pod| {
                    (root || pod.namespace == ns)
                        && labels_match(&selector.match_labels, &pod.labels)
                })
            {
                out.push(format!(
                    "spec.selector: no pod {} carries {:?}: it selects nothing (yet)",
                    if root {
                        "in the mesh".to_owned()
                    } else {
                        format!("in namespace {ns}")
                    },
                    selector.match_labels
                ));
            }
            let refs = ap
                .target_ref
                .iter()
                .map(|t| ("spec.targetRef".to_owned(), t))
                .chain(
                    ap.target_refs
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)),
                );
            for (at, target) in refs {
                let target_ns = target.namespace.as_deref().unwrap_or(ns);
                let exists = match target.kind.as_str() {
                    "Service" => objects
                        .services
                        .values()
                        .any(|s| s.namespace == target_ns && s.name == target.name),
                    "Gateway" => objects.policies.values().any(|p| {
                        matches!(p.spec, PolicySpec::Gateway(_))
                            && p.key.namespace == target_ns
                            && p.key.name == target.name
                    }),
                    _ => true,
                };
                if !exists {
                    out.push(format!(
                        "{at}: no {} {target_ns}/{}: it selects nothing (yet)",
                        target.kind, target.name
                    ));
                }
            }
        }
        PolicySpec::ServiceProfile(_) => match service_for(objects, &policy.key.name, ns) {
            None => out.push(format!(
                "metadata.name: no service {:?}: nothing applies it",
                policy.key.name
            )),
            Some(svc) => out.extend(unbound(svc).map(|why| format!("metadata.name: {why}"))),
        },
        PolicySpec::IstioGateway(g) if !g.selector.is_empty() => {
            let selected = objects
                .pods
                .values()
                .any(|p| super::common::labels_match(&g.selector, &p.labels));
            if !selected {
                out.push(
                    "spec.selector: no pod has these labels (yet): no gateway serves this Gateway"
                        .into(),
                );
            }
            let bound = objects.policies.values().any(|p| {
                matches!(&p.spec, PolicySpec::VirtualService(vs) if vs.binds(&p.key.namespace, &policy.key))
            });
            if !bound {
                out.push(format!(
                    "metadata.name: no VirtualService names {} in `gateways`: the gateway answers 404",
                    policy.key
                ));
            }
        }
        PolicySpec::Telemetry(_) | PolicySpec::IstioOperator(_) | PolicySpec::LinkerdConfig(_) => {
            out.extend(tracing_findings(objects, policy));
        }
        _ => {}
    }
    out
}
