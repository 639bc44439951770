//! What the tracing configuration forms share: the collector a form names (spoken as Zipkin
//! v2 or OTLP), the settings one object gives ([`TracingSettings`]), and the helpers that read
//! the free-form parts by hand, naming the field in every error. The forms themselves are
//! [`super::telemetry`] (Istio's Telemetry API), [`super::istio_operator`] and
//! [`super::linkerd_config`]; `translate::tracing` decides which applies to which waypoint.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The protocols a collector is spoken to in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectorProtocol {
    /// Zipkin v2 JSON over HTTP (what Jaeger's and Zipkin's collectors take on 9411).
    Zipkin,
    /// OTLP/HTTP (JSON).
    OtlpHttp,
    /// OTLP over gRPC.
    OtlpGrpc,
}

/// A trace collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    pub protocol: CollectorProtocol,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Collector {
    /// The waypoint's `--trace-collector` form: `zipkin:HOST:PORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            CollectorProtocol::Zipkin => "zipkin",
            CollectorProtocol::OtlpHttp => "otlp-http",
            CollectorProtocol::OtlpGrpc => "otlp-grpc",
        };
        write!(f, "{protocol}:{}:{}", self.host, self.port)
    }
}

/// The Zipkin port Jaeger's collector listens on when its Zipkin endpoint is on.
pub(crate) const ZIPKIN_PORT: u16 = 9411;

/// What one object says about tracing; unset fields leave the decision to a wider scope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracingSettings {
    /// It turns tracing off (`enabled: false`, `enableTracing: false`,
    /// `disableSpanReporting: true`).
    pub disabled: bool,
    pub collector: Option<Collector>,
    /// Share of new traces sampled, in percent.
    pub sampling_percent: Option<f64>,
    /// Telemetry: the providers named, resolved against the IstioOperators'
    /// `meshConfig.extensionProviders`.
    pub providers: Vec<String>,
}

/// A free-form object Weft reads parts of by hand (an IstioOperator's `values` and
/// `meshConfig`): the parts it does not read are named in the notes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Open(pub Option<serde_yaml::Value>);

impl schemars::JsonSchema for Open {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Open".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

impl Open {
    /// Its entries, by key (none when unset).
    pub(crate) fn entries(
        &self,
        field: &str,
    ) -> Result<BTreeMap<String, serde_yaml::Value>, String> {
        match &self.0 {
            None | Some(serde_yaml::Value::Null) => Ok(BTreeMap::new()),
            Some(v) => typed(field, v.clone()),
        }
    }
}

/// Reads `value` as `T`; an error names the field under `field`.
pub(crate) fn typed<T: DeserializeOwned>(
    field: &str,
    value: serde_yaml::Value,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner == "." {
            field.to_owned()
        } else {
            format!("{field}.{inner}")
        };
        format!("{at}: {}", e.into_inner())
    })
}

/// A `HOST:PORT` address.
pub(crate) fn host_port(field: &str, text: &str) -> Result<(String, u16), String> {
    text.trim()
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty() && !h.contains(['/', ' ']))
        .map(|(h, p)| (h.to_owned(), p))
        .ok_or_else(|| format!("{field}: {text:?} is not HOST:PORT"))
}

pub(crate) fn percent(field: &str, value: f64) -> Result<f64, String> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{field}: {value} is not a percentage (0 to 100)"))
    }
}
