//! The waypoint's config snapshot: its services with compiled routes and live backends,
//! swapped whole on every update; backends and retry budgets persist across updates.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use weft_core::mesh::{MeshConfig, MeshIndex, Protocol, ServicePort, Workload};
use weft_core::mesh::{RetryBudget, ServicePolicy, VirtualHost};

use crate::backend::{Backend, Backends, Limits, Reach};
use crate::outside::Outside;
use crate::request::retry::Budget;
use crate::request::route::CompiledRoute;

/// One service as the waypoint serves it.
pub(crate) struct BoundService {
    pub(crate) policy: ServicePolicy,
    pub(crate) routes: Vec<CompiledRoute>,
    /// Backends by index, with their port maps.
    pub(crate) backends: Vec<(Arc<Backend>, Vec<ServicePort>)>,
    /// One budget per route.
    pub(crate) budgets: Vec<Arc<Budget>>,
}

impl BoundService {
    /// The service port a request to `dst` is for.
    pub(crate) fn service_port(&self, dst: SocketAddr) -> u16 {
        if dst.ip() == self.policy.vip {
            return dst.port();
        }
        self.policy
            .ports
            .iter()
            .find(|p| p.target_port == dst.port())
            .map_or(dst.port(), |p| p.port)
    }
}

/// An ingress listener's virtual hosts, in the order they are tried.
type HostTable = Vec<(VirtualHost, Arc<BoundService>)>;

/// What the waypoint acts on now.
#[derive(Default)]
pub(crate) struct Snapshot {
    pub(crate) mesh: MeshIndex,
    /// This waypoint's config as received (for `/config_dump`).
    pub(crate) config: weft_core::mesh::WaypointConfig,
    services: Vec<Arc<BoundService>>,
    /// As an ingress gateway: by listener port, the virtual hosts in order.
    listeners: Vec<(u16, HostTable)>,
}

/// Runtime kept across snapshots.
#[derive(Default)]
pub(crate) struct Retained {
    pub(crate) backends: Backends,
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
    /// Where mounted credentials are (TLS originated outside the mesh reads CAs there).
    credential_dir: std::path::PathBuf,
}

impl Retained {
    /// Nothing retained yet; credentials under `credential_dir`.
    pub(crate) fn new(credential_dir: std::path::PathBuf) -> Self {
        Self {
            credential_dir,
            ..Self::default()
        }
    }
}

impl Snapshot {
    /// Builds the snapshot for waypoint `namespace/name` from a validated mesh config.
    pub(crate) fn build(
        mesh: MeshConfig,
        namespace: &str,
        name: &str,
        retained: &Retained,
    ) -> Result<Self, String> {
        let config = mesh
            .waypoints
            .iter()
            .find(|w| w.name == name && w.namespace == namespace)
            .cloned()
            .unwrap_or_default();
        let state = MeshIndex::new(mesh);
        let services = config
            .services
            .iter()
            .map(|policy| bind(policy.clone(), &state, retained).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            let mut hosts = Vec::new();
            for host in &listener.hosts {
                let bound = bind(host.policy.clone(), &state, retained)?;
                hosts.push((host.clone(), Arc::new(bound)));
            }
            listeners.push((listener.port, hosts));
        }
        Ok(Self {
            mesh: state,
            config,
            services,
            listeners,
        })
    }

    /// As an ingress gateway: the ports it listens on for clients outside the mesh.
    pub(crate) fn listener_ports(&self) -> Vec<u16> {
        self.config
            .listeners
            .iter()
            .filter(|l| !l.mesh_only)
            .map(|l| l.port)
            .collect()
    }

    /// As an ingress gateway: the listener on `port` as configured (its certificates, whether
    /// it redirects to https).
    pub(crate) fn listener(&self, port: u16) -> Option<&weft_core::mesh::Listener> {
        self.config.listeners.iter().find(|l| l.port == port)
    }

    /// As an ingress gateway: what serves `host` (port removed) on listener `port`.
    pub(crate) fn host_for(&self, port: u16, host: &str) -> Option<&Arc<BoundService>> {
        let name = match host.rsplit_once(':') {
            Some((name, p)) if !name.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        self.listeners
            .iter()
            .find(|(p, _)| *p == port)?
            .1
            .iter()
            .find(|(vhost, _)| vhost.serves(name))
            .map(|(_, bound)| bound)
    }

    /// The service a tunnel to `dst` (its VIP, or one of its endpoints) is for.
    pub(crate) fn service_for(&self, dst: SocketAddr) -> Option<&Arc<BoundService>> {
        self.services
            .iter()
            .find(|s| {
                s.policy.vip == dst.ip() && s.policy.ports.iter().any(|p| p.port == dst.port())
            })
            .or_else(|| {
                self.services
                    .iter()
                    .find(|s| s.backends.iter().any(|(b, _)| b.has_endpoint(dst.ip())))
            })
    }
}

/// One service's routes compiled and its backends bound to live endpoints (kept across
/// snapshots by name in `retained`).
fn bind(
    policy: ServicePolicy,
    state: &MeshIndex,
    retained: &Retained,
) -> Result<BoundService, String> {
    let routes = policy
        .routes
        .iter()
        .map(CompiledRoute::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("service {}/{}: {e}", policy.namespace, policy.name))?;
    let backends = policy
        .backends
        .iter()
        .map(|b| {
            let endpoints = match &b.external {
                Some(external) => outside_endpoints(b, external, retained),
                None => b
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        state
                            .config()
                            .workloads
                            .iter()
                            .find(|w| &w.name == e && w.namespace == b.namespace)
                            .and_then(|w| state.workload_by_ip(w.ip).cloned())
                    })
                    .map(|w| {
                        let id = state.identity(&w);
                        (w, Reach::Mesh(id))
                    })
                    .collect(),
            };
            (
                retained.backends.update(
                    &format!("{}/{}:{}", policy.namespace, policy.name, b.name),
                    endpoints,
                    Limits {
                        pool: b.pool.clone(),
                        outlier: b.outlier.clone(),
                    },
                ),
                b.ports.clone(),
            )
        })
        .collect();
    let budgets = policy
        .routes
        .iter()
        .map(|r| {
            let key = format!("{}/{}:{}", policy.namespace, policy.name, r.name);
            let config = r
                .retry
                .as_ref()
                .and_then(|x| x.budget.clone())
                .unwrap_or(RetryBudget::DEFAULT);
            let mut budgets = retained.budgets.lock().unwrap_or_else(|e| e.into_inner());
            let budget = budgets
                .entry(key)
                .or_insert_with(|| Arc::new(Budget::new(config.clone())))
                .clone();
            budget.configure(config);
            budget
        })
        .collect();
    Ok(BoundService {
        policy,
        routes,
        backends,
        budgets,
    })
}

/// A destination outside the mesh as endpoints: one per address to dial, or one standing for
/// the host resolved by DNS (the unspecified address). They share how they are reached.
fn outside_endpoints(
    backend: &weft_core::mesh::Backend,
    external: &weft_core::mesh::ExternalBackend,
    retained: &Retained,
) -> Vec<(Arc<Workload>, Reach)> {
    let reach = Reach::Outside(Arc::new(Outside::new(
        external.clone(),
        &retained.credential_dir,
    )));
    let addresses = if external.addresses.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
    } else {
        external.addresses.clone()
    };
    addresses
        .into_iter()
        .map(|ip| {
            let workload = Workload {
                name: external.host.clone(),
                namespace: backend.namespace.clone(),
                service_account: String::new(),
                ip,
                node: String::new(),
                protocol: Protocol::Tcp,
                netns: None,
                mtls: Default::default(),
                authz: Vec::new(),
                meta: Default::default(),
            };
            (Arc::new(workload), reach.clone())
        })
        .collect()
}
