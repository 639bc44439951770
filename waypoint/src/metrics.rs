//! Request metrics, named and labelled like Istio's standard metrics (`reporter="waypoint"`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use weft_core::metrics::{DestinationLabels, SecurityPolicy, SourceLabels};

/// Labels of one request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) reporter: &'static str,
    #[prometheus(flatten)]
    pub(crate) source: SourceLabels,
    #[prometheus(flatten)]
    pub(crate) destination: DestinationLabels,
    pub(crate) route: String,
    pub(crate) request_protocol: &'static str,
    pub(crate) response_code: u16,
    pub(crate) grpc_response_status: String,
    pub(crate) response_flags: &'static str,
    /// Both hops of a waypoint are mesh mTLS.
    pub(crate) connection_security_policy: SecurityPolicy,
}

/// Upper bounds (ms) of the duration buckets: about 25% apart from 1 ms to 10 s, so that a
/// p50 or p99 read from them is within a quarter of the true value.
const DURATION_BUCKETS: [f64; 42] = [
    0.5, 1.0, 1.25, 1.6, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.5, 16.0, 20.0, 25.0, 30.0,
    40.0, 50.0, 60.0, 80.0, 100.0, 125.0, 160.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 800.0,
    1000.0, 1250.0, 1600.0, 2000.0, 2500.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 10000.0,
];

/// Upper bounds (bytes) of the request and response size buckets.
const BYTES_BUCKETS: [f64; 9] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    16_777_216.0,
];

/// The waypoint's request metrics.
#[derive(Clone)]
pub(crate) struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    /// Retries sent, by destination service.
    pub(crate) retries: Family<Vec<(String, String)>, Counter>,
    /// Mirrored copies, by mirror backend and result (`sent`, `failed`, `dropped`).
    pub(crate) mirrored: Family<Vec<(String, String)>, Counter>,
    /// Mirrored copies not yet answered.
    pub(crate) mirrors_in_flight: Gauge,
}

impl RequestMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            request_bytes: Family::new_with_constructor(|| Histogram::new(BYTES_BUCKETS)),
            response_bytes: Family::new_with_constructor(|| Histogram::new(BYTES_BUCKETS)),
            retries: Family::default(),
            mirrored: Family::default(),
            mirrors_in_flight: Gauge::default(),
        };
        registry.register("requests", "Requests handled", metrics.requests.clone());
        registry.register(
            "request_duration_milliseconds",
            "Request duration",
            metrics.duration.clone(),
        );
        registry.register(
            "request_bytes",
            "Request body size",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body size",
            metrics.response_bytes.clone(),
        );
        registry.register("retries", "Retries sent upstream", metrics.retries.clone());
        registry.register(
            "mirrored_requests",
            "Mirrored copies of requests",
            metrics.mirrored.clone(),
        );
        registry.register(
            "mirrors_in_flight",
            "Mirrored copies not yet answered",
            metrics.mirrors_in_flight.clone(),
        );
        metrics
    }

    pub(crate) fn record(&self, labels: &RequestLabels, millis: f64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
    }

    /// Records the body sizes of a request once its response body is done.
    pub(crate) fn record_bytes(&self, labels: &RequestLabels, request: u64, response: u64) {
        self.request_bytes
            .get_or_create(labels)
            .observe(request as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(response as f64);
    }
}
