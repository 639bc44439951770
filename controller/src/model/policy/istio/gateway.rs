//! `networking.istio.io` Gateway: the ingress gateway's ports. Its `selector` picks the gateway
//! pods (Weft runs them as `weft-waypoint` in the gateway role); each HTTP server becomes a
//! listener, and the VirtualServices naming the Gateway in `gateways` route it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::policy::common::{Notes, Unhonoured};

/// Istio's `Gateway.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioGatewaySpec {
    /// Gateway pods (in any namespace): all these labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Ports and the hosts each admits.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// One server: a port, its protocol and the hosts it admits.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: ServerPort,
    /// `*`, `*.example.com`, a host name, or `namespace/host` (the namespace part is not
    /// honoured).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Not honoured yet: TLS termination.
    #[serde(default)]
    pub tls: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub bind: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub default_endpoint: Unhonoured,
    /// Names the server in logs.
    #[serde(default)]
    pub name: Option<String>,
}

/// A server's port.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    pub number: u16,
    /// `HTTP` is served; `HTTPS`, `HTTP2`, `GRPC`, `TLS`, `TCP` are not yet.
    pub protocol: String,
    /// Names the port in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Not honoured: the gateway listens on `number`.
    #[serde(default)]
    pub target_port: Unhonoured,
}

impl Server {
    /// Whether the gateway serves it.
    pub fn served(&self) -> bool {
        self.port.protocol.eq_ignore_ascii_case("HTTP") && !self.tls.is_set()
    }

    /// Its hosts as host names (`namespace/host` read as `host`).
    pub fn hostnames(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .map(|h| h.split_once('/').map_or(h.as_str(), |(_, host)| host))
    }
}

impl IstioGatewaySpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        if self.selector.is_empty() {
            notes.note(
                "spec.selector",
                "empty: it selects no gateway pods, so nothing serves it",
            );
        }
        for (i, server) in self.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            notes.unhonoured(
                &format!("{at}.tls"),
                &server.tls,
                "TLS termination at the gateway is not built yet: this server is not served",
            );
            notes.unhonoured(
                &format!("{at}.bind"),
                &server.bind,
                "the gateway listens on every address",
            );
            notes.unhonoured(
                &format!("{at}.defaultEndpoint"),
                &server.default_endpoint,
                "requests go to the VirtualServices' destinations",
            );
            notes.unhonoured(
                &format!("{at}.port.targetPort"),
                &server.port.target_port,
                "the gateway listens on port.number",
            );
            if !server.port.protocol.eq_ignore_ascii_case("HTTP") {
                notes.note(
                    &format!("{at}.port.protocol"),
                    format!(
                        "{:?} is not served yet (HTTP is): nothing listens on port {}",
                        server.port.protocol, server.port.number
                    ),
                );
            }
            if server.hosts.iter().any(|h| h.contains('/')) {
                notes.note(
                    &format!("{at}.hosts"),
                    "the namespace part of namespace/host is not honoured: VirtualServices in any namespace bind",
                );
            }
        }
    }
}
