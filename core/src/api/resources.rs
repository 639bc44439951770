//! The mesh config as versioned resources, what a client lacks of them, and the mesh config a
//! set of resources describes.

use std::collections::BTreeMap;

use super::authz::authz_from;
use super::field::{FieldError, ports_from, ports_to};
use super::l7::waypoint_from;
use super::v1;
use crate::mesh::{External, MeshConfig, Protocol, Service, Workload};

/// Metadata key carrying a node's credential (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// Name of the mesh-wide settings resource.
pub const MESH_RESOURCE: &str = "mesh";

/// Prefix of the waypoint configs' resource names (`waypoint/<ns>/<name>`): each is for that
/// waypoint only.
pub const WAYPOINT_PREFIX: &str = "waypoint/";

/// Resources by name: what a controller serves, or what a proxy holds.
pub type Resources = BTreeMap<String, v1::Resource>;

/// The resources describing `mesh` and its trust bundle, each with a content version.
pub fn resources(mesh: &MeshConfig, trust_bundle_pem: &str) -> Resources {
    use prost::Message as _;
    let mut out = Resources::new();
    let mut add = |name: String, kind: v1::resource::Kind| {
        let mut resource = v1::Resource {
            name: name.clone(),
            version: String::new(),
            kind: Some(kind),
        };
        resource.version = format!("{:016x}", fnv1a(&resource.encode_to_vec()));
        out.insert(name, resource);
    };
    add(
        MESH_RESOURCE.to_owned(),
        v1::resource::Kind::Mesh(v1::MeshSettings {
            trust_domain: mesh.trust_domain.clone(),
            trust_bundle_pem: trust_bundle_pem.to_owned(),
            registry_only: mesh.outbound.registry_only,
            dns_proxy: mesh.outbound.dns_proxy,
            namespace_registry_only: mesh
                .outbound
                .namespaces
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }),
    );
    for e in &mesh.outbound.external {
        add(
            format!("external/{}/{}", e.namespace, e.name),
            v1::resource::Kind::External(v1::External {
                name: e.name.clone(),
                namespace: e.namespace.clone(),
                hosts: e.hosts.clone(),
                addresses: e.addresses.iter().map(ToString::to_string).collect(),
                ports: e.ports.iter().map(|p| u32::from(*p)).collect(),
                allocated: e
                    .allocated
                    .iter()
                    .map(|a| v1::HostAddress {
                        host: a.host.clone(),
                        ip: a.ip.to_string(),
                    })
                    .collect(),
                via: e
                    .via
                    .iter()
                    .map(|v| v1::EgressVia {
                        port: v.port.map(u32::from),
                        gateway: Some(waypoint_ref_to(&v.gateway)),
                        gateway_port: u32::from(v.gateway_port),
                    })
                    .collect(),
            }),
        );
    }
    for w in &mesh.workloads {
        add(
            format!("workload/{}/{}", w.namespace, w.name),
            v1::resource::Kind::Workload(v1::Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                ip: w.ip.to_string(),
                node: w.node.clone(),
                protocol: match w.protocol {
                    Protocol::Hbone => v1::Protocol::Hbone,
                    Protocol::Tcp => v1::Protocol::Tcp,
                } as i32,
                permissive: w.mtls.permissive,
                mtls_except_ports: w.mtls.except_ports.iter().map(|p| u32::from(*p)).collect(),
                authz: w.authz.iter().map(v1::AuthzPolicy::from).collect(),
                workload_name: w.meta.workload.clone(),
                app: w.meta.app.clone(),
                version: w.meta.version.clone(),
                canonical_service: w.meta.canonical_service.clone(),
                canonical_revision: w.meta.canonical_revision.clone(),
            }),
        );
    }
    for s in &mesh.services {
        add(
            format!("service/{}/{}", s.namespace, s.name),
            v1::resource::Kind::Service(v1::Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                vip: s.vip.to_string(),
                ports: ports_to(&s.ports),
                endpoints: s.endpoints.clone(),
                waypoint: s.waypoint.as_ref().map(waypoint_ref_to),
            }),
        );
    }
    for w in &mesh.waypoints {
        add(
            format!("{WAYPOINT_PREFIX}{}/{}", w.namespace, w.name),
            v1::resource::Kind::Waypoint(v1::WaypointConfig::from(w)),
        );
    }
    out
}

/// What differs between what a client holds (`held`: name → version) and `current`: resources
/// to send (new or changed) and names to remove.
pub fn diff(
    held: &BTreeMap<String, String>,
    current: &Resources,
) -> (Vec<v1::Resource>, Vec<String>) {
    let changed = current
        .values()
        .filter(|r| held.get(&r.name) != Some(&r.version))
        .cloned()
        .collect();
    let removed = held
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    (changed, removed)
}

/// Why a set of resources cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A field does not parse.
    #[error("resource {name}: {field}: {message}")]
    Field {
        /// Resource name.
        name: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No mesh settings were sent.
    #[error("no \"mesh\" resource (trust domain and bundle)")]
    NoMesh,
    /// The result is inconsistent.
    #[error(transparent)]
    Config(#[from] crate::mesh::ConfigError),
}

/// The mesh config and trust bundle (PEM) a set of resources describes, validated as a config
/// file would be.
pub fn to_mesh(resources: &Resources) -> Result<(MeshConfig, String), ResourceError> {
    let mut mesh = MeshConfig::default();
    let mut bundle = None;
    for r in resources.values() {
        let field = |field: &str, message: String| ResourceError::Field {
            name: r.name.clone(),
            field: field.to_owned(),
            message,
        };
        let nested = |e: FieldError| ResourceError::Field {
            name: r.name.clone(),
            field: e.field,
            message: e.message,
        };
        match &r.kind {
            Some(v1::resource::Kind::Mesh(m)) => {
                mesh.trust_domain = m.trust_domain.clone();
                bundle = Some(m.trust_bundle_pem.clone());
                mesh.outbound.registry_only = m.registry_only;
                mesh.outbound.dns_proxy = m.dns_proxy;
                mesh.outbound.namespaces = m
                    .namespace_registry_only
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
            }
            Some(v1::resource::Kind::External(e)) => mesh.outbound.external.push(External {
                name: e.name.clone(),
                namespace: e.namespace.clone(),
                hosts: e.hosts.clone(),
                addresses: e
                    .addresses
                    .iter()
                    .map(|a| a.parse().map_err(|m| field("addresses", m)))
                    .collect::<Result<_, _>>()?,
                ports: e
                    .ports
                    .iter()
                    .map(|p| {
                        u16::try_from(*p).map_err(|_| field("ports", format!("{p} is not a port")))
                    })
                    .collect::<Result<_, _>>()?,
                allocated: e
                    .allocated
                    .iter()
                    .map(|a| {
                        Ok(crate::mesh::HostAddress {
                            host: a.host.clone(),
                            ip: a
                                .ip
                                .parse()
                                .map_err(|err| field("allocated", format!("{:?}: {err}", a.ip)))?,
                        })
                    })
                    .collect::<Result<_, ResourceError>>()?,
                via: e
                    .via
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let at = |f: &str| format!("via[{i}].{f}");
                        let port = |p: u32, f: &str| {
                            u16::try_from(p)
                                .map_err(|_| field(&at(f), format!("{p} is not a port")))
                        };
                        Ok(crate::mesh::EgressVia {
                            port: v.port.map(|p| port(p, "port")).transpose()?,
                            gateway: waypoint_ref_from(
                                v.gateway
                                    .as_ref()
                                    .ok_or_else(|| field(&at("gateway"), "missing".into()))?,
                                &at("gateway"),
                            )
                            .map_err(nested)?,
                            gateway_port: port(v.gateway_port, "gatewayPort")?,
                        })
                    })
                    .collect::<Result<_, ResourceError>>()?,
            }),
            Some(v1::resource::Kind::Workload(w)) => mesh.workloads.push(Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                ip: w
                    .ip
                    .parse()
                    .map_err(|e| field("ip", format!("{:?}: {e}", w.ip)))?,
                node: w.node.clone(),
                protocol: match v1::Protocol::try_from(w.protocol) {
                    Ok(v1::Protocol::Hbone) => Protocol::Hbone,
                    Ok(v1::Protocol::Tcp) => Protocol::Tcp,
                    Err(_) => {
                        return Err(field("protocol", format!("unknown value {}", w.protocol)));
                    }
                },
                netns: None,
                mtls: crate::mesh::MtlsPolicy {
                    permissive: w.permissive,
                    except_ports: w
                        .mtls_except_ports
                        .iter()
                        .map(|p| {
                            u16::try_from(*p)
                                .map_err(|_| field("mtlsExceptPorts", format!("{p} is not a port")))
                        })
                        .collect::<Result<_, _>>()?,
                },
                authz: w
                    .authz
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        authz_from(p).map_err(|e| {
                            nested(FieldError {
                                field: format!("authz[{i}].{}", e.field),
                                message: e.message,
                            })
                        })
                    })
                    .collect::<Result<_, _>>()?,
                meta: crate::mesh::WorkloadMeta {
                    workload: w.workload_name.clone(),
                    app: w.app.clone(),
                    version: w.version.clone(),
                    canonical_service: w.canonical_service.clone(),
                    canonical_revision: w.canonical_revision.clone(),
                },
            }),
            Some(v1::resource::Kind::Service(s)) => {
                let ports = ports_from(&s.ports).map_err(nested)?;
                mesh.services.push(Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    vip: s
                        .vip
                        .parse()
                        .map_err(|e| field("vip", format!("{:?}: {e}", s.vip)))?,
                    ports,
                    endpoints: s.endpoints.clone(),
                    waypoint: s
                        .waypoint
                        .as_ref()
                        .map(|w| waypoint_ref_from(w, "waypoint"))
                        .transpose()
                        .map_err(nested)?,
                });
            }
            Some(v1::resource::Kind::Waypoint(w)) => {
                mesh.waypoints.push(waypoint_from(w).map_err(nested)?);
            }
            None => return Err(field("kind", "empty resource".into())),
        }
    }
    let bundle = bundle.ok_or(ResourceError::NoMesh)?;
    mesh.validate(std::path::Path::new("(config stream)"))?;
    Ok((mesh, bundle))
}

/// FNV-1a, 64 bits: a content version that needs no extra dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn waypoint_ref_to(w: &crate::mesh::WaypointRef) -> v1::WaypointRef {
    v1::WaypointRef {
        name: w.name.clone(),
        ip: w.ip.to_string(),
        identity: w.identity.to_string(),
    }
}

fn waypoint_ref_from(
    w: &v1::WaypointRef,
    at: &str,
) -> super::field::Result<crate::mesh::WaypointRef> {
    Ok(crate::mesh::WaypointRef {
        name: w.name.clone(),
        ip: super::field::ip(&format!("{at}.ip"), &w.ip)?,
        identity: w
            .identity
            .parse()
            .map_err(|e| FieldError::new(format!("{at}.identity"), format!("{e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> MeshConfig {
        serde_yaml::from_str(
            "workloads:\n  - {name: a, namespace: shop, serviceAccount: a, ip: 10.0.0.1, node: n1}\n  - {name: b, namespace: shop, serviceAccount: b, ip: 10.0.0.2, node: n2, protocol: TCP}\nservices:\n  - {name: s, namespace: shop, vip: 10.96.0.1, ports: [{port: 80, targetPort: 8080}], endpoints: [a]}\n",
        )
        .expect("yaml")
    }

    #[test]
    fn round_trips_and_diffs() {
        let r = resources(&mesh(), "PEM");
        let (back, bundle) = to_mesh(&r).expect("valid");
        assert_eq!(back.workloads.len(), 2);
        assert_eq!(bundle, "PEM");

        let held: BTreeMap<String, String> = r
            .values()
            .map(|x| (x.name.clone(), x.version.clone()))
            .collect();
        assert_eq!(
            diff(&held, &r),
            (vec![], vec![]),
            "nothing to send when up to date"
        );

        let mut changed = mesh();
        changed.workloads[1].protocol = Protocol::Hbone;
        changed.services.clear();
        let (send, removed) = diff(&held, &resources(&changed, "PEM"));
        assert_eq!(
            send.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["workload/shop/b"]
        );
        assert_eq!(removed, ["service/shop/s"]);
    }

    #[test]
    fn inconsistent_resources_are_refused_with_the_reason() {
        let mut m = mesh();
        m.workloads[1].ip = m.workloads[0].ip;
        let e = to_mesh(&resources(&m, "PEM")).expect_err("duplicate IP");
        assert!(e.to_string().contains("already the IP"), "{e}");
    }

    /// Property: any valid mesh survives the trip through the stream's resources.
    #[test]
    fn any_mesh_round_trips_through_resources() {
        let mut g = crate::testing::Gen::new(5);
        for case in 0..300 {
            let mut text = String::from("workloads:\n");
            let count = 1 + g.below(12);
            for i in 0..count {
                let protocol = if g.below(2) == 0 { "HBONE" } else { "TCP" };
                let permissive = g.below(2) == 0;
                text.push_str(&format!(
                    "  - {{name: w{i}, namespace: ns{}, serviceAccount: sa{}, ip: 10.{}.{}.{}, node: n{}, protocol: {protocol}, mtls: {{permissive: {permissive}, exceptPorts: [{}]}}}}\n",
                    g.below(3),
                    g.below(3),
                    case % 200,
                    i / 250,
                    1 + i % 250,
                    g.below(2),
                    1 + g.below(65535),
                ));
            }
            let mesh: MeshConfig = serde_yaml::from_str(&text).expect("generated");
            let Ok(()) = mesh.validate(std::path::Path::new("generated")) else {
                continue;
            };
            let (back, bundle) = to_mesh(&resources(&mesh, "PEM")).expect("round trip");
            assert_eq!(bundle, "PEM");
            let sorted = |m: &MeshConfig| {
                let mut w: Vec<_> = m.workloads.iter().map(|w| format!("{w:?}")).collect();
                w.sort();
                w
            };
            assert_eq!(sorted(&back), sorted(&mesh), "{text}");
        }
    }
}
