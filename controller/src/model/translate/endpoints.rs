//! Endpoint selection, written once for the node proxies' services and the waypoints'
//! backends: which pods back a service (its selector, or, for a service without one, the
//! ready addresses of its EndpointSlices), which of two pods claiming one IP holds it (the
//! older object: a stale pod does not take over a live one's traffic), and the service's
//! target ports (named ones resolved on its endpoints).

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_core::mesh::ServicePort;

use crate::model::key::ObjectKey;
use crate::model::objects::{Objects, Pod, Service, TargetPort};

/// Who backs what, computed once per translation.
pub struct Membership<'a> {
    objects: &'a Objects,
    owners: BTreeMap<IpAddr, &'a ObjectKey>,
}

impl<'a> Membership<'a> {
    /// Indexes which pod holds each IP.
    pub fn new(objects: &'a Objects) -> Self {
        let mut owners = BTreeMap::new();
        for (key, pod) in &objects.pods {
            if let (Some(ip), Some(_)) = (pod.ip, &pod.node) {
                owners.entry(ip).or_insert(key);
            }
        }
        Self { objects, owners }
    }

    /// Whether `pod` is scheduled, has an IP, and is the pod that IP belongs to.
    pub fn holds_its_ip(&self, pod: &Pod) -> bool {
        pod.node.is_some()
            && pod
                .ip
                .and_then(|ip| self.owners.get(&ip))
                .is_some_and(|k| k.name == pod.name && k.namespace == pod.namespace)
    }

    /// The pods backing `svc`, in name order.
    pub fn endpoints(&self, svc: &Service) -> Vec<&'a Pod> {
        // Pods are keyed by (namespace, name): a range scan finds the service's namespace.
        let in_namespace = self.objects.pods.range(
            ObjectKey::new(&svc.namespace, "")..ObjectKey::new(&format!("{}\0", svc.namespace), ""),
        );
        in_namespace
            .map(|(_, p)| p)
            .filter(|p| p.namespace == svc.namespace && self.holds_its_ip(p))
            .filter(|p| {
                if svc.selector.is_empty() {
                    p.ip.is_some_and(|ip| self.sliced(svc, ip))
                } else {
                    svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                }
            })
            .collect()
    }

    /// `svc`'s ports and where they go on `members`; a named target port no member declares
    /// leaves its port out.
    pub fn ports(svc: &Service, members: &[&Pod]) -> Vec<ServicePort> {
        svc.ports
            .iter()
            .filter_map(|p| {
                let target = match &p.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(name) => {
                        members
                            .iter()
                            .find_map(|m| {
                                m.ports.iter().find(|cp| cp.name.as_deref() == Some(name))
                            })?
                            .container_port
                    }
                };
                Some(ServicePort {
                    port: p.port,
                    target_port: target,
                })
            })
            .collect()
    }

    /// Whether one of `svc`'s EndpointSlices lists `ip` as a ready endpoint.
    fn sliced(&self, svc: &Service, ip: IpAddr) -> bool {
        self.objects.endpoint_slices.values().any(|e| {
            e.namespace == svc.namespace && e.service == svc.name && e.addresses.contains(&ip)
        })
    }
}
