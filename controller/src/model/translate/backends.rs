//! Backends a waypoint balances over, one per (service, subset): the endpoints, the target
//! ports, and the pool limits and outlier detection of the service's DestinationRule (or its
//! ServiceProfile's circuit breakers).

use std::collections::BTreeMap;

use weft_core::mesh::{
    Backend, ExternalBackend, Outlier, PoolLimits, ServicePort, TlsOrigination, host_matches,
};

use super::common::{host_is, labels_match, ms};
use super::endpoints::Membership;
use super::linkerd::service_profile;
use crate::model::objects::{Objects, Service};
use crate::model::policy::PolicySpec;
use crate::model::policy::istio;

/// Builds backends on demand, one per (service, subset).
pub(crate) struct Backends<'a> {
    objects: &'a Objects,
    members: &'a Membership<'a>,
    pub(crate) list: Vec<Backend>,
    index: BTreeMap<String, usize>,
}

impl<'a> Backends<'a> {
    pub(crate) fn new(objects: &'a Objects, members: &'a Membership<'a>) -> Self {
        Self {
            objects,
            members,
            list: Vec::new(),
            index: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&mut self, svc: &Service, subset: Option<&str>) -> usize {
        let name = match subset {
            Some(subset) => format!("{}.{}/{subset}", svc.name, svc.namespace),
            None => format!("{}.{}", svc.name, svc.namespace),
        };
        if let Some(i) = self.index.get(&name) {
            return *i;
        }
        let rule = destination_rule(self.objects, svc);
        let subset_spec =
            subset.and_then(|s| rule.and_then(|r| r.subsets.iter().find(|x| x.name == s)));
        let labels = subset_spec.map(|s| s.labels.clone()).unwrap_or_default();
        let members = self.members.endpoints(svc);
        let endpoints: Vec<String> = members
            .iter()
            .filter(|p| labels_match(&labels, &p.labels))
            .map(|p| p.name.clone())
            .collect();
        let policy = subset_spec
            .and_then(|s| s.traffic_policy.as_ref())
            .or_else(|| rule.and_then(|r| r.traffic_policy.as_ref()));
        let mut backend = Backend {
            name: name.clone(),
            namespace: svc.namespace.clone(),
            endpoints,
            ports: Membership::ports(svc, &members),
            pool: PoolLimits::default(),
            outlier: None,
            external: None,
        };
        if let Some(policy) = policy {
            apply_traffic_policy(&mut backend, policy);
        }
        if let Some(profile) = service_profile(self.objects, svc) {
            let breakers = profile.circuit_breakers.as_ref().or_else(|| {
                profile
                    .routes
                    .iter()
                    .find_map(|r| r.circuit_breakers.as_ref())
            });
            if let Some(cb) = breakers {
                backend.pool.max_pending = cb.max_pending_requests.or(backend.pool.max_pending);
                if cb.consecutive_errors.is_some() {
                    backend.outlier = Some(Outlier {
                        consecutive_5xx: cb.consecutive_errors,
                        consecutive_gateway: None,
                        interval_ms: ms(cb.interval).unwrap_or(10_000),
                        base_ejection_ms: ms(cb.tripping_timeout).unwrap_or(30_000),
                        max_ejection_percent: 100,
                        min_health_percent: 0,
                    });
                }
            }
        }
        let i = self.list.len();
        self.list.push(backend);
        self.index.insert(name, i);
        i
    }
}

impl Backends<'_> {
    /// The backend for `host` outside the mesh, on `port` (none: the entry's ports), if a
    /// ServiceEntry names the host: its STATIC endpoints or single addresses (else the host is
    /// resolved by DNS when connecting), and TLS originated as the host's DestinationRule says.
    pub(crate) fn external(&mut self, host: &str, port: Option<u16>) -> Option<usize> {
        let name = match port {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        if let Some(i) = self.index.get(&name) {
            return Some(*i);
        }
        let (key, entry) = self.objects.policies.values().find_map(|p| match &p.spec {
            PolicySpec::ServiceEntry(se) if se.hosts.iter().any(|h| host_matches(h, host)) => {
                Some((&p.key, &**se))
            }
            _ => None,
        })?;
        let ports = match port {
            Some(port) => vec![port],
            None => entry.ports.iter().map(|p| p.number).collect(),
        };
        let rule = self.objects.policies.values().find_map(|p| match &p.spec {
            PolicySpec::DestinationRule(dr) if host_matches(&dr.host, host) => Some(&**dr),
            _ => None,
        });
        let policy = rule.and_then(|r| r.traffic_policy.as_ref());
        let tls = policy
            .and_then(|p| p.tls_for(port))
            .filter(|t| t.originates())
            .map(|t| TlsOrigination {
                sni: t.sni.clone().unwrap_or_else(|| host.to_owned()),
                ca_file: t.ca_certificates.clone(),
                credential: t.credential_name.clone(),
                subject_alt_names: t.subject_alt_names.clone(),
            });
        let mut backend = Backend {
            name: name.clone(),
            namespace: key.namespace.clone(),
            endpoints: Vec::new(),
            ports: ports
                .into_iter()
                .map(|port| ServicePort {
                    port,
                    target_port: port,
                })
                .collect(),
            pool: PoolLimits::default(),
            outlier: None,
            external: Some(ExternalBackend {
                host: host.to_owned(),
                addresses: entry.addresses_to_dial(),
                tls,
            }),
        };
        if let Some(policy) = policy {
            apply_traffic_policy(&mut backend, policy);
        }
        let i = self.list.len();
        self.list.push(backend);
        self.index.insert(name, i);
        Some(i)
    }
}

fn apply_traffic_policy(backend: &mut Backend, policy: &istio::TrafficPolicy) {
    if let Some(pool) = &policy.connection_pool {
        if let Some(tcp) = &pool.tcp {
            backend.pool.max_connections = tcp.max_connections;
            backend.pool.connect_timeout_ms = ms(tcp.connect_timeout);
        }
        if let Some(http) = &pool.http {
            backend.pool.max_pending = http.http1_max_pending_requests;
            backend.pool.max_requests = http.http2_max_requests;
            backend.pool.max_requests_per_connection = http.max_requests_per_connection;
        }
    }
    if let Some(o) = &policy.outlier_detection {
        // Istio's defaults: 5 consecutive 5xx, 10 s interval, 30 s base ejection, 10%.
        let consecutive_5xx = o.consecutive_5xx_errors.or(o.consecutive_errors);
        let consecutive_gateway = o
            .consecutive_gateway_errors
            .or(o.consecutive_local_origin_failures);
        backend.outlier = Some(Outlier {
            consecutive_5xx: if consecutive_5xx.is_none() && consecutive_gateway.is_none() {
                Some(5)
            } else {
                consecutive_5xx.filter(|n| *n > 0)
            },
            consecutive_gateway: consecutive_gateway.filter(|n| *n > 0),
            interval_ms: ms(o.interval).unwrap_or(10_000),
            base_ejection_ms: ms(o.base_ejection_time).unwrap_or(30_000),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10),
            min_health_percent: o.min_health_percent.unwrap_or(0),
        });
    }
}

pub(crate) fn destination_rule<'a>(
    objects: &'a Objects,
    svc: &Service,
) -> Option<&'a istio::DestinationRuleSpec> {
    objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::DestinationRule(dr) if host_is(&dr.host, &p.key.namespace, svc) => Some(&**dr),
        _ => None,
    })
}
