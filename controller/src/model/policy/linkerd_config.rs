//! Linkerd's `linkerd-config` ConfigMap, read for the tracing in its `config.yaml` (the
//! guide's `traceCollector` and `sampling`); Linkerd's own install keys are named in the notes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::common::{Notes, Unhonoured};
use super::tracing_config::{
    Collector, CollectorProtocol, TracingSettings, ZIPKIN_PORT, host_port, typed,
};

/// The name of Linkerd's mesh ConfigMap.
pub const LINKERD_CONFIG: &str = "linkerd-config";

/// `linkerd-config`'s `data`: the guide's `config.yaml` is read; the keys Linkerd's own
/// releases write are Linkerd's install settings.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkerdConfigSpec {
    /// A YAML document: `traceCollector` and `sampling` are read.
    #[serde(default, rename = "config.yaml")]
    pub config_yaml: Option<String>,
    /// Not honoured.
    #[serde(default)]
    pub values: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub global: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub proxy: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub install: Unhonoured,
    /// What it says about tracing.
    #[serde(skip)]
    #[schemars(skip)]
    pub tracing: TracingSettings,
}

/// `traceCollector`: a mapping or `HOST:PORT`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TraceCollector {
    Address(String),
    Parts { host: String, port: u16 },
}

impl LinkerdConfigSpec {
    /// Reads the tracing in `config.yaml` into [`Self::tracing`].
    pub fn read(&mut self, notes: &mut Notes) -> Result<(), String> {
        let why = "a Linkerd install setting";
        notes.unhonoured("data.values", &self.values, why);
        notes.unhonoured("data.global", &self.global, why);
        notes.unhonoured("data.proxy", &self.proxy, why);
        notes.unhonoured("data.install", &self.install, why);
        let Some(text) = &self.config_yaml else {
            return Ok(());
        };
        let at = "data[config.yaml]";
        let doc: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| format!("{at}: not YAML: {e}"))?;
        let entries: BTreeMap<String, serde_yaml::Value> = match doc {
            serde_yaml::Value::Null => BTreeMap::new(),
            doc => typed(at, doc)?,
        };
        let mut tracing = TracingSettings::default();
        for (key, value) in entries {
            let field = format!("{at}.{key}");
            match key.as_str() {
                "traceCollector" => {
                    let (host, port) = match typed(&field, value)? {
                        TraceCollector::Address(a) => host_port(&field, &a)?,
                        TraceCollector::Parts { host, port } => (host, port),
                    };
                    let protocol = match port {
                        4317 => CollectorProtocol::OtlpGrpc,
                        4318 => CollectorProtocol::OtlpHttp,
                        ZIPKIN_PORT => CollectorProtocol::Zipkin,
                        other => {
                            notes.note(
                                &field,
                                format!("port {other} is read as a Zipkin v2 endpoint (9411 is Zipkin's, 4317/4318 OTLP's)"),
                            );
                            CollectorProtocol::Zipkin
                        }
                    };
                    tracing.collector = Some(Collector {
                        protocol,
                        host,
                        port,
                    });
                }
                "sampling" => {
                    let p: f64 = typed(&field, value)?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(format!(
                            "{field}: {p} is not a probability (0 to 1; 1.0 samples every new trace)"
                        ));
                    }
                    tracing.sampling_percent = Some(p * 100.0);
                }
                _ => notes.note(&field, format!("not honoured by Weft ({why})")),
            }
        }
        self.tracing = tracing;
        Ok(())
    }
}
