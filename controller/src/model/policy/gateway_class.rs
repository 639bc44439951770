//! Gateway API `Gateway`: a waypoint (class `weft-waypoint`, HBONE on 15008) or an ingress
//! gateway (class `weft`: HTTP and HTTPS listeners, the HTTPRoutes attached to them).

use serde::Deserialize;

use super::common::{Notes, Unhonoured};

/// The class of Gateways that are Weft ingress gateways.
pub const INGRESS_CLASS: &str = "weft";

/// `Gateway.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Class; `weft-waypoint` makes it a Weft waypoint, `weft` an ingress gateway.
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Not honoured.
    #[serde(default)]
    pub addresses: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub infrastructure: Unhonoured,
}

impl GatewaySpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        if self.gateway_class_name == INGRESS_CLASS {
            return self.ingress_notes(notes);
        }
        notes.unhonoured(
            "spec.addresses",
            &self.addresses,
            "a waypoint's address is its pod's",
        );
        notes.unhonoured(
            "spec.infrastructure",
            &self.infrastructure,
            "the waypoint Deployment is Weft's",
        );
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("spec.listeners[{i}].{f}");
            if l.hostname.is_some() {
                notes.note(
                    &at("hostname"),
                    "not honoured: a waypoint serves every host",
                );
            }
            if l.allowed_routes.is_some() {
                notes.note(
                    &at("allowedRoutes"),
                    "not honoured: a waypoint takes the routes of the services bound to it",
                );
            }
            if l.tls.is_some() {
                notes.note(
                    &at("tls"),
                    "not honoured: a waypoint speaks HBONE (mTLS) only",
                );
            }
            if (l.port, l.protocol.as_str()) != (15008, "HBONE") {
                notes.note(
                    &format!("spec.listeners[{i}]"),
                    format!(
                        "{} on port {} not honoured: a waypoint listens for HBONE on 15008 only",
                        l.protocol, l.port
                    ),
                );
            }
        }
    }
}

impl GatewaySpec {
    fn ingress_notes(&self, notes: &mut Notes) {
        notes.unhonoured(
            "spec.addresses",
            &self.addresses,
            "the gateway's address is its pod's (or its Service's)",
        );
        notes.unhonoured(
            "spec.infrastructure",
            &self.infrastructure,
            "Weft does not create the gateway's Deployment: run pods labelled gateway.networking.k8s.io/gateway-name",
        );
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("spec.listeners[{i}].{f}");
            if l.credential().is_none() && l.protocol != "HTTP" {
                notes.note(
                    &format!("spec.listeners[{i}]"),
                    format!(
                        "{} on port {} not served: HTTP, and HTTPS terminated with a Secret in certificateRefs, are",
                        l.protocol, l.port
                    ),
                );
            }
            if let Some(tls) = &l.tls {
                notes.unhonoured(&at("tls.options"), &tls.options, "rustls' defaults");
                notes.unhonoured(
                    &at("tls.frontendValidation"),
                    &tls.frontend_validation,
                    "clients' certificates are not asked for",
                );
                if tls.certificate_refs.len() > 1 {
                    notes.note(&at("tls.certificateRefs"), "only the first is used");
                }
                for (j, r) in tls.certificate_refs.iter().enumerate() {
                    if r.namespace.is_some() {
                        notes.note(
                            &at(&format!("tls.certificateRefs[{j}].namespace")),
                            "not honoured: the gateway reads Secrets mounted in its own pod",
                        );
                    }
                }
            }
            if let Some(allowed) = &l.allowed_routes {
                notes.unhonoured(
                    &at("allowedRoutes.kinds"),
                    &allowed.kinds,
                    "HTTPRoutes attach",
                );
                if let Some(ns) = &allowed.namespaces {
                    notes.unhonoured(
                        &at("allowedRoutes.namespaces.selector"),
                        &ns.selector,
                        "read as from: Same",
                    );
                }
            }
        }
    }
}

/// A listener.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    /// Protocol (`HBONE` for waypoints; `HTTP` or `HTTPS` at an ingress gateway).
    pub protocol: String,
    /// The host it serves (`*.example.com` or a name; none: every host).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Which routes may attach.
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
    /// TLS termination.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// For an HTTPS listener terminating TLS: its certificate's Secret name.
    pub fn credential(&self) -> Option<&str> {
        let tls = self.tls.as_ref()?;
        let terminate = tls.mode.as_deref().is_none_or(|m| m == "Terminate");
        let secret = tls.certificate_refs.first().filter(|r| {
            r.kind.as_deref().is_none_or(|k| k == "Secret")
                && r.group.as_deref().is_none_or(str::is_empty)
        })?;
        (self.protocol == "HTTPS" && terminate).then_some(secret.name.as_str())
    }

    /// Whether an ingress gateway serves it.
    pub fn served(&self) -> bool {
        self.protocol == "HTTP" || self.credential().is_some()
    }

    /// Whether routes in `namespace` may attach to it, on a Gateway in `gateway_ns`.
    pub fn admits_routes_from(&self, namespace: &str, gateway_ns: &str) -> bool {
        let from = self
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_deref());
        from == Some("All") || namespace == gateway_ns
    }
}

/// `allowedRoutes`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Not honoured.
    #[serde(default)]
    pub kinds: Unhonoured,
}

/// `allowedRoutes.namespaces`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same` (the default) or `All`; `Selector` is read as `Same`.
    #[serde(default)]
    pub from: Option<String>,
    /// Not honoured.
    #[serde(default)]
    pub selector: Unhonoured,
}

/// A listener's `tls`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// `Terminate` (the default) is served; `Passthrough` is not.
    #[serde(default)]
    pub mode: Option<String>,
    /// The Secret with the certificate and key (the first).
    #[serde(default)]
    pub certificate_refs: Vec<SecretRef>,
    /// Not honoured.
    #[serde(default)]
    pub options: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub frontend_validation: Unhonoured,
}

/// A certificate reference.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// `""` (core).
    #[serde(default)]
    pub group: Option<String>,
    /// `Secret`.
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    /// Not honoured (the gateway's own namespace).
    #[serde(default)]
    pub namespace: Option<String>,
}
