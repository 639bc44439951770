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
    /// TLS: `SIMPLE` termination with `credentialName`, or `httpsRedirect` on an HTTP
    /// server.
    #[serde(default)]
    pub tls: Option<ServerTls>,
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

/// A server's TLS settings.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// `SIMPLE` is served; `PASSTHROUGH`, `MUTUAL`, `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL`,
    /// `OPTIONAL_MUTUAL` are not yet.
    #[serde(default)]
    pub mode: Option<String>,
    /// The certificate and key: at the gateway, `<credential dir>/<name>/tls.crt` and
    /// `tls.key` (a Kubernetes TLS Secret mounted by that name).
    #[serde(default)]
    pub credential_name: Option<String>,
    /// On an HTTP server: answer every request with a redirect to https.
    #[serde(default)]
    pub https_redirect: Option<bool>,
    /// Not honoured (use `credentialName`).
    #[serde(default)]
    pub server_certificate: Unhonoured,
    /// Not honoured (use `credentialName`).
    #[serde(default)]
    pub private_key: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub ca_certificates: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub ca_crl: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub credential_names: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub tls_certificates: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub subject_alt_names: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub verify_certificate_spki: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub verify_certificate_hash: Unhonoured,
    /// Not honoured: TLS 1.2 and 1.3 are offered.
    #[serde(default)]
    pub min_protocol_version: Unhonoured,
    /// Not honoured: TLS 1.2 and 1.3 are offered.
    #[serde(default)]
    pub max_protocol_version: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub cipher_suites: Unhonoured,
}

/// How a server is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Plain HTTP.
    Http,
    /// Plain HTTP answering every request with a redirect to https.
    RedirectToHttps,
    /// TLS with the credential of this name, then HTTP.
    Https { credential: String },
    /// `ISTIO_MUTUAL`: only for mesh clients, whose HBONE tunnels (mutual TLS with their
    /// identities) carry the HTTP; no port is opened to clients outside the mesh.
    MeshOnly,
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
    /// How the gateway serves it, if it does.
    pub fn serving(&self) -> Option<Serving> {
        let protocol = self.port.protocol.to_ascii_uppercase();
        match (protocol.as_str(), &self.tls) {
            ("HTTP" | "HTTPS", Some(tls)) if tls.mode.as_deref() == Some("ISTIO_MUTUAL") => {
                Some(Serving::MeshOnly)
            }
            ("HTTP", None) => Some(Serving::Http),
            ("HTTP", Some(tls)) if tls.https_redirect == Some(true) => {
                Some(Serving::RedirectToHttps)
            }
            ("HTTP", Some(_)) => Some(Serving::Http),
            ("HTTPS", Some(tls))
                if tls.mode.as_deref().is_none_or(|m| m == "SIMPLE")
                    && tls.credential_name.is_some() =>
            {
                Some(Serving::Https {
                    credential: tls.credential_name.clone()?,
                })
            }
            _ => None,
        }
    }

    /// Whether the gateway serves it.
    pub fn served(&self) -> bool {
        self.serving().is_some()
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
            if let Some(tls) = &server.tls {
                tls.notes(&format!("{at}.tls"), notes);
            }
            if server.port.protocol.eq_ignore_ascii_case("HTTPS") && !server.served() {
                notes.note(
                    &format!("{at}.tls"),
                    "an HTTPS server is served with mode SIMPLE and a credentialName, or ISTIO_MUTUAL (mesh clients only): nothing listens on this one",
                );
            }
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
            if !["HTTP", "HTTPS"].contains(&server.port.protocol.to_ascii_uppercase().as_str()) {
                notes.note(
                    &format!("{at}.port.protocol"),
                    format!(
                        "{:?} is not served yet (HTTP and HTTPS are): nothing listens on port {}",
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

impl ServerTls {
    fn notes(&self, at: &str, notes: &mut Notes) {
        if let Some(mode) = &self.mode
            && mode != "SIMPLE"
            && mode != "ISTIO_MUTUAL"
        {
            notes.note(
                &format!("{at}.mode"),
                format!("{mode:?} is not served yet (SIMPLE and ISTIO_MUTUAL are)"),
            );
        }
        if self.mode.as_deref() == Some("ISTIO_MUTUAL") {
            notes.note(
                &format!("{at}.mode"),
                "ISTIO_MUTUAL: served to mesh clients only, in their HBONE tunnels (mutual TLS with their identities); no port is opened outside the mesh",
            );
        }
        let why = "the gateway reads certificates by credentialName";
        notes.unhonoured(
            &format!("{at}.serverCertificate"),
            &self.server_certificate,
            why,
        );
        notes.unhonoured(&format!("{at}.privateKey"), &self.private_key, why);
        notes.unhonoured(
            &format!("{at}.credentialNames"),
            &self.credential_names,
            why,
        );
        notes.unhonoured(
            &format!("{at}.tlsCertificates"),
            &self.tls_certificates,
            why,
        );
        let why = "clients' certificates are not asked for";
        notes.unhonoured(&format!("{at}.caCertificates"), &self.ca_certificates, why);
        notes.unhonoured(&format!("{at}.caCrl"), &self.ca_crl, why);
        notes.unhonoured(
            &format!("{at}.subjectAltNames"),
            &self.subject_alt_names,
            why,
        );
        notes.unhonoured(
            &format!("{at}.verifyCertificateSpki"),
            &self.verify_certificate_spki,
            why,
        );
        notes.unhonoured(
            &format!("{at}.verifyCertificateHash"),
            &self.verify_certificate_hash,
            why,
        );
        let why = "TLS 1.2 and 1.3 with rustls' default suites are offered";
        notes.unhonoured(
            &format!("{at}.minProtocolVersion"),
            &self.min_protocol_version,
            why,
        );
        notes.unhonoured(
            &format!("{at}.maxProtocolVersion"),
            &self.max_protocol_version,
            why,
        );
        notes.unhonoured(&format!("{at}.cipherSuites"), &self.cipher_suites, why);
    }
}
