//! Request metrics, named and labelled like Istio's standard metrics (`reporter="waypoint"`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of one request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) reporter: &'static str,
    pub(crate) source_workload: String,
    pub(crate) source_workload_namespace: String,
    pub(crate) source_principal: String,
    pub(crate) destination_service: String,
    pub(crate) destination_service_namespace: String,
    pub(crate) destination_workload: String,
    pub(crate) route: String,
    pub(crate) response_code: u16,
    pub(crate) response_flags: &'static str,
    pub(crate) request_protocol: &'static str,
    pub(crate) grpc_response_status: String,
}

/// The waypoint's request metrics.
#[derive(Clone)]
pub(crate) struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
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
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                    5000.0, 10000.0,
                ])
            }),
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
}
