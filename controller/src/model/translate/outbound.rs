//! Where enrolled pods may connect outside the mesh: the outbound traffic policy, mesh-wide
//! from the (first) IstioOperator's `meshConfig.outboundTrafficPolicy.mode`, per namespace from
//! the namespace label `weft.io/outbound-traffic-policy` (`REGISTRY_ONLY` or `ALLOW_ANY`); and
//! the external services the ServiceEntries describe, and the egress gateways that a
//! VirtualService applying in the mesh sends their hosts' traffic through.

use weft_core::identity::SpiffeId;
use weft_core::mesh::{
    Cidr, EgressVia, External, HostAddress, Outbound, WaypointRef, host_matches,
};

use super::common::{labels_match, service_for};
use super::ingress::is_ingress_pod;
use crate::model::objects::{Objects, Pod, Service, TargetPort};
use crate::model::policy::PolicySpec;
use crate::model::policy::istio::Context;

/// Namespace label setting its pods' outbound traffic policy.
pub const OUTBOUND_POLICY: &str = "weft.io/outbound-traffic-policy";

/// The outbound policy and external services for `objects`.
pub fn outbound(objects: &Objects, trust_domain: &str) -> Outbound {
    let registry_only = objects
        .policies
        .values()
        .find_map(|p| match &p.spec {
            PolicySpec::IstioOperator(o) => Some(o.registry_only),
            _ => None,
        })
        .flatten()
        .unwrap_or(false);
    let namespaces = objects
        .namespaces
        .values()
        .filter_map(|ns| {
            let mode = ns.labels.get(OUTBOUND_POLICY)?;
            // A value that is neither is read as the stricter mode (fail closed).
            Some((ns.name.clone(), mode != "ALLOW_ANY"))
        })
        .collect();
    let mut external: Vec<External> = objects
        .policies
        .values()
        .filter_map(|p| match &p.spec {
            PolicySpec::ServiceEntry(se) => Some(External {
                via: egress_via(objects, trust_domain, &se.hosts),
                allocated: Vec::new(),
                name: p.key.name.clone(),
                namespace: p.key.namespace.clone(),
                hosts: se.hosts.clone(),
                // Checked when the entry was read.
                addresses: se
                    .admitted()
                    .into_iter()
                    .filter_map(|a| a.parse::<Cidr>().ok())
                    .collect(),
                ports: se.ports.iter().map(|p| p.number).collect(),
            }),
            _ => None,
        })
        .collect();
    allocate(&mut external);
    let dns_proxy = objects
        .policies
        .values()
        .find_map(|p| match &p.spec {
            PolicySpec::IstioOperator(o) => Some(o.dns_capture),
            _ => None,
        })
        .flatten()
        .unwrap_or(true);
    Outbound {
        registry_only,
        namespaces,
        external,
        dns_proxy,
    }
}

/// Where the mesh's connections to `hosts` (a ServiceEntry's) go through an egress gateway:
/// for each VirtualService applying in the mesh to one of the hosts, each rule (its matches
/// that apply in the mesh give the ports) whose first destination is a Service backed by
/// gateway pods (an Istio Gateway selects them) sends those ports to one of the pods, at the
/// destination port's target.
fn egress_via(objects: &Objects, trust_domain: &str, hosts: &[String]) -> Vec<EgressVia> {
    let mut via = Vec::new();
    for p in objects.policies.values() {
        let PolicySpec::VirtualService(vs) = &p.spec else {
            continue;
        };
        let names_host = vs.hosts.iter().any(|v| {
            hosts
                .iter()
                .any(|h| host_matches(v, h) || host_matches(h, v))
        });
        if !vs.in_mesh() || !names_host {
            continue;
        }
        for http in &vs.http {
            let applicable: Vec<_> = http
                .matches
                .iter()
                .filter(|m| m.applies(&p.key.namespace, Context::Mesh))
                .collect();
            if !http.matches.is_empty() && applicable.is_empty() {
                continue;
            }
            let Some(destination) = http.route.first().map(|r| &r.destination) else {
                continue;
            };
            let Some(svc) = service_for(objects, &destination.host, &p.key.namespace) else {
                continue;
            };
            let Some(pod) = gateway_pod(objects, svc) else {
                continue;
            };
            let (Some(ip), Some(gateway_port)) = (
                pod.ip,
                target_port(svc, pod, destination.port.as_ref().map(|p| p.number)),
            ) else {
                continue;
            };
            // Every port, when some match names none.
            let ports: Vec<Option<u16>> =
                if applicable.is_empty() || applicable.iter().any(|m| m.port.is_none()) {
                    vec![None]
                } else {
                    applicable.iter().map(|m| m.port).collect()
                };
            for port in ports {
                if via
                    .iter()
                    .any(|v: &EgressVia| v.port == port || v.port.is_none())
                {
                    continue;
                }
                via.push(EgressVia {
                    port,
                    gateway: WaypointRef {
                        name: format!("{}/{}", pod.namespace, pod.name),
                        ip,
                        identity: SpiffeId::new(trust_domain, &pod.namespace, &pod.service_account),
                    },
                    gateway_port,
                });
            }
        }
    }
    via
}

/// A running gateway pod behind `svc` (the first by name).
fn gateway_pod<'a>(objects: &'a Objects, svc: &Service) -> Option<&'a Pod> {
    objects.pods.values().find(|pod| {
        pod.namespace == svc.namespace
            && !svc.selector.is_empty()
            && labels_match(&svc.selector, &pod.labels)
            && pod.ip.is_some()
            && !pod.terminating
            && is_ingress_pod(objects, pod)
    })
}

/// The pod port `svc`'s port `port` (none: its first) goes to.
fn target_port(svc: &Service, pod: &Pod, port: Option<u16>) -> Option<u16> {
    let spec = match port {
        Some(port) => svc.ports.iter().find(|p| p.port == port)?,
        None => svc.ports.first()?,
    };
    match &spec.target_port {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => pod
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    }
}

/// The block allocated addresses come from (Istio's): class E, routed by no network.
const ALLOCATED_BLOCK: [u8; 2] = [240, 240];

/// Gives each host (not a wildcard) of an entry without single addresses of its own an
/// address in 240.240.0.0/16, so the DNS proxy can answer it and the node proxies tell the
/// hosts apart. Stable: the address comes from a hash of the entry and host, the next free one
/// on a collision (entries are visited in name order).
fn allocate(external: &mut [External]) {
    let mut taken = std::collections::BTreeSet::new();
    for entry in external.iter_mut() {
        let has_own = entry
            .addresses
            .iter()
            .any(|a| a.ip.is_ipv4() && a.prefix == 32);
        if has_own {
            continue;
        }
        for host in entry.hosts.iter().filter(|h| !h.contains('*')) {
            let key = format!(
                "{}/{}/{}",
                entry.namespace,
                entry.name,
                host.to_ascii_lowercase()
            );
            // FNV-1a, folded to 16 bits.
            let hash = key.bytes().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            let mut offset = ((hash >> 16) ^ (hash & 0xffff)) as u16;
            // Neither the block's first nor last address; the next free one on a collision.
            while offset == 0 || offset == u16::MAX || taken.contains(&offset) {
                offset = offset.wrapping_add(1);
            }
            taken.insert(offset);
            let [hi, lo] = offset.to_be_bytes();
            entry.allocated.push(HostAddress {
                host: host.clone(),
                ip: std::net::Ipv4Addr::new(ALLOCATED_BLOCK[0], ALLOCATED_BLOCK[1], hi, lo),
            });
        }
    }
}
