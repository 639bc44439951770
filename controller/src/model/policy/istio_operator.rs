//! An IstioOperator, read for its tracing: the guide's `values.tracing` block (a Jaeger
//! agent's host is read as the same host's Zipkin endpoint, and the note says so),
//! `values.pilot.traceSampling`, `meshConfig.enableTracing`, `meshConfig.defaultConfig.tracing`,
//! `meshConfig.defaultProviders.tracing` and the `meshConfig.extensionProviders` that Telemetry
//! names; `meshConfig.outboundTrafficPolicy.mode` (ALLOW_ANY or REGISTRY_ONLY); and DNS capture
//! (`values.cni.ambient.dnsCapture`, `ISTIO_META_DNS_CAPTURE` in `proxyMetadata`). The rest
//! installs Istio's own parts and is named in the notes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{Notes, Unhonoured};
use super::tracing_config::{
    Collector, CollectorProtocol, Open, TracingSettings, ZIPKIN_PORT, host_port, percent, typed,
};

/// `IstioOperator.spec`: what an install asks for. Weft reads its tracing; the rest installs
/// Istio's own parts and is named in the notes.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioOperatorSpec {
    /// Not honoured.
    #[serde(default)]
    pub profile: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub hub: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub tag: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub revision: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub namespace: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub install_package_path: Unhonoured,
    /// Read: `ingressGateways` (Weft deploys each enabled one as an ingress gateway); the
    /// other components are named in the notes.
    #[serde(default)]
    pub components: Open,
    /// Not honoured.
    #[serde(default)]
    pub unvalidated_values: Unhonoured,
    /// Read: `enableTracing`, `defaultConfig.tracing`, `defaultProviders.tracing`,
    /// `extensionProviders`.
    #[serde(default)]
    pub mesh_config: Open,
    /// Read: `tracing` (the guide's block), `pilot.traceSampling`.
    #[serde(default)]
    pub values: Open,
    /// What it says about tracing (read by [`IstioOperatorSpec::read`]).
    #[serde(skip)]
    #[schemars(skip)]
    pub tracing: TracingSettings,
    /// Its `meshConfig.extensionProviders` that Weft can export to, by name.
    #[serde(skip)]
    #[schemars(skip)]
    pub providers: BTreeMap<String, Collector>,
    /// Its enabled `components.ingressGateways` and `egressGateways`, as Weft deploys them.
    #[serde(skip)]
    #[schemars(skip)]
    pub gateways: Vec<GatewayComponent>,
    /// Its `meshConfig.outboundTrafficPolicy.mode`: `REGISTRY_ONLY` (true) or `ALLOW_ANY`.
    #[serde(skip)]
    #[schemars(skip)]
    pub registry_only: Option<bool>,
    /// Whether the node proxies answer DNS (`values.cni.ambient.dnsCapture`, or
    /// `meshConfig.defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE`).
    #[serde(skip)]
    #[schemars(skip)]
    pub dns_capture: Option<bool>,
}

/// The guide's `values.tracing` block.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValuesTracing {
    #[serde(default)]
    enabled: Option<bool>,
    /// Percent of new traces.
    #[serde(default)]
    sampling: Option<f64>,
    /// `jaeger` or `zipkin`.
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    jaeger: Option<JaegerValues>,
    #[serde(default)]
    zipkin: Option<ZipkinValues>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JaegerValues {
    /// Deploy an in-cluster Jaeger (Weft deploys none).
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    agent_host: Option<String>,
    #[serde(default)]
    agent_port: Option<u16>,
    #[serde(default)]
    hub: Option<serde_yaml::Value>,
    #[serde(default)]
    tag: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ZipkinValues {
    #[serde(default)]
    address: Option<String>,
}

/// `meshConfig.defaultConfig.tracing`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProxyTracing {
    #[serde(default)]
    sampling: Option<f64>,
    #[serde(default)]
    zipkin: Option<ZipkinValues>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

/// One of `meshConfig.extensionProviders`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExtensionProvider {
    name: String,
    #[serde(default)]
    zipkin: Option<ProviderService>,
    #[serde(default)]
    opentelemetry: Option<ProviderService>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderService {
    service: String,
    port: u16,
    /// OpenTelemetry: present means OTLP/HTTP (else gRPC).
    #[serde(default)]
    http: Option<serde_yaml::Value>,
    #[serde(default)]
    grpc: Option<serde_yaml::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

impl IstioOperatorSpec {
    /// Reads the tracing it asks for into [`Self::tracing`] and [`Self::providers`], noting
    /// what Weft does not do. A malformed tracing field refuses the object.
    pub fn read(&mut self, notes: &mut Notes) -> Result<(), String> {
        let why = "an install setting for Istio's own parts; Weft is installed by `weft install`";
        notes.unhonoured("spec.profile", &self.profile, why);
        notes.unhonoured("spec.hub", &self.hub, why);
        notes.unhonoured("spec.tag", &self.tag, why);
        notes.unhonoured("spec.revision", &self.revision, why);
        notes.unhonoured("spec.namespace", &self.namespace, why);
        notes.unhonoured("spec.installPackagePath", &self.install_package_path, why);
        self.read_components(notes)?;
        notes.unhonoured("spec.unvalidatedValues", &self.unvalidated_values, why);
        let mut tracing = TracingSettings::default();
        for (key, value) in self.values.entries("spec.values")? {
            let at = format!("spec.values.{key}");
            match key.as_str() {
                "tracing" => read_values_tracing(&at, value, &mut tracing, notes)?,
                "cni" => {
                    let mut cni: BTreeMap<String, serde_yaml::Value> = typed(&at, value)?;
                    if let Some(ambient) = cni.remove("ambient") {
                        let mut ambient: BTreeMap<String, serde_yaml::Value> =
                            typed(&format!("{at}.ambient"), ambient)?;
                        if let Some(v) = ambient.remove("dnsCapture") {
                            self.dns_capture = Some(typed(&format!("{at}.ambient.dnsCapture"), v)?);
                        }
                        for other in ambient.keys() {
                            notes.note(
                                &format!("{at}.ambient.{other}"),
                                format!("not honoured by Weft ({why})"),
                            );
                        }
                    }
                    for other in cni.keys() {
                        notes.note(
                            &format!("{at}.{other}"),
                            format!("not honoured by Weft ({why})"),
                        );
                    }
                }
                "pilot" => {
                    let mut pilot: BTreeMap<String, serde_yaml::Value> = typed(&at, value)?;
                    if let Some(v) = pilot.remove("traceSampling") {
                        let v: f64 = typed(&format!("{at}.traceSampling"), v)?;
                        tracing.sampling_percent =
                            Some(percent(&format!("{at}.traceSampling"), v)?);
                    }
                    for other in pilot.keys() {
                        notes.note(
                            &format!("{at}.{other}"),
                            format!("not honoured by Weft ({why})"),
                        );
                    }
                }
                _ => notes.note(&at, format!("not honoured by Weft ({why})")),
            }
        }
        for (key, value) in self.mesh_config.entries("spec.meshConfig")? {
            let at = format!("spec.meshConfig.{key}");
            match key.as_str() {
                "enableTracing" => {
                    let on: bool = typed(&at, value)?;
                    tracing.disabled |= !on;
                }
                "defaultConfig" => {
                    let mut config: BTreeMap<String, serde_yaml::Value> = typed(&at, value)?;
                    if let Some(t) = config.remove("tracing") {
                        let t: ProxyTracing = typed(&format!("{at}.tracing"), t)?;
                        if let Some(s) = t.sampling {
                            tracing.sampling_percent =
                                Some(percent(&format!("{at}.tracing.sampling"), s)?);
                        }
                        if let Some(address) = t.zipkin.and_then(|z| z.address) {
                            let field = format!("{at}.tracing.zipkin.address");
                            let (host, port) = host_port(&field, &address)?;
                            tracing.collector = Some(Collector {
                                protocol: CollectorProtocol::Zipkin,
                                host,
                                port,
                            });
                        }
                        for other in t.other.keys() {
                            notes.note(
                                &format!("{at}.tracing.{other}"),
                                "not honoured by Weft (it exports to Zipkin and OTLP collectors)",
                            );
                        }
                    }
                    if let Some(m) = config.remove("proxyMetadata") {
                        let mut m: BTreeMap<String, String> =
                            typed(&format!("{at}.proxyMetadata"), m)?;
                        if let Some(v) = m.remove("ISTIO_META_DNS_CAPTURE") {
                            self.dns_capture = Some(v.eq_ignore_ascii_case("true"));
                        }
                        for other in m.keys() {
                            notes.note(
                                &format!("{at}.proxyMetadata.{other}"),
                                "not honoured by Weft (a sidecar setting)",
                            );
                        }
                    }
                    for other in config.keys() {
                        notes.note(
                            &format!("{at}.{other}"),
                            "not honoured by Weft (a sidecar setting)",
                        );
                    }
                }
                "extensionProviders" => {
                    let list: Vec<ExtensionProvider> = typed(&at, value)?;
                    for (i, p) in list.into_iter().enumerate() {
                        let field = format!("{at}[{i}]");
                        if let Some(c) = provider_collector(&field, &p, notes) {
                            self.providers.insert(p.name, c);
                        }
                    }
                }
                "outboundTrafficPolicy" => {
                    let mut o: BTreeMap<String, serde_yaml::Value> = typed(&at, value)?;
                    if let Some(mode) = o.remove("mode") {
                        let mode: String = typed(&format!("{at}.mode"), mode)?;
                        self.registry_only = Some(match mode.as_str() {
                            "REGISTRY_ONLY" => true,
                            "ALLOW_ANY" => false,
                            other => {
                                return Err(format!(
                                    "{at}.mode: {other:?} is not ALLOW_ANY or REGISTRY_ONLY"
                                ));
                            }
                        });
                    }
                    for other in o.keys() {
                        notes.note(
                            &format!("{at}.{other}"),
                            "not honoured by Weft (no egress proxy for unknown destinations yet)",
                        );
                    }
                }
                "defaultProviders" => {
                    let mut d: BTreeMap<String, serde_yaml::Value> = typed(&at, value)?;
                    if let Some(t) = d.remove("tracing") {
                        tracing.providers = typed(&format!("{at}.tracing"), t)?;
                    }
                    for other in d.keys() {
                        notes.note(
                            &format!("{at}.{other}"),
                            "not honoured by Weft (metrics and access logs are always on)",
                        );
                    }
                }
                _ => notes.note(&at, "not honoured by Weft (a mesh setting it does not use)"),
            }
        }
        self.tracing = tracing;
        Ok(())
    }
}

fn read_values_tracing(
    at: &str,
    value: serde_yaml::Value,
    tracing: &mut TracingSettings,
    notes: &mut Notes,
) -> Result<(), String> {
    let t: ValuesTracing = typed(at, value)?;
    if t.enabled == Some(false) {
        tracing.disabled = true;
    }
    if let Some(s) = t.sampling {
        tracing.sampling_percent = Some(percent(&format!("{at}.sampling"), s)?);
    }
    let provider = t.provider.as_deref().unwrap_or("jaeger");
    match provider {
        "jaeger" => {
            if let Some(j) = &t.jaeger {
                if j.enabled == Some(true) {
                    notes.note(
                        &format!("{at}.jaeger.enabled"),
                        "Weft deploys no Jaeger: name your collector's host in agentHost",
                    );
                }
                if j.hub.is_some() || j.tag.is_some() {
                    notes.note(
                        &format!("{at}.jaeger"),
                        "hub and tag are not honoured by Weft (it deploys no Jaeger)",
                    );
                }
            }
            if let Some(host) = t.jaeger.as_ref().and_then(|j| j.agent_host.clone()) {
                let agent_port = t.jaeger.as_ref().and_then(|j| j.agent_port).unwrap_or(6831);
                notes.note(
                    &format!("{at}.jaeger.agentPort"),
                    format!(
                        "{agent_port} is the Jaeger agent's UDP port (Thrift), which Weft does not speak: spans go to {host}:{ZIPKIN_PORT} as Zipkin v2 JSON, which the Jaeger collector takes on its Zipkin port"
                    ),
                );
                tracing.collector = Some(Collector {
                    protocol: CollectorProtocol::Zipkin,
                    host,
                    port: ZIPKIN_PORT,
                });
            }
        }
        "zipkin" => {
            if let Some(address) = t.zipkin.and_then(|z| z.address) {
                let (host, port) = host_port(&format!("{at}.zipkin.address"), &address)?;
                tracing.collector = Some(Collector {
                    protocol: CollectorProtocol::Zipkin,
                    host,
                    port,
                });
            }
        }
        other => notes.note(
            &format!("{at}.provider"),
            format!("{other:?} is not a collector Weft exports to (jaeger or zipkin here; OTLP through meshConfig.extensionProviders)"),
        ),
    }
    Ok(())
}

fn provider_collector(field: &str, p: &ExtensionProvider, notes: &mut Notes) -> Option<Collector> {
    for other in p.other.keys() {
        notes.note(
            &format!("{field}.{other}"),
            format!(
                "provider {:?}: not a tracer Weft exports to (zipkin and opentelemetry are)",
                p.name
            ),
        );
    }
    let (service, protocol) = match (&p.zipkin, &p.opentelemetry) {
        (Some(z), _) => (z, CollectorProtocol::Zipkin),
        (None, Some(o)) if o.http.is_some() => (o, CollectorProtocol::OtlpHttp),
        (None, Some(o)) => (o, CollectorProtocol::OtlpGrpc),
        (None, None) => return None,
    };
    for other in service.other.keys() {
        notes.note(
            &format!("{field}.{other}"),
            "not honoured by Weft (only service and port are read)",
        );
    }
    if protocol == CollectorProtocol::Zipkin && (service.http.is_some() || service.grpc.is_some()) {
        notes.note(field, "http and grpc are not Zipkin settings: ignored");
    }
    // `service` may be `ns/name` in Istio: the host is the name part.
    let host = service
        .service
        .rsplit_once('/')
        .map_or(service.service.as_str(), |(_, h)| h)
        .to_owned();
    Some(Collector {
        protocol,
        host,
        port: service.port,
    })
}

/// A gateway an IstioOperator asks for (`ingressGateways`, `egressGateways`), as Weft deploys
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayComponent {
    /// The Deployment's (and Service's) name.
    pub name: String,
    /// Its namespace (none: the IstioOperator's).
    pub namespace: Option<String>,
    /// Its pods' labels (Istio's defaults: `istio: ingressgateway`, `app: <name>`).
    pub labels: BTreeMap<String, String>,
    pub replicas: u32,
    /// The container's `resources`, as written.
    pub resources: Option<serde_json::Value>,
    /// The Service's type (`LoadBalancer` by default, as Istio's).
    pub service_type: String,
    /// The TLS Secrets the Gateways selecting its pods name (`credentialName`), mounted
    /// under their names (filled in when it is deployed).
    pub credentials: Vec<String>,
    /// An egress gateway (`components.egressGateways`): the same deployment, labelled
    /// `istio: egressgateway` and behind a ClusterIP Service by default.
    pub egress: bool,
    /// The ports its Service and container expose (80 and 443 for an IstioOperator's).
    pub ports: Vec<u16>,
}

/// One of `components.ingressGateways`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewayEntry {
    name: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    k8s: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

impl IstioOperatorSpec {
    fn read_components(&mut self, notes: &mut Notes) -> Result<(), String> {
        for (key, value) in self.components.entries("spec.components")? {
            let at = format!("spec.components.{key}");
            match key.as_str() {
                "ingressGateways" | "egressGateways" => {
                    let egress = key == "egressGateways";
                    let entries: Vec<GatewayEntry> = typed(&at, value)?;
                    for (i, e) in entries.into_iter().enumerate() {
                        let at = format!("{at}[{i}]");
                        if let Some(g) = gateway_component(&at, e, egress, notes)? {
                            self.gateways.push(g);
                        }
                    }
                }
                _ => notes.note(
                    &at,
                    "not honoured by Weft (its own control plane and node proxies are installed by `weft install`)",
                ),
            }
        }
        Ok(())
    }
}

fn gateway_component(
    at: &str,
    e: GatewayEntry,
    egress: bool,
    notes: &mut Notes,
) -> Result<Option<GatewayComponent>, String> {
    for other in e.other.keys() {
        notes.note(&format!("{at}.{other}"), "not honoured by Weft");
    }
    if e.enabled == Some(false) {
        return Ok(None);
    }
    let mut k8s = e.k8s.unwrap_or_default();
    let mut replicas = 1;
    for key in ["replicaCount", "replicas"] {
        if let Some(v) = k8s.remove(key) {
            let n: u32 = typed(&format!("{at}.k8s.{key}"), v)?;
            if n == 0 || n > 100 {
                return Err(format!("{at}.k8s.{key}: {n} is not 1 to 100"));
            }
            replicas = n;
        }
    }
    let resources = match k8s.remove("resources") {
        Some(v) => Some(serde_json::to_value(&v).map_err(|e| format!("{at}.k8s.resources: {e}"))?),
        None => None,
    };
    // Istio's defaults: ingress behind a load balancer, egress inside the cluster.
    let mut service_type = if egress { "ClusterIP" } else { "LoadBalancer" }.to_owned();
    if let Some(service) = k8s.remove("service") {
        let mut service: BTreeMap<String, serde_yaml::Value> =
            typed(&format!("{at}.k8s.service"), service)?;
        if let Some(t) = service.remove("type") {
            let t: String = typed(&format!("{at}.k8s.service.type"), t)?;
            if !["LoadBalancer", "NodePort", "ClusterIP"].contains(&t.as_str()) {
                return Err(format!(
                    "{at}.k8s.service.type: {t:?} is not LoadBalancer, NodePort or ClusterIP"
                ));
            }
            service_type = t;
        }
        for other in service.keys() {
            notes.note(
                &format!("{at}.k8s.service.{other}"),
                "not honoured by Weft (the Service serves 80 and 443)",
            );
        }
    }
    for other in k8s.keys() {
        notes.note(&format!("{at}.k8s.{other}"), "not honoured by Weft");
    }
    let role = if egress {
        "egressgateway"
    } else {
        "ingressgateway"
    };
    let labels = e.label.unwrap_or_else(|| {
        [
            ("istio".to_owned(), role.to_owned()),
            ("app".to_owned(), e.name.clone()),
        ]
        .into()
    });
    Ok(Some(GatewayComponent {
        name: e.name,
        namespace: e.namespace,
        labels,
        replicas,
        resources,
        service_type,
        credentials: Vec::new(),
        egress,
        ports: vec![80, 443],
    }))
}
