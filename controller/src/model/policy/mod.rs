//! The policy APIs users already have — Istio, Linkerd, SMI and the Gateway API — read into
//! typed specs. Every field of each API is known: a field the API does not have (a typo) is an
//! error naming it; a field Weft does not act on is accepted and noted, and the notes are shown
//! in the object's status and the controller's log, never dropped silently.

pub mod common;
pub mod gateway;
pub mod gateway_class;
pub mod istio;
pub mod istio_operator;
pub mod linkerd;
pub mod linkerd_config;
pub mod shapes;
pub mod telemetry;
pub mod tracing_config;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::key::ObjectKey;
use common::Notes;

/// The policy kinds Weft reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` Gateway (ingress).
    IstioGateway,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// Linkerd ServiceProfile.
    ServiceProfile,
    /// SMI TrafficSplit.
    TrafficSplit,
    /// Gateway API HTTPRoute.
    HttpRoute,
    /// Gateway API Gateway.
    Gateway,
    /// `telemetry.istio.io` Telemetry (tracing).
    Telemetry,
    /// `install.istio.io` IstioOperator (its tracing).
    IstioOperator,
    /// Linkerd's `linkerd-config` ConfigMap (its tracing).
    LinkerdConfig,
}

/// Where a kind is served from: (group, version, plural).
pub struct ApiGroup {
    pub group: &'static str,
    /// Version watched.
    pub version: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
}

impl PolicyKind {
    /// Every kind.
    pub const ALL: [PolicyKind; 13] = [
        Self::VirtualService,
        Self::DestinationRule,
        Self::IstioGateway,
        Self::ServiceEntry,
        Self::PeerAuthentication,
        Self::AuthorizationPolicy,
        Self::ServiceProfile,
        Self::TrafficSplit,
        Self::HttpRoute,
        Self::Gateway,
        Self::Telemetry,
        Self::IstioOperator,
        Self::LinkerdConfig,
    ];

    /// Whether the kind is a custom resource (every kind but `linkerd-config`, a ConfigMap).
    pub fn is_custom(self) -> bool {
        self != Self::LinkerdConfig
    }

    /// The kind of a manifest, by `kind` (and the API group, where two APIs share a kind).
    /// A ConfigMap is one only by its name: see [`PolicyKind::of_object`].
    pub fn of(kind: &str, api_version: &str) -> Option<Self> {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        Some(match kind {
            "VirtualService" => Self::VirtualService,
            "DestinationRule" => Self::DestinationRule,
            "PeerAuthentication" => Self::PeerAuthentication,
            "AuthorizationPolicy" => Self::AuthorizationPolicy,
            "ServiceProfile" => Self::ServiceProfile,
            "TrafficSplit" => Self::TrafficSplit,
            "HTTPRoute" => Self::HttpRoute,
            "Gateway" if group == "networking.istio.io" => Self::IstioGateway,
            "Gateway" if group == "gateway.networking.k8s.io" => Self::Gateway,
            "Telemetry" => Self::Telemetry,
            "ServiceEntry" => Self::ServiceEntry,
            "IstioOperator" => Self::IstioOperator,
            _ => return None,
        })
    }

    /// The kind of a manifest, by [`PolicyKind::of`] or, for a ConfigMap, its name.
    pub fn of_object(kind: &str, api_version: &str, name: &str) -> Option<Self> {
        match kind {
            "ConfigMap" if api_version == "v1" && name == linkerd_config::LINKERD_CONFIG => {
                Some(Self::LinkerdConfig)
            }
            _ => Self::of(kind, api_version),
        }
    }

    /// The Kubernetes kind.
    pub fn kind(self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::IstioGateway | Self::Gateway => "Gateway",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::ServiceProfile => "ServiceProfile",
            Self::TrafficSplit => "TrafficSplit",
            Self::HttpRoute => "HTTPRoute",
            Self::Telemetry => "Telemetry",
            Self::ServiceEntry => "ServiceEntry",
            Self::IstioOperator => "IstioOperator",
            Self::LinkerdConfig => "ConfigMap",
        }
    }

    /// The API the controller watches this kind through.
    pub fn api(self) -> ApiGroup {
        let (group, version, plural) = match self {
            Self::VirtualService => ("networking.istio.io", "v1", "virtualservices"),
            Self::DestinationRule => ("networking.istio.io", "v1", "destinationrules"),
            Self::IstioGateway => ("networking.istio.io", "v1", "gateways"),
            Self::ServiceEntry => ("networking.istio.io", "v1", "serviceentries"),
            Self::PeerAuthentication => ("security.istio.io", "v1", "peerauthentications"),
            Self::AuthorizationPolicy => ("security.istio.io", "v1", "authorizationpolicies"),
            Self::ServiceProfile => ("linkerd.io", "v1alpha2", "serviceprofiles"),
            Self::TrafficSplit => ("split.smi-spec.io", "v1alpha2", "trafficsplits"),
            Self::HttpRoute => ("gateway.networking.k8s.io", "v1", "httproutes"),
            Self::Gateway => ("gateway.networking.k8s.io", "v1", "gateways"),
            Self::Telemetry => ("telemetry.istio.io", "v1", "telemetries"),
            Self::IstioOperator => ("install.istio.io", "v1alpha1", "istiooperators"),
            Self::LinkerdConfig => ("", "v1", "configmaps"),
        };
        ApiGroup {
            group,
            version,
            plural,
        }
    }

    /// Whether the kind has a status the controller writes conditions to.
    pub fn has_status(self) -> bool {
        !matches!(
            self,
            Self::ServiceProfile | Self::TrafficSplit | Self::LinkerdConfig
        )
    }

    /// The JSON schema (OpenAPI 3 flavour) of this kind's `spec`, generated from the types
    /// Weft reads it into: what its CRD declares and what the field walk checks. Fields Weft
    /// does not act on are marked `x-weft-unhonoured`.
    pub fn spec_schema(self) -> schemars::Schema {
        let generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        match self {
            Self::VirtualService => generator.into_root_schema_for::<istio::VirtualServiceSpec>(),
            Self::DestinationRule => generator.into_root_schema_for::<istio::DestinationRuleSpec>(),
            Self::IstioGateway => generator.into_root_schema_for::<istio::IstioGatewaySpec>(),
            Self::ServiceEntry => generator.into_root_schema_for::<istio::ServiceEntrySpec>(),
            Self::PeerAuthentication => {
                generator.into_root_schema_for::<istio::PeerAuthenticationSpec>()
            }
            Self::AuthorizationPolicy => {
                generator.into_root_schema_for::<istio::AuthorizationPolicySpec>()
            }
            Self::ServiceProfile => generator.into_root_schema_for::<linkerd::ServiceProfileSpec>(),
            Self::TrafficSplit => generator.into_root_schema_for::<linkerd::TrafficSplitSpec>(),
            Self::HttpRoute => generator.into_root_schema_for::<gateway::HttpRouteSpec>(),
            Self::Gateway => generator.into_root_schema_for::<gateway::GatewaySpec>(),
            Self::Telemetry => generator.into_root_schema_for::<telemetry::TelemetrySpec>(),
            Self::IstioOperator => {
                generator.into_root_schema_for::<istio_operator::IstioOperatorSpec>()
            }
            Self::LinkerdConfig => {
                generator.into_root_schema_for::<linkerd_config::LinkerdConfigSpec>()
            }
        }
    }
}

/// A policy's typed spec.
#[derive(Clone, Debug)]
pub enum PolicySpec {
    /// See [`istio::VirtualServiceSpec`].
    VirtualService(Box<istio::VirtualServiceSpec>),
    /// See [`istio::DestinationRuleSpec`].
    DestinationRule(Box<istio::DestinationRuleSpec>),
    /// See [`istio::IstioGatewaySpec`].
    IstioGateway(Box<istio::IstioGatewaySpec>),
    /// See [`istio::ServiceEntrySpec`].
    ServiceEntry(Box<istio::ServiceEntrySpec>),
    /// See [`istio::PeerAuthenticationSpec`].
    PeerAuthentication(Box<istio::PeerAuthenticationSpec>),
    /// See [`istio::AuthorizationPolicySpec`].
    AuthorizationPolicy(Box<istio::AuthorizationPolicySpec>),
    /// See [`linkerd::ServiceProfileSpec`].
    ServiceProfile(Box<linkerd::ServiceProfileSpec>),
    /// See [`linkerd::TrafficSplitSpec`].
    TrafficSplit(Box<linkerd::TrafficSplitSpec>),
    /// See [`gateway::HttpRouteSpec`].
    HttpRoute(Box<gateway::HttpRouteSpec>),
    /// See [`gateway::GatewaySpec`].
    Gateway(Box<gateway::GatewaySpec>),
    /// See [`telemetry::TelemetrySpec`].
    Telemetry(Box<telemetry::TelemetrySpec>),
    /// See [`istio_operator::IstioOperatorSpec`].
    IstioOperator(Box<istio_operator::IstioOperatorSpec>),
    /// See [`linkerd_config::LinkerdConfigSpec`] (a ConfigMap's `data`).
    LinkerdConfig(Box<linkerd_config::LinkerdConfigSpec>),
}

/// A policy object.
#[derive(Clone, Debug)]
pub struct Policy {
    pub kind: PolicyKind,
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation` (status conditions say which generation they judged).
    pub generation: Option<i64>,
    /// `metadata.uid` (owner of what the controller creates for it).
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The typed spec.
    pub spec: PolicySpec,
    /// What it asks for that Weft does not do, each naming the field.
    pub notes: Vec<String>,
    /// Shapes not in the upstream API that Weft reads as meant, each naming the upstream
    /// field ([`shapes`]).
    pub hints: Vec<String>,
    /// The spec as written (objects compare by it).
    raw: serde_yaml::Value,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.key == other.key
            && self.generation == other.generation
            && self.labels == other.labels
            && self.raw == other.raw
    }
}

impl Eq for Policy {}

impl Policy {
    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind.kind(), self.key)
    }
}

#[derive(Deserialize)]
struct Doc<S> {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    metadata: Meta,
    #[serde(default = "missing_spec")]
    spec: serde_yaml::Value,
    /// A ConfigMap's data (read where other kinds have `spec`).
    #[serde(default)]
    data: Option<serde_yaml::Value>,
    #[serde(skip)]
    _spec: std::marker::PhantomData<S>,
}

fn missing_spec() -> serde_yaml::Value {
    serde_yaml::Value::Mapping(serde_yaml::Mapping::new())
}

/// `metadata`, as every object Weft reads carries it (only the fields it uses).
#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct Meta {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) namespace: Option<String>,
    #[serde(default)]
    pub(crate) generation: Option<i64>,
    #[serde(default)]
    pub(crate) uid: Option<String>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    /// Set once the object is being deleted (a pod terminating).
    #[serde(default, rename = "deletionTimestamp")]
    pub(crate) deletion_timestamp: Option<String>,
    /// Who owns the object (a pod's ReplicaSet).
    #[serde(default, rename = "ownerReferences")]
    #[schemars(skip)]
    pub(crate) owner_references: Vec<OwnerReference>,
}

/// One of `metadata.ownerReferences`.
#[derive(Deserialize, Debug, Clone)]
pub(crate) struct OwnerReference {
    pub(crate) kind: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) controller: bool,
}

/// Reads a policy manifest of `kind`. Errors name the field (`spec.http[0].retries.attempts:
/// invalid type ...`).
pub fn parse(kind: PolicyKind, value: &serde_yaml::Value) -> Result<Policy, String> {
    let mut doc: Doc<()> = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })?;
    if kind == PolicyKind::LinkerdConfig {
        doc.spec = doc.data.take().unwrap_or_else(missing_spec);
    }
    let mut notes = Notes::default();
    let spec = match kind {
        PolicyKind::VirtualService => {
            let s: istio::VirtualServiceSpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::VirtualService(Box::new(s))
        }
        PolicyKind::DestinationRule => {
            let s: istio::DestinationRuleSpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::DestinationRule(Box::new(s))
        }
        PolicyKind::IstioGateway => {
            let s: istio::IstioGatewaySpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::IstioGateway(Box::new(s))
        }
        PolicyKind::ServiceEntry => {
            let s: istio::ServiceEntrySpec = spec(&doc.spec)?;
            s.read(&mut notes)?;
            PolicySpec::ServiceEntry(Box::new(s))
        }
        PolicyKind::PeerAuthentication => {
            let s: istio::PeerAuthenticationSpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::PeerAuthentication(Box::new(s))
        }
        PolicyKind::AuthorizationPolicy => {
            let s: istio::AuthorizationPolicySpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::AuthorizationPolicy(Box::new(s))
        }
        PolicyKind::ServiceProfile => {
            let s: linkerd::ServiceProfileSpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::ServiceProfile(Box::new(s))
        }
        PolicyKind::TrafficSplit => {
            let s: linkerd::TrafficSplitSpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::TrafficSplit(Box::new(s))
        }
        PolicyKind::HttpRoute => {
            let s: gateway::HttpRouteSpec = spec(&doc.spec)?;
            s.check()?;
            s.notes(&mut notes);
            PolicySpec::HttpRoute(Box::new(s))
        }
        PolicyKind::Gateway => {
            let s: gateway::GatewaySpec = spec(&doc.spec)?;
            s.notes(&mut notes);
            PolicySpec::Gateway(Box::new(s))
        }
        PolicyKind::Telemetry => {
            let s: telemetry::TelemetrySpec = spec(&doc.spec)?;
            s.read(&mut notes)?;
            PolicySpec::Telemetry(Box::new(s))
        }
        PolicyKind::IstioOperator => {
            let mut s: istio_operator::IstioOperatorSpec = spec(&doc.spec)?;
            s.read(&mut notes)?;
            PolicySpec::IstioOperator(Box::new(s))
        }
        PolicyKind::LinkerdConfig => {
            let mut s: linkerd_config::LinkerdConfigSpec = spec(&doc.spec)?;
            s.read(&mut notes)?;
            PolicySpec::LinkerdConfig(Box::new(s))
        }
    };
    check_regexes(&spec)?;
    Ok(Policy {
        kind,
        key: ObjectKey::new(
            doc.metadata.namespace.as_deref().unwrap_or("default"),
            &doc.metadata.name,
        ),
        generation: doc.metadata.generation,
        uid: doc.metadata.uid,
        labels: doc.metadata.labels,
        spec,
        notes: notes.0,
        hints: shapes::hints(kind.kind(), doc.api_version.as_deref(), &doc.spec),
        raw: doc.spec,
    })
}

/// Every regular expression a policy holds must compile: a bad one refuses the policy here,
/// naming the field, rather than reaching the proxies (which would refuse the whole update).
fn check_regexes(spec: &PolicySpec) -> Result<(), String> {
    let check = |field: String, re: &str| {
        regex::Regex::new(&format!("^(?:{re})$"))
            .map(|_| ())
            .map_err(|e| format!("{field}: {re:?} is not a valid regular expression: {e}"))
    };
    match spec {
        PolicySpec::VirtualService(vs) => {
            for (i, http) in vs.http.iter().enumerate() {
                for (j, m) in http.matches.iter().enumerate() {
                    let at = |f: &str| format!("spec.http[{i}].match[{j}].{f}");
                    let singles = [
                        ("uri", &m.uri),
                        ("method", &m.method),
                        ("authority", &m.authority),
                    ];
                    for (name, value) in singles {
                        if let Some(re) = value.as_ref().and_then(|v| v.regex.as_deref()) {
                            check(at(&format!("{name}.regex")), re)?;
                        }
                    }
                    for (kind, map) in [
                        ("headers", &m.headers),
                        ("queryParams", &m.query_params),
                        ("withoutHeaders", &m.without_headers),
                    ] {
                        for (name, value) in map {
                            if let Some(re) = value.regex.as_deref() {
                                check(at(&format!("{kind}.{name}.regex")), re)?;
                            }
                        }
                    }
                }
            }
        }
        PolicySpec::HttpRoute(route) => {
            for (i, rule) in route.rules.iter().enumerate() {
                for (j, m) in rule.matches.iter().enumerate() {
                    let at = |f: String| format!("spec.rules[{i}].matches[{j}].{f}");
                    if let Some(p) = &m.path
                        && p.kind.as_deref() == Some("RegularExpression")
                    {
                        check(at("path.value".into()), p.value.as_deref().unwrap_or(""))?;
                    }
                    for (k, h) in m.headers.iter().enumerate() {
                        if h.kind.as_deref() == Some("RegularExpression") {
                            check(at(format!("headers[{k}].value")), &h.value)?;
                        }
                    }
                    for (k, q) in m.query_params.iter().enumerate() {
                        if q.kind.as_deref() == Some("RegularExpression") {
                            check(at(format!("queryParams[{k}].value")), &q.value)?;
                        }
                    }
                }
            }
        }
        PolicySpec::ServiceProfile(profile) => {
            fn walk(
                c: &linkerd::RequestMatch,
                at: &str,
                check: &dyn Fn(String, &str) -> Result<(), String>,
            ) -> Result<(), String> {
                if let Some(re) = &c.path_regex {
                    check(format!("{at}.pathRegex"), re)?;
                }
                for (k, sub) in c.all.iter().enumerate() {
                    walk(sub, &format!("{at}.all[{k}]"), check)?;
                }
                for (k, sub) in c.any.iter().enumerate() {
                    walk(sub, &format!("{at}.any[{k}]"), check)?;
                }
                if let Some(sub) = &c.not {
                    walk(sub, &format!("{at}.not"), check)?;
                }
                Ok(())
            }
            for (i, r) in profile.routes.iter().enumerate() {
                walk(&r.condition, &format!("spec.routes[{i}].condition"), &check)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn spec<T: DeserializeOwned>(value: &serde_yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        format!("{at}: {}", e.into_inner())
    })
}
