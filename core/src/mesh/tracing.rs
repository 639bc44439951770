//! A waypoint's tracing, as the controller resolves it from the users' config.

use serde::{Deserialize, Serialize};

/// Tracing, as the users' config asks for it (Istio's Telemetry API, an IstioOperator,
/// Linkerd's `linkerd-config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// `zipkin:HOST:PORT`, `otlp-http:HOST:PORT` or `otlp-grpc:HOST:PORT` (the form of the
    /// waypoint's `--trace-collector`).
    pub collector: String,
    /// Share of new traces sampled, in percent (a request's incoming decision is kept).
    pub sampling_percent: f64,
    /// The objects it was read from (`Telemetry istio-system/mesh-default`), for
    /// `/config_dump` and logs.
    pub source: String,
}

/// The collector protocols a waypoint exports to.
pub const COLLECTOR_PROTOCOLS: [&str; 3] = ["zipkin", "otlp-http", "otlp-grpc"];
