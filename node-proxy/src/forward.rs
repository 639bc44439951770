//! The tail every connection shares, whichever listener took it: count it in the TCP metrics,
//! copy both ways until both sides are done, and write one access log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;
use weft_core::copy::Leg;
use weft_core::identity::SpiffeId;
use weft_core::mesh::{Service, Workload};
use weft_core::metrics::{DestinationLabels, Reporter, SecurityPolicy, SourceLabels, TcpLabels};
use weft_core::trace::{Format, Incoming, Kind, Span, SpanContext, Tracer};

use crate::proxy::Proxy;

/// One side of a connection, as metrics and access logs name it.
#[derive(Clone, Copy)]
pub(crate) struct Peer<'a> {
    pub(crate) workload: Option<&'a Workload>,
    pub(crate) identity: Option<&'a SpiffeId>,
}

impl Peer<'_> {
    pub(crate) const UNKNOWN: Peer<'static> = Peer {
        workload: None,
        identity: None,
    };
}

/// How the connection travels, as the access log says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Over an HBONE tunnel (mTLS).
    Hbone,
    /// Plaintext to a pod that accepts it (PERMISSIVE or DISABLE).
    Plaintext,
    /// Plain TCP to a destination outside the mesh or one that takes plain TCP.
    Passthrough,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hbone => "hbone",
            Self::Plaintext => "plaintext",
            Self::Passthrough => "passthrough",
        }
    }
}

/// Everything the metrics and the access log say about one connection.
pub(crate) struct Connection<'a> {
    pub(crate) reporter: Reporter,
    pub(crate) via: Via,
    pub(crate) security: SecurityPolicy,
    pub(crate) src_addr: SocketAddr,
    pub(crate) source: Peer<'a>,
    pub(crate) dst_addr: SocketAddr,
    pub(crate) destination: Peer<'a>,
    pub(crate) service: Option<&'a Service>,
    pub(crate) started: Instant,
    /// The connection's span, when this proxy traces connections.
    pub(crate) trace: Option<ConnSpan>,
}

/// A connection's place in its trace: the span this proxy reports for it.
pub(crate) struct ConnSpan {
    pub(crate) context: SpanContext,
    /// The span it continues (the source proxy's, from the tunnel's `traceparent`).
    pub(crate) parent: Option<u64>,
    pub(crate) kind: Kind,
    /// The tracer the connection started with.
    pub(crate) tracer: Arc<Tracer>,
}

impl ConnSpan {
    /// A span starting a trace (sampled at the proxy's rate), or continuing `parent`'s.
    pub(crate) fn start(proxy: &Proxy, parent: Option<SpanContext>, kind: Kind) -> Option<Self> {
        let tracer = proxy.tracing.get();
        if !tracer.enabled() {
            return None;
        }
        let incoming = parent.map(|parent| Incoming {
            parent,
            format: Format::W3c,
            tracestate: None,
        });
        Some(Self {
            context: tracer.server_span(incoming.as_ref(), &mut proxy.rng()),
            parent: parent.map(|p| p.span_id),
            kind,
            tracer,
        })
    }
}

impl Connection<'_> {
    fn labels(&self) -> TcpLabels {
        TcpLabels {
            reporter: self.reporter,
            source: SourceLabels::of(self.source.workload, self.source.identity),
            destination: DestinationLabels::of(
                self.destination.workload,
                self.destination.identity,
                self.service
                    .map(|s| (s.name.as_str(), s.namespace.as_str())),
            ),
            request_protocol: "tcp",
            connection_security_policy: self.security,
        }
    }
}

/// Copies between `downstream` and `upstream` until both are done, counted and logged.
pub(crate) async fn forward(
    proxy: &Proxy,
    conn: Connection<'_>,
    downstream: impl Into<Leg>,
    upstream: impl Into<Leg>,
) {
    let metrics = proxy.metrics.open(&conn.labels());
    let result = weft_core::copy::proxy_legs(downstream.into(), upstream.into(), &metrics).await;
    let (sent, received) = result.as_ref().map_or((0, 0), |r| *r);
    let id_text = |p: Option<&SpiffeId>| p.map(ToString::to_string).unwrap_or_default();
    let started_at = std::time::SystemTime::now()
        .checked_sub(conn.started.elapsed())
        .unwrap_or(std::time::UNIX_EPOCH);
    let dst_service = conn.service.map_or_else(
        || "-".to_owned(),
        |s| weft_core::metrics::service_fqdn(&s.name, &s.namespace),
    );
    if let Some(span) = &conn.trace
        && span.context.sampled
    {
        span.tracer.finish(Span {
            context: span.context,
            parent: span.parent,
            name: format!("{:?} {}", conn.reporter, conn.dst_addr),
            kind: span.kind,
            start: started_at,
            duration: conn.started.elapsed(),
            error: result.is_err(),
            attributes: vec![
                ("reporter", format!("{:?}", conn.reporter)),
                ("via", conn.via.as_str().to_owned()),
                ("src_addr", conn.src_addr.to_string()),
                (
                    "src_workload",
                    conn.source
                        .workload
                        .map_or("-", |w| w.name.as_str())
                        .to_owned(),
                ),
                ("src_identity", id_text(conn.source.identity)),
                ("dst_addr", conn.dst_addr.to_string()),
                (
                    "dst_workload",
                    conn.destination
                        .workload
                        .map_or("-", |w| w.name.as_str())
                        .to_owned(),
                ),
                ("dst_identity", id_text(conn.destination.identity)),
                ("dst_service", dst_service.clone()),
                ("bytes_sent", sent.to_string()),
                ("bytes_received", received.to_string()),
            ],
        });
    }
    let trace_id = conn.trace.as_ref().map_or_else(
        || "-".to_owned(),
        |s| format!("{:032x}", s.context.trace_id),
    );
    info!(
        target: "access",
        start_time = %weft_core::telemetry::rfc3339(started_at),
        reporter = ?conn.reporter,
        src_addr = %conn.src_addr,
        src_workload = %conn.source.workload.map_or("-", |w| w.name.as_str()),
        src_identity = %id_text(conn.source.identity),
        dst_addr = %conn.dst_addr,
        dst_workload = %conn.destination.workload.map_or("-", |w| w.name.as_str()),
        dst_identity = %id_text(conn.destination.identity),
        dst_service = %dst_service,
        via = %conn.via.as_str(),
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = conn.started.elapsed().as_millis() as u64,
        trace_id = %trace_id,
        error = result.err().map(|e| e.to_string()),
        "connection complete"
    );
}
