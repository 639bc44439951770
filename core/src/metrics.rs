//! Prometheus metrics, named and labelled like Istio's standard metrics with a `weft_` prefix.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Which side of the connection reported the metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    /// The client's node proxy.
    source,
    /// The server's node proxy.
    destination,
}

/// Whether the connection was protected by mesh mTLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    /// HBONE over mTLS.
    mutual_tls,
    /// Plain TCP (a destination outside the mesh).
    none,
}

/// Labels of the TCP metrics. `unknown` stands for a side outside the mesh.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Who reports.
    pub reporter: Reporter,
    /// Source pod name.
    pub source_workload: String,
    /// Source namespace.
    pub source_workload_namespace: String,
    /// Source SPIFFE ID.
    pub source_principal: String,
    /// Destination pod name.
    pub destination_workload: String,
    /// Destination namespace.
    pub destination_workload_namespace: String,
    /// Destination SPIFFE ID.
    pub destination_principal: String,
    /// Service the client addressed, if it used a VIP.
    pub destination_service: String,
    /// mTLS or not.
    pub connection_security_policy: SecurityPolicy,
}

/// TCP telemetry of a proxy.
#[derive(Clone, Debug, Default)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    /// Creates the families and registers them (names get `_total` appended).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "tcp_connections_opened",
            "TCP connections opened",
            metrics.opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "TCP connections closed",
            metrics.closed.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "Bytes sent by the client to the server",
            metrics.sent.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Bytes received by the client from the server",
            metrics.received.clone(),
        );
        metrics
    }

    /// Counts a connection as opened and returns the counters it updates while it lives.
    pub fn open(&self, labels: &TcpLabels) -> ConnMetrics {
        self.opened.get_or_create(labels).inc();
        ConnMetrics {
            sent: self.sent.get_or_create(labels).clone(),
            received: self.received.get_or_create(labels).clone(),
            closed: self.closed.get_or_create(labels).clone(),
        }
    }
}

/// The counters of one live connection; counts it closed when dropped.
#[derive(Debug)]
pub struct ConnMetrics {
    /// Client → server bytes.
    pub sent: Counter,
    /// Server → client bytes.
    pub received: Counter,
    closed: Counter,
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.closed.inc();
    }
}

/// Encodes a registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
