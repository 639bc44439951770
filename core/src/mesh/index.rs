//! The mesh as a proxy looks it up, per connection: an immutable index of a validated
//! [`MeshConfig`] (workloads by IP, services by address, waypoints by endpoint), swapped whole
//! on change.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::config::MeshConfig;
use super::service::{Service, WaypointRef};
use super::workload::Workload;
use crate::identity::SpiffeId;

/// A resolved destination: where to send a connection and what identity must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The workload chosen.
    pub workload: Arc<Workload>,
    /// Its address and port.
    pub addr: SocketAddr,
    /// The service it was reached through, if any.
    pub service: Option<Arc<Service>>,
}

/// A service port as resolved: the service, its target port and its endpoints.
type ServiceEntry = (Arc<Service>, u16, Vec<Arc<Workload>>);

/// An indexed, immutable snapshot of a [`MeshConfig`], swapped whole on change.
#[derive(Debug, Default)]
pub struct MeshIndex {
    config: MeshConfig,
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    services_by_addr: HashMap<SocketAddr, ServiceEntry>,
    /// Endpoints of waypoint-bound services: their traffic must pass the waypoint.
    waypoint_by_endpoint: HashMap<IpAddr, WaypointRef>,
    /// The identities waypoints prove.
    waypoint_identities: HashSet<SpiffeId>,
}

impl MeshIndex {
    /// Indexes a validated config.
    pub fn new(config: MeshConfig) -> Self {
        let workloads_by_ip: HashMap<_, _> = config
            .workloads
            .iter()
            .map(|w| (w.ip, Arc::new(w.clone())))
            .collect();
        let by_name: HashMap<(&str, &str), &Arc<Workload>> = workloads_by_ip
            .values()
            .map(|w| ((w.namespace.as_str(), w.name.as_str()), w))
            .collect();
        let mut services_by_addr = HashMap::new();
        let mut waypoint_by_endpoint = HashMap::new();
        let waypoint_identities = config
            .services
            .iter()
            .filter_map(|s| Some(s.waypoint.as_ref()?.identity.clone()))
            .collect();
        for s in &config.services {
            let service = Arc::new(s.clone());
            let endpoints: Vec<Arc<Workload>> = s
                .endpoints
                .iter()
                .filter_map(|e| by_name.get(&(s.namespace.as_str(), e.as_str())))
                .map(|w| Arc::clone(w))
                .collect();
            if let Some(waypoint) = &s.waypoint {
                for e in &endpoints {
                    waypoint_by_endpoint.insert(e.ip, waypoint.clone());
                }
            }
            for port in &s.ports {
                services_by_addr.insert(
                    SocketAddr::new(s.vip, port.port),
                    (service.clone(), port.target_port, endpoints.clone()),
                );
            }
        }
        Self {
            config,
            workloads_by_ip,
            services_by_addr,
            waypoint_by_endpoint,
            waypoint_identities,
        }
    }

    /// Whether `id` is a waypoint's: one may forward for the clients it serves (it checks
    /// their addresses against their identities).
    pub fn is_waypoint(&self, id: &SpiffeId) -> bool {
        self.waypoint_identities.contains(id)
    }

    /// The waypoint traffic to `dst` must pass: the service's, for a service address; for a
    /// pod, the waypoint of a service it backs.
    pub fn waypoint_for(&self, dst: SocketAddr) -> Option<&WaypointRef> {
        match self.services_by_addr.get(&dst) {
            Some((service, _, _)) => service.waypoint.as_ref(),
            None => self.waypoint_by_endpoint.get(&dst.ip()),
        }
    }

    /// The waypoint guarding the workload at `ip`, if it backs a waypoint-bound service.
    pub fn waypoint_guarding(&self, ip: IpAddr) -> Option<&WaypointRef> {
        self.waypoint_by_endpoint.get(&ip)
    }

    /// The config this snapshot was built from.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// The workload with this IP.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    /// Workloads scheduled on `node`.
    pub fn workloads_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads_by_ip
            .values()
            .filter(move |w| w.node == node)
    }

    /// Whether `id` is `workload`'s identity (compared without building one).
    pub fn has_identity(&self, workload: &Workload, id: &SpiffeId) -> bool {
        id.service_account() == workload.service_account
            && id.namespace() == workload.namespace
            && id.trust_domain() == self.config.trust_domain
    }

    /// Identity of a workload in this mesh's trust domain.
    pub fn identity(&self, workload: &Workload) -> SpiffeId {
        SpiffeId::new(
            &self.config.trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
    }

    /// Resolves an original destination: a service VIP picks one endpoint (`pick` chooses
    /// among `n`), a pod IP is itself, anything else is outside the mesh (`None`).
    pub fn resolve(&self, dst: SocketAddr, pick: impl FnOnce(usize) -> usize) -> Option<Upstream> {
        if let Some((service, target_port, endpoints)) = self.services_by_addr.get(&dst) {
            if endpoints.is_empty() {
                return None;
            }
            let workload = endpoints[pick(endpoints.len()) % endpoints.len()].clone();
            return Some(Upstream {
                addr: SocketAddr::new(workload.ip, *target_port),
                workload,
                service: Some(service.clone()),
            });
        }
        self.workloads_by_ip.get(&dst.ip()).map(|w| Upstream {
            workload: w.clone(),
            addr: dst,
            service: None,
        })
    }

    /// The service whose address `dst` is.
    pub fn service_at(&self, dst: SocketAddr) -> Option<&Arc<Service>> {
        self.services_by_addr
            .get(&dst)
            .map(|(service, _, _)| service)
    }

    /// Whether `dst` is a service VIP (with or without endpoints).
    pub fn is_service(&self, dst: SocketAddr) -> bool {
        self.services_by_addr.contains_key(&dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Protocol;
    use crate::mesh::fixture::{GOOD, parse};

    #[test]
    fn resolves_vips_and_pods() {
        let state = MeshIndex::new(parse(GOOD).expect("valid"));
        let via_vip = state
            .resolve("10.96.0.10:80".parse().expect("addr"), |_| 1)
            .expect("service");
        assert_eq!(via_vip.workload.name, "web-2");
        assert_eq!(via_vip.addr, "10.0.2.3:8080".parse().expect("addr"));
        assert_eq!(
            state.identity(&via_vip.workload).to_string(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        let direct = state
            .resolve("10.0.2.9:5432".parse().expect("addr"), |_| 0)
            .expect("pod");
        assert_eq!(direct.workload.protocol, Protocol::Tcp);
        assert!(
            state
                .resolve("192.0.2.1:443".parse().expect("addr"), |_| 0)
                .is_none()
        );
        assert_eq!(state.workloads_on("n2").count(), 3);
    }
}
