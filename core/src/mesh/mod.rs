//! The mesh as the proxies know it: workloads, services, waypoints and their L7 config,
//! authorization policies (`workload`, `service`, `waypoint`, `authz`), the config that carries
//! them (`config`), and the index a proxy looks them up in per connection (`index`).

mod authz;
mod config;
mod gateway;
mod index;
mod outbound;
mod service;
mod tracing;
mod waypoint;
mod workload;

pub use authz::{
    AuthzAction, AuthzCondition, AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource, glob_matches,
};
pub use config::{ConfigError, MAX_CONFIG_BYTES, MeshConfig, read_config};
pub use gateway::{ListenerCert, host_matches};
pub use index::{MeshIndex, Upstream};
pub use outbound::{Cidr, EgressVia, External, HostAddress, Outbound};
pub use outbound::{ExternalBackend, TlsOrigination};
pub use service::{Service, ServicePort, WaypointRef};
pub use tracing::{COLLECTOR_PROTOCOLS, Tracing};
pub use waypoint::{
    Backend, DirectResponse, Fault, HeaderEdits, Listener, Mirror, NamedMatch, Outlier, PathPart,
    PoolLimits, Redirect, Retry, RetryBudget, RetryOn, Rewrite, Route, RouteMatch, ServicePolicy,
    StrMatch, VirtualHost, WaypointConfig, WeightedBackend,
};
pub use workload::{MtlsPolicy, Protocol, Workload, WorkloadMeta};

/// A small mesh for the tests of this module's files.
#[cfg(test)]
mod fixture {
    use std::path::Path;

    use super::{ConfigError, MeshConfig};

    pub(crate) const GOOD: &str = r#"
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

    pub(crate) fn parse(text: &str) -> Result<MeshConfig, ConfigError> {
        MeshConfig::parse(Path::new("/etc/weft/mesh.yaml"), text)
    }
}
