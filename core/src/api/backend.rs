//! A waypoint's backend in its wire form and back: endpoints, pool limits, outlier detection,
//! and a destination outside the mesh with the TLS originated to it.

use super::field::{Result, ip, ports_from, ports_to};
use super::v1;
use crate::mesh::{Backend, ExternalBackend, Outlier, PoolLimits, TlsOrigination};

pub(super) fn backend_to(b: &Backend) -> v1::Backend {
    v1::Backend {
        name: b.name.clone(),
        namespace: b.namespace.clone(),
        endpoints: b.endpoints.clone(),
        ports: ports_to(&b.ports),
        pool: Some(v1::PoolLimits {
            max_connections: b.pool.max_connections,
            max_pending: b.pool.max_pending,
            max_requests: b.pool.max_requests,
            max_requests_per_connection: b.pool.max_requests_per_connection,
            connect_timeout_ms: b.pool.connect_timeout_ms,
        }),
        outlier: b.outlier.as_ref().map(|o| v1::Outlier {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway: o.consecutive_gateway,
            interval_ms: o.interval_ms,
            base_ejection_ms: o.base_ejection_ms,
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }),
        external: b.external.as_ref().map(|e| v1::ExternalBackend {
            host: e.host.clone(),
            addresses: e.addresses.iter().map(ToString::to_string).collect(),
            tls: e.tls.as_ref().map(|t| v1::TlsOrigination {
                sni: t.sni.clone(),
                ca_file: t.ca_file.clone(),
                credential: t.credential.clone(),
                subject_alt_names: t.subject_alt_names.clone(),
            }),
        }),
    }
}

pub(super) fn backend_from(b: &v1::Backend) -> Result<Backend> {
    let pool = b.pool.unwrap_or_default();
    Ok(Backend {
        name: b.name.clone(),
        namespace: b.namespace.clone(),
        endpoints: b.endpoints.clone(),
        ports: ports_from(&b.ports)?,
        pool: PoolLimits {
            max_connections: pool.max_connections,
            max_pending: pool.max_pending,
            max_requests: pool.max_requests,
            max_requests_per_connection: pool.max_requests_per_connection,
            connect_timeout_ms: pool.connect_timeout_ms,
        },
        outlier: b.outlier.as_ref().map(|o| Outlier {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway: o.consecutive_gateway,
            interval_ms: o.interval_ms,
            base_ejection_ms: o.base_ejection_ms,
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }),
        external: b
            .external
            .as_ref()
            .map(|e| {
                Ok(ExternalBackend {
                    host: e.host.clone(),
                    addresses: e
                        .addresses
                        .iter()
                        .map(|a| ip("external.addresses", a))
                        .collect::<Result<_>>()?,
                    tls: e.tls.as_ref().map(|t| TlsOrigination {
                        sni: t.sni.clone(),
                        ca_file: t.ca_file.clone(),
                        credential: t.credential.clone(),
                        subject_alt_names: t.subject_alt_names.clone(),
                    }),
                })
            })
            .transpose()?,
    })
}
