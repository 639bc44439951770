//! Where enrolled pods may connect outside the mesh: the outbound traffic policy, mesh-wide
//! from the (first) IstioOperator's `meshConfig.outboundTrafficPolicy.mode`, per namespace from
//! the namespace label `weft.io/outbound-traffic-policy` (`REGISTRY_ONLY` or `ALLOW_ANY`); and
//! the external services the ServiceEntries describe.

use weft_core::mesh::{Cidr, External, Outbound};

use crate::model::objects::Objects;
use crate::model::policy::PolicySpec;

/// Namespace label setting its pods' outbound traffic policy.
pub const OUTBOUND_POLICY: &str = "weft.io/outbound-traffic-policy";

/// The outbound policy and external services for `objects`.
pub fn outbound(objects: &Objects) -> Outbound {
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
    let external = objects
        .policies
        .values()
        .filter_map(|p| match &p.spec {
            PolicySpec::ServiceEntry(se) => Some(External {
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
    Outbound {
        registry_only,
        namespaces,
        external,
    }
}
