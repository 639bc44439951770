//! Prometheus metrics, named and labelled like Istio's standard metrics with a `weft_` prefix.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::identity::SpiffeId;
use crate::mesh::Workload;

/// Which side of the connection reported the metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    /// The client's node proxy.
    source,
    /// The server's node proxy.
    destination,
    /// A waypoint: L7 for the requests, L4 for the tunnels they came in.
    waypoint,
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

/// The source side of a metric's labels. `unknown` stands for what is outside the mesh or not
/// proven.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The source's workload (its Deployment, or the pod's name).
    pub source_workload: String,
    /// Source namespace.
    pub source_workload_namespace: String,
    /// Source SPIFFE ID, as proven by its certificate.
    pub source_principal: String,
    /// The source pod's `app` label.
    pub source_app: String,
    /// The source pod's `version` label.
    pub source_version: String,
    /// Canonical service of the source.
    pub source_canonical_service: String,
    /// Canonical revision of the source.
    pub source_canonical_revision: String,
}

/// The destination side of a metric's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    /// The destination's workload (its Deployment, or the pod's name).
    pub destination_workload: String,
    /// Destination namespace.
    pub destination_workload_namespace: String,
    /// Destination SPIFFE ID.
    pub destination_principal: String,
    /// The destination pod's `app` label.
    pub destination_app: String,
    /// The destination pod's `version` label.
    pub destination_version: String,
    /// Canonical service of the destination.
    pub destination_canonical_service: String,
    /// Canonical revision of the destination.
    pub destination_canonical_revision: String,
    /// The service the client addressed, as `name.namespace.svc.cluster.local`, at every
    /// reporter.
    pub destination_service: String,
    /// The service's name.
    pub destination_service_name: String,
    /// The service's namespace.
    pub destination_service_namespace: String,
}

/// The value of labels nothing is known for.
pub const UNKNOWN: &str = "unknown";

fn or_unknown(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => UNKNOWN.to_owned(),
    }
}

/// What a workload contributes to a side's labels: workload, namespace, app, version,
/// canonical service and revision.
fn workload_names(w: Option<&Workload>) -> [String; 6] {
    [
        or_unknown(w.map(Workload::workload_name)),
        or_unknown(w.map(|w| w.namespace.as_str())),
        or_unknown(w.map(|w| w.meta.app.as_str())),
        or_unknown(w.map(|w| w.meta.version.as_str())),
        or_unknown(w.map(Workload::canonical_service)),
        or_unknown(w.map(Workload::canonical_revision)),
    ]
}

impl SourceLabels {
    /// The labels of a source workload (None: outside the mesh) that proved `principal`.
    pub fn of(workload: Option<&Workload>, principal: Option<&SpiffeId>) -> Self {
        let [workload, namespace, app, version, service, revision] = workload_names(workload);
        Self {
            source_workload: workload,
            source_workload_namespace: namespace,
            source_principal: principal.map_or_else(|| UNKNOWN.to_owned(), ToString::to_string),
            source_app: app,
            source_version: version,
            source_canonical_service: service,
            source_canonical_revision: revision,
        }
    }
}

impl DestinationLabels {
    /// The labels of a destination workload with `principal`, reached through `service`
    /// (name, namespace) when the client addressed one.
    pub fn of(
        workload: Option<&Workload>,
        principal: Option<&SpiffeId>,
        service: Option<(&str, &str)>,
    ) -> Self {
        let [workload, namespace, app, version, canonical, revision] = workload_names(workload);
        Self {
            destination_workload: workload,
            destination_workload_namespace: namespace,
            destination_principal: principal
                .map_or_else(|| UNKNOWN.to_owned(), ToString::to_string),
            destination_app: app,
            destination_version: version,
            destination_canonical_service: canonical,
            destination_canonical_revision: revision,
            destination_service: service
                .map_or_else(|| UNKNOWN.to_owned(), |(name, ns)| service_fqdn(name, ns)),
            destination_service_name: or_unknown(service.map(|s| s.0)),
            destination_service_namespace: or_unknown(service.map(|s| s.1)),
        }
    }
}

impl DestinationLabels {
    /// Names the workload that answered, keeping the service.
    pub fn set_workload(&mut self, workload: &Workload, principal: &SpiffeId) {
        let [name, namespace, app, version, canonical, revision] = workload_names(Some(workload));
        self.destination_workload = name;
        self.destination_workload_namespace = namespace;
        self.destination_principal = principal.to_string();
        self.destination_app = app;
        self.destination_version = version;
        self.destination_canonical_service = canonical;
        self.destination_canonical_revision = revision;
    }

    /// Names a destination outside the mesh (a ServiceEntry's `host`): the service is the
    /// host, as Istio labels it; no workload or identity answers for it.
    pub fn set_outside(&mut self, host: &str) {
        *self = Self::of(None, None, None);
        self.destination_service = host.to_owned();
        self.destination_service_name = host.to_owned();
    }
}

/// A service's `destination_service` label: its cluster-local FQDN.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}

/// Labels of the TCP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Who reports.
    pub reporter: Reporter,
    /// The client.
    #[prometheus(flatten)]
    pub source: SourceLabels,
    /// The server.
    #[prometheus(flatten)]
    pub destination: DestinationLabels,
    /// Always `tcp`.
    pub request_protocol: &'static str,
    /// mTLS or not.
    pub connection_security_policy: SecurityPolicy,
}

/// Why a proxy refused an inbound connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefusalReason {
    /// Not a well-formed tunnel request (the target is not the pod, no CONNECT).
    bad_request,
    /// The client's address is not a workload the peer's identity may speak for.
    unverified_source,
    /// Plaintext where PeerAuthentication requires mTLS (STRICT).
    mtls_required,
    /// A pod behind a waypoint reached other than through it.
    not_through_waypoint,
    /// An AuthorizationPolicy denies it.
    authorization_denied,
    /// The pod did not accept the connection.
    upstream_unavailable,
    /// The pod's identity has no certificate (yet).
    no_certificate,
    /// The TLS or HTTP/2 handshake of a tunnel connection failed.
    handshake_failed,
    /// Outbound, under REGISTRY_ONLY: a destination no workload, service or ServiceEntry
    /// holds.
    not_in_registry,
}

/// Labels of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Who refused.
    pub reporter: Reporter,
    /// Why.
    pub reason: RefusalReason,
    /// The identity the client proved (`unknown` for plaintext or a failed handshake).
    pub source_principal: String,
    /// The pod it was for.
    pub destination_workload: String,
    /// Its namespace.
    pub destination_workload_namespace: String,
}

/// TCP telemetry of a proxy.
#[derive(Clone, Debug, Default)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
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
        registry.register(
            "tcp_connections_refused",
            "Inbound connections refused, by reason",
            metrics.refused.clone(),
        );
        metrics
    }

    /// Counts a refused connection to `pod` (None: not known) from a client that proved
    /// `principal` (None: nothing proven).
    pub fn refuse(
        &self,
        reason: RefusalReason,
        principal: Option<&SpiffeId>,
        pod: Option<&Workload>,
    ) {
        self.refused
            .get_or_create(&RefusedLabels {
                reporter: Reporter::destination,
                reason,
                source_principal: principal.map_or_else(|| UNKNOWN.to_owned(), ToString::to_string),
                destination_workload: or_unknown(pod.map(Workload::workload_name)),
                destination_workload_namespace: or_unknown(pod.map(|w| w.namespace.as_str())),
            })
            .inc();
    }

    /// Counts a connection the source's proxy refused to let out of a pod whose identity is
    /// `principal`: its destination is outside the mesh and not allowed.
    pub fn refuse_outbound(&self, reason: RefusalReason, principal: &SpiffeId) {
        self.refused
            .get_or_create(&RefusedLabels {
                reporter: Reporter::source,
                reason,
                source_principal: principal.to_string(),
                destination_workload: UNKNOWN.to_owned(),
                destination_workload_namespace: UNKNOWN.to_owned(),
            })
            .inc();
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
