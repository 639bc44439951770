//! `networking.istio.io` ServiceEntry: a destination outside the mesh that the registry holds,
//! so that under the `REGISTRY_ONLY` outbound traffic policy pods may reach it. Its addresses
//! (`addresses`, and the endpoints' under `resolution: STATIC`) and ports are what the source
//! node proxies allow.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::policy::common::{Notes, Unhonoured};

/// `ServiceEntry.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names: the node proxies' DNS proxy answers them (with `addresses`, or addresses
    /// the mesh allocates), and an egress gateway routes by them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Addresses or blocks (`203.0.113.7`, `203.0.113.0/24`).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports (none: every port).
    #[serde(default)]
    pub ports: Vec<EntryPort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`: both are let through alike.
    #[serde(default)]
    pub location: Option<String>,
    /// `NONE`, `STATIC` (the endpoints' addresses too) or `DNS` / `DNS_ROUND_ROBIN`.
    #[serde(default)]
    pub resolution: Option<String>,
    /// Under `STATIC`, the addresses behind the entry.
    #[serde(default)]
    pub endpoints: Vec<EntryEndpoint>,
    /// Not honoured.
    #[serde(default)]
    pub export_to: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub subject_alt_names: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub workload_selector: Unhonoured,
}

/// One port.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryPort {
    pub number: u16,
    /// Names the port in logs.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Names the port in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Not honoured.
    #[serde(default)]
    pub target_port: Unhonoured,
}

/// One endpoint.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryEndpoint {
    pub address: String,
    /// Not honoured.
    #[serde(default)]
    pub ports: Option<BTreeMap<String, u32>>,
    /// Not honoured.
    #[serde(default)]
    pub labels: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub network: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub locality: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub weight: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub service_account: Unhonoured,
}

impl ServiceEntrySpec {
    /// The addresses the entry lets through: `addresses`, and under `STATIC` the endpoints'.
    pub fn admitted(&self) -> Vec<&str> {
        let static_ = self
            .resolution
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case("STATIC"));
        self.addresses
            .iter()
            .map(String::as_str)
            .chain(
                self.endpoints
                    .iter()
                    .filter(|_| static_)
                    .map(|e| e.address.as_str()),
            )
            .collect()
    }

    /// The addresses an egress gateway dials for the entry: under `STATIC` its endpoints',
    /// else its single addresses (`10.1.2.3`, not blocks); none: its host is resolved by DNS.
    pub fn addresses_to_dial(&self) -> Vec<std::net::IpAddr> {
        let static_ = self
            .resolution
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case("STATIC"));
        if static_ && !self.endpoints.is_empty() {
            return self
                .endpoints
                .iter()
                .filter_map(|e| e.address.parse().ok())
                .collect();
        }
        let dns = self
            .resolution
            .as_deref()
            .is_some_and(|r| r.to_ascii_uppercase().starts_with("DNS"));
        if dns {
            return Vec::new();
        }
        self.addresses
            .iter()
            .filter_map(|a| a.parse::<weft_core::mesh::Cidr>().ok())
            .filter(|c| c.prefix == if c.ip.is_ipv4() { 32 } else { 128 })
            .map(|c| c.ip)
            .collect()
    }

    /// Checks the addresses and values, and reports what Weft does not do.
    pub fn read(&self, notes: &mut Notes) -> Result<(), String> {
        for (i, a) in self.addresses.iter().enumerate() {
            a.parse::<weft_core::mesh::Cidr>()
                .map_err(|e| format!("spec.addresses[{i}]: {e}"))?;
        }
        match self
            .resolution
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("NONE") => {}
            Some("STATIC") => {
                for (i, e) in self.endpoints.iter().enumerate() {
                    e.address.parse::<std::net::IpAddr>().map_err(|err| {
                        format!("spec.endpoints[{i}].address: {:?}: {err}", e.address)
                    })?;
                }
            }
            Some("DNS" | "DNS_ROUND_ROBIN") => {}
            Some(other) => {
                return Err(format!(
                    "spec.resolution: {other:?} is not NONE, STATIC, DNS or DNS_ROUND_ROBIN"
                ));
            }
        }
        if let Some(l) = &self.location
            && !matches!(l.as_str(), "MESH_EXTERNAL" | "MESH_INTERNAL")
        {
            return Err(format!(
                "spec.location: {l:?} is not MESH_EXTERNAL or MESH_INTERNAL"
            ));
        }
        if !self.endpoints.is_empty()
            && !self
                .resolution
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case("STATIC"))
        {
            notes.note(
                "spec.endpoints",
                "read only under resolution STATIC: these addresses are not let through",
            );
        }
        notes.unhonoured(
            "spec.exportTo",
            &self.export_to,
            "an entry is visible mesh-wide",
        );
        notes.unhonoured(
            "spec.subjectAltNames",
            &self.subject_alt_names,
            "the egress gateway verifies the names a DestinationRule's tls.subjectAltNames gives",
        );
        notes.unhonoured(
            "spec.workloadSelector",
            &self.workload_selector,
            "entries for mesh workloads are not needed: they are in the registry",
        );
        for (i, p) in self.ports.iter().enumerate() {
            notes.unhonoured(
                &format!("spec.ports[{i}].targetPort"),
                &p.target_port,
                "connections keep their port",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = |f: &str| format!("spec.endpoints[{i}].{f}");
            if e.ports.is_some() {
                notes.note(&at("ports"), "not honoured: connections keep their port");
            }
            notes.unhonoured(&at("labels"), &e.labels, "no subsets for external services");
            notes.unhonoured(&at("network"), &e.network, "one network");
            notes.unhonoured(&at("locality"), &e.locality, "no locality routing");
            notes.unhonoured(
                &at("weight"),
                &e.weight,
                "no balancing of external endpoints",
            );
            notes.unhonoured(
                &at("serviceAccount"),
                &e.service_account,
                "external endpoints have no mesh identity",
            );
        }
        Ok(())
    }
}
