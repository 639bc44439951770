//! Which tracer runs: the waypoint's flags, else the tracing its config carries (the users'
//! Telemetry, IstioOperator or linkerd-config, as the controller resolved them for this
//! waypoint). A flag wins over the config for what it sets. A change of collector or rate
//! swaps the tracer: requests already running finish with the one they started with, and the
//! old exporter ends once they are done.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

use super::export::{self, Collector, ExportMetrics};
use super::{QUEUE, Tracer};

/// The share of new traces sampled when neither flags nor config give one (Istio's default).
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// What the flags set.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub collector: Option<Collector>,
    pub sampling_percent: Option<f64>,
}

/// The tracer in use, and what it was built from.
pub struct Tracing {
    current: ArcSwap<Tracer>,
    flags: Flags,
    /// The (collector, rate) the current tracer runs with.
    applied: Mutex<Option<(Collector, f64)>>,
    /// The service name spans are reported under.
    service: String,
    /// Shared by every tracer built: the counters stay continuous across swaps.
    pub dropped: Counter,
    pub export: ExportMetrics,
}

impl Tracing {
    /// Starts with the flags' tracer (or none until the config names a collector).
    pub fn new(flags: Flags, service: String) -> Self {
        let tracing = Self {
            current: ArcSwap::from_pointee(Tracer::off()),
            flags,
            applied: Mutex::new(None),
            service,
            dropped: Counter::default(),
            export: ExportMetrics::default(),
        };
        tracing.apply(None);
        tracing
    }

    /// Registers the export counters (`trace_spans_exported`, `_failed`, `_dropped`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "trace_spans_exported",
            "Spans the collector accepted",
            self.export.exported.clone(),
        );
        registry.register(
            "trace_spans_failed",
            "Spans dropped because the collector refused them or could not be reached",
            self.export.failed.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full",
            self.dropped.clone(),
        );
    }

    /// The tracer for a request starting now.
    pub fn get(&self) -> Arc<Tracer> {
        self.current.load_full()
    }

    /// Applies the config's tracing (none: the config asks for none).
    pub fn apply(&self, config: Option<&crate::mesh::Tracing>) {
        let from_config = config.and_then(|c| match Collector::parse(&c.collector) {
            Ok(collector) => Some((collector, c.sampling_percent, c.source.as_str())),
            Err(e) => {
                warn!(error = %e, source = %c.source, "tracing in the config is not usable; it is not applied");
                None
            }
        });
        let collector = self
            .flags
            .collector
            .clone()
            .or_else(|| from_config.as_ref().map(|(c, _, _)| c.clone()));
        let sampling = self
            .flags
            .sampling_percent
            .or(from_config.as_ref().map(|(_, s, _)| *s))
            .unwrap_or(DEFAULT_SAMPLING_PERCENT);
        let wanted = collector.map(|c| (c, sampling));
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if *applied == wanted {
            return;
        }
        let tracer = match &wanted {
            None => {
                info!("tracing off");
                Tracer::off_with(self.dropped.clone())
            }
            Some((collector, percent)) => {
                let (queue, spans) = tokio::sync::mpsc::channel(QUEUE);
                tokio::spawn(export::run(
                    collector.clone(),
                    self.service.clone(),
                    spans,
                    self.export.clone(),
                ));
                let source = match (&self.flags.collector, &from_config) {
                    (Some(_), _) => "flags",
                    (None, Some((_, _, source))) => source,
                    (None, None) => "none",
                };
                info!(collector = ?collector, sampling_percent = percent, %source, "tracing");
                Tracer::new(*percent, queue, self.dropped.clone())
            }
        };
        self.current.store(Arc::new(tracer));
        *applied = wanted;
    }

    /// What runs now, for `/config_dump`.
    pub fn describe(&self) -> serde_json::Value {
        match &*self.applied.lock().unwrap_or_else(|e| e.into_inner()) {
            None => serde_json::Value::Null,
            Some((collector, percent)) => serde_json::json!({
                "collector": format!("{collector:?}"),
                "samplingPercent": percent,
            }),
        }
    }
}
