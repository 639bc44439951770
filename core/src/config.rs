//! The mesh state a proxy acts on (workloads and services), its YAML form, and validation.
//!
//! Until the controller streams it, the state is read from a YAML file. Every error names the
//! file and the field, and a proxy that fails to load a new version keeps the last good one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};

/// How a workload receives mesh traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Enrolled: captured by its node proxy, reached over HBONE.
    #[default]
    Hbone,
    /// Not in the mesh: reached with plain TCP.
    Tcp,
}

/// A pod, as the proxies see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account: the identity is derived from it.
    pub service_account: String,
    /// Pod IP.
    pub ip: IpAddr,
    /// Node the pod runs on.
    pub node: String,
    /// Whether the pod is enrolled (HBONE) or not (TCP).
    #[serde(default)]
    pub protocol: Protocol,
    /// The pod's network namespace, as the node proxy on its node opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Whether plaintext may reach it (PeerAuthentication PERMISSIVE), by default and per port.
    #[serde(default, skip_serializing_if = "MtlsPolicy::is_strict")]
    pub mtls: MtlsPolicy,
    /// Authorization policies its node proxy enforces on connections to it (L4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authz: Vec<crate::l7::AuthzPolicy>,
}

/// Which inbound connections an enrolled workload accepts (PeerAuthentication).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsPolicy {
    /// Plaintext accepted on every port (PERMISSIVE).
    #[serde(default)]
    pub permissive: bool,
    /// Ports where the opposite of `permissive` holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except_ports: Vec<u16>,
}

impl MtlsPolicy {
    /// STRICT everywhere.
    pub fn is_strict(&self) -> bool {
        !self.permissive && self.except_ports.is_empty()
    }

    /// Whether plaintext to `port` is accepted.
    pub fn accepts_plaintext(&self, port: u16) -> bool {
        self.permissive != self.except_ports.contains(&port)
    }
}

/// The waypoint a service's traffic goes through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRef {
    /// `namespace/name` of the waypoint (its Gateway).
    pub name: String,
    /// The waypoint's address (HBONE on 15008).
    pub ip: IpAddr,
    /// The identity it proves (`spiffe://...`).
    pub identity: String,
}

/// A service port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port on the VIP.
    pub port: u16,
    /// Port on the endpoints.
    pub target_port: u16,
}

/// A service: a VIP load-balanced over endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Cluster IP.
    pub vip: IpAddr,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Names of the backing workloads, in the service's namespace.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The waypoint its traffic must pass (`weft.io/use-waypoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointRef>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Trust domain of SPIFFE IDs.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// All workloads of the mesh.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// All services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// What each waypoint applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waypoints: Vec<crate::l7::WaypointConfig>,
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_owned()
}

/// Why a config was refused. The message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML does not match the schema.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the field and the line).
        message: String,
    },
    /// The YAML is well-formed but inconsistent.
    #[error("config {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending field, e.g. `services[1].endpoints[0]`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl MeshConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates YAML; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: MeshConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the config for consistency; `path` (or a description of the source) is only
    /// used in messages.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        let mut by_ip = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            for (field, value) in [
                ("name", &w.name),
                ("namespace", &w.namespace),
                ("serviceAccount", &w.service_account),
                ("node", &w.node),
            ] {
                if value.is_empty() || value.contains('/') {
                    return Err(invalid(
                        format!("workloads[{i}].{field}"),
                        format!("{value:?} must be a non-empty name without '/'"),
                    ));
                }
            }
            if let Some(j) = by_ip.insert(w.ip, i) {
                return Err(invalid(
                    format!("workloads[{i}].ip"),
                    format!("{} is already the IP of workloads[{j}]", w.ip),
                ));
            }
            if let Some(j) = by_name.insert((w.namespace.as_str(), w.name.as_str()), i) {
                return Err(invalid(
                    format!("workloads[{i}].name"),
                    format!("{}/{} is already workloads[{j}]", w.namespace, w.name),
                ));
            }
        }
        let mut vips = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            if s.ports.is_empty() {
                return Err(invalid(
                    format!("services[{i}].ports"),
                    "a service needs at least one port".into(),
                ));
            }
            for (p, port) in s.ports.iter().enumerate() {
                if port.port == 0 || port.target_port == 0 {
                    return Err(invalid(
                        format!("services[{i}].ports[{p}]"),
                        "ports must be 1-65535".into(),
                    ));
                }
                if let Some(j) = vips.insert(SocketAddr::new(s.vip, port.port), i) {
                    return Err(invalid(
                        format!("services[{i}].ports[{p}]"),
                        format!("{}:{} is already served by services[{j}]", s.vip, port.port),
                    ));
                }
            }
            if by_ip.contains_key(&s.vip) {
                return Err(invalid(
                    format!("services[{i}].vip"),
                    format!("{} is a workload IP", s.vip),
                ));
            }
            for (e, name) in s.endpoints.iter().enumerate() {
                if !by_name.contains_key(&(s.namespace.as_str(), name.as_str())) {
                    return Err(invalid(
                        format!("services[{i}].endpoints[{e}]"),
                        format!("no workload {}/{name}", s.namespace),
                    ));
                }
            }
            if let Some(w) = &s.waypoint
                && w.identity.parse::<SpiffeId>().is_err()
            {
                return Err(invalid(
                    format!("services[{i}].waypoint.identity"),
                    format!("{:?} is not a SPIFFE ID", w.identity),
                ));
            }
        }
        for (i, w) in self.waypoints.iter().enumerate() {
            w.validate()
                .map_err(|e| invalid(format!("waypoints[{i}]"), e))?;
            for (s, service) in w.services.iter().enumerate() {
                for (b, backend) in service.backends.iter().enumerate() {
                    for (e, name) in backend.endpoints.iter().enumerate() {
                        if !by_name.contains_key(&(backend.namespace.as_str(), name.as_str())) {
                            return Err(invalid(
                                format!(
                                    "waypoints[{i}].services[{s}].backends[{b}].endpoints[{e}]"
                                ),
                                format!("no workload {}/{name}", backend.namespace),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

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
pub struct State {
    config: MeshConfig,
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    services_by_addr: HashMap<SocketAddr, ServiceEntry>,
    /// Endpoints of waypoint-bound services: their traffic must pass the waypoint.
    waypoint_by_endpoint: HashMap<IpAddr, WaypointRef>,
}

impl State {
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
        }
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

    /// Whether `dst` is a service VIP (with or without endpoints).
    pub fn is_service(&self, dst: SocketAddr) -> bool {
        self.services_by_addr.contains_key(&dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
workloads:
  - {name: client, namespace: shop, serviceAccount: client, ip: 10.0.1.2, node: n1}
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.0.2.2, node: n2}
  - {name: web-2, namespace: shop, serviceAccount: web, ip: 10.0.2.3, node: n2}
  - {name: legacy, namespace: old, serviceAccount: default, ip: 10.0.2.9, node: n2, protocol: TCP}
services:
  - name: web
    namespace: shop
    vip: 10.96.0.10
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [web-1, web-2]
"#;

    fn parse(text: &str) -> Result<MeshConfig, ConfigError> {
        MeshConfig::parse(Path::new("/etc/weft/mesh.yaml"), text)
    }

    #[test]
    fn resolves_vips_and_pods() {
        let state = State::new(parse(GOOD).expect("valid"));
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

    #[test]
    fn errors_name_the_file_and_field() {
        let bad_ip = GOOD.replace("ip: 10.0.2.3", "ip: 10.0.2.300");
        let err = parse(&bad_ip).expect_err("bad ip").to_string();
        assert!(err.contains("/etc/weft/mesh.yaml"), "{err}");
        assert!(err.contains("workloads[2].ip"), "{err}");

        let typo = GOOD.replace("targetPort", "targetport");
        let err = parse(&typo).expect_err("unknown field").to_string();
        assert!(err.contains("targetport"), "{err}");

        let dangling = GOOD.replace("[web-1, web-2]", "[web-1, web-3]");
        let err = parse(&dangling).expect_err("dangling").to_string();
        assert!(err.contains("services[0].endpoints[1]"), "{err}");
        assert!(err.contains("no workload shop/web-3"), "{err}");

        let dup = GOOD.replace("ip: 10.0.2.3", "ip: 10.0.2.2");
        let err = parse(&dup).expect_err("dup").to_string();
        assert!(err.contains("workloads[2].ip"), "{err}");

        assert!(parse("workloads: {").is_err());
    }
}
