//! Span export: batches of up to [`BATCH`] spans, at least once a second, POSTed as Zipkin v2
//! JSON (`/api/v2/spans`, what Zipkin and Jaeger's Zipkin port take) or as OTLP/HTTP JSON
//! (`/v1/traces`), or sent with OTLP's gRPC `TraceService/Export` (what OpenTelemetry
//! collectors take on 4317). A collector that is down or slow costs
//! the request path nothing: the queue in front of this task is bounded, each POST has a
//! timeout, and a failed batch is dropped and counted.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::api::otlp::{
    self, AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource,
    ResourceSpans, ScopeSpans, any_value, trace_service_client::TraceServiceClient,
};

use super::{Kind, Span};

/// Most spans per POST.
const BATCH: usize = 256;
/// The longest a span waits in a partial batch.
const LINGER: Duration = Duration::from_secs(1);
/// The longest one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed POST, batches are dropped unencoded for this long, doubling per failure up
/// to [`MAX_BACKOFF`]: a collector that is down costs one connection attempt now and then, not
/// the encoding of every span.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where spans go, and in which encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collector {
    /// Zipkin v2 JSON to `http://<authority>/api/v2/spans`.
    Zipkin { authority: String },
    /// OTLP/HTTP JSON to `http://<authority>/v1/traces`.
    OtlpHttp { authority: String },
    /// OTLP over gRPC (plain HTTP/2) to `<authority>`.
    OtlpGrpc { authority: String },
}

impl Collector {
    /// `zipkin:HOST:PORT`, `otlp-http:HOST:PORT` or `otlp-grpc:HOST:PORT` (no TLS).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, authority) = text.split_once(':').ok_or_else(|| {
            format!("{text:?}: expected zipkin:, otlp-http: or otlp-grpc:HOST:PORT")
        })?;
        let authority = authority.trim_start_matches("//").trim_end_matches('/');
        if authority
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("{text:?}: {authority:?} is not HOST:PORT"));
        }
        let authority = authority.to_owned();
        match kind {
            "zipkin" => Ok(Self::Zipkin { authority }),
            "otlp-http" => Ok(Self::OtlpHttp { authority }),
            "otlp-grpc" => Ok(Self::OtlpGrpc { authority }),
            other => Err(format!(
                "{other:?}: the collectors spoken are zipkin, otlp-http and otlp-grpc"
            )),
        }
    }

    fn authority(&self) -> &str {
        match self {
            Self::Zipkin { authority }
            | Self::OtlpHttp { authority }
            | Self::OtlpGrpc { authority } => authority,
        }
    }

    /// Sends one batch: Ok once the collector took it, else why not.
    async fn send(
        &self,
        service: &str,
        spans: &[Span],
        grpc: &mut Option<TraceServiceClient<tonic::transport::Channel>>,
    ) -> Result<(), String> {
        let (path, body) = match self {
            Self::Zipkin { .. } => ("/api/v2/spans", zipkin(service, spans)),
            Self::OtlpHttp { .. } => ("/v1/traces", otlp(service, spans)),
            Self::OtlpGrpc { authority } => {
                let client = match grpc {
                    Some(client) => client,
                    None => {
                        let channel =
                            tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
                                .map_err(|e| e.to_string())?
                                .connect_timeout(POST_TIMEOUT)
                                .timeout(POST_TIMEOUT)
                                .connect_lazy();
                        grpc.insert(TraceServiceClient::new(channel))
                    }
                };
                return match client.export(otlp_proto(service, spans)).await {
                    Ok(answer) => match answer.into_inner().partial_success {
                        Some(p) if p.rejected_spans > 0 => Err(format!(
                            "rejected {} spans: {}",
                            p.rejected_spans, p.error_message
                        )),
                        _ => Ok(()),
                    },
                    Err(status) => {
                        // A fresh channel for the next batch.
                        *grpc = None;
                        Err(format!("{:?}: {}", status.code(), status.message()))
                    }
                };
            }
        };
        match post(self.authority(), path, body.to_string()).await {
            Ok(status) if status.is_success() => Ok(()),
            Ok(status) => Err(format!("answered {status}")),
            Err(e) => Err(e),
        }
    }
}

/// Export counters.
#[derive(Clone, Default)]
pub struct ExportMetrics {
    pub exported: Counter,
    pub failed: Counter,
}

/// Drains `queue` into `collector` until the queue's senders are gone.
pub async fn run(
    collector: Collector,
    service: String,
    mut queue: mpsc::Receiver<Span>,
    metrics: ExportMetrics,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut grpc = None;
    let mut down_until: Option<tokio::time::Instant> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        if down_until.is_some_and(|t| tokio::time::Instant::now() < t) {
            metrics.failed.inc_by(batch.len() as u64);
            continue;
        }
        let authority = collector.authority().to_owned();
        let sent = collector.send(&service, &batch, &mut grpc);
        match tokio::time::timeout(POST_TIMEOUT, sent).await {
            Ok(Ok(())) => {
                (backoff, down_until) = (FIRST_BACKOFF, None);
                metrics.exported.inc_by(batch.len() as u64);
                debug!(spans = batch.len(), %authority, "spans exported");
            }
            outcome => {
                metrics.failed.inc_by(batch.len() as u64);
                let why = match outcome {
                    Ok(Err(e)) => e,
                    _ => "timed out".into(),
                };
                warn!(spans = batch.len(), %authority, %why, backoff_s = backoff.as_secs(), "span export failed; spans dropped until the collector is tried again");
                down_until = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn post(authority: &str, path: &str, body: String) -> Result<StatusCode, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    Ok(sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?
        .status())
}

fn micros(span: &Span) -> (u128, u128) {
    let start = span
        .start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    (start, span.duration.as_micros().max(1))
}

/// Zipkin v2: a JSON array of spans, ids in lowercase hex, times in microseconds.
fn zipkin(service: &str, spans: &[Span]) -> Value {
    Value::Array(
        spans
            .iter()
            .map(|s| {
                let (timestamp, duration) = micros(s);
                let mut tags: serde_json::Map<String, Value> = s
                    .attributes
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
                    .collect();
                if s.error {
                    tags.insert("error".into(), Value::String("true".into()));
                }
                let mut span = json!({
                    "traceId": format!("{:032x}", s.context.trace_id),
                    "id": format!("{:016x}", s.context.span_id),
                    "name": s.name,
                    "kind": match s.kind { Kind::Server => "SERVER", Kind::Client => "CLIENT" },
                    "timestamp": timestamp as u64,
                    "duration": duration as u64,
                    "localEndpoint": {"serviceName": service},
                    "tags": tags,
                });
                if let Some(parent) = s.parent {
                    span["parentId"] = Value::String(format!("{parent:016x}"));
                }
                span
            })
            .collect(),
    )
}

/// OTLP/HTTP JSON: one resource (the waypoint), one scope, ids in hex, times in nanoseconds
/// as strings.
fn otlp(service: &str, spans: &[Span]) -> Value {
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let start = s
                .start
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let end = start + s.duration.as_nanos();
            json!({
                "traceId": format!("{:032x}", s.context.trace_id),
                "spanId": format!("{:016x}", s.context.span_id),
                "parentSpanId": s.parent.map(|p| format!("{p:016x}")).unwrap_or_default(),
                "name": s.name,
                "kind": match s.kind { Kind::Server => 2, Kind::Client => 3 },
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": end.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
                "status": {"code": if s.error { 2 } else { 1 }},
            })
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [attr("service.name", service)]},
            "scopeSpans": [{"scope": {"name": "weft-waypoint"}, "spans": spans}],
        }]
    })
}

/// The same spans as OTLP's protobuf messages (ids as big-endian bytes).
fn otlp_proto(service: &str, spans: &[Span]) -> ExportTraceServiceRequest {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
        }),
    };
    let spans = spans
        .iter()
        .map(|s| {
            let start = s
                .start
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            otlp::Span {
                trace_id: s.context.trace_id.to_be_bytes().to_vec(),
                span_id: s.context.span_id.to_be_bytes().to_vec(),
                trace_state: String::new(),
                parent_span_id: s
                    .parent
                    .map(|p| p.to_be_bytes().to_vec())
                    .unwrap_or_default(),
                name: s.name.clone(),
                kind: match s.kind {
                    Kind::Server => otlp::span::SpanKind::Server,
                    Kind::Client => otlp::span::SpanKind::Client,
                } as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + s.duration.as_nanos() as u64,
                attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                status: Some(otlp::Status {
                    message: String::new(),
                    code: if s.error {
                        otlp::status::StatusCode::Error
                    } else {
                        otlp::status::StatusCode::Ok
                    } as i32,
                }),
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft-waypoint".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::SpanContext;

    fn span(parent: Option<u64>) -> Span {
        Span {
            context: SpanContext {
                trace_id: 0xabc,
                span_id: 0x12,
                sampled: true,
            },
            parent,
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: Kind::Client,
            start: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123),
            duration: Duration::from_micros(2_500),
            error: true,
            attributes: vec![("http.method", "GET".into())],
        }
    }

    #[test]
    fn zipkin_and_otlp_encodings_carry_ids_times_parents_and_tags() {
        let z = zipkin("reviews-waypoint.default", &[span(Some(0x7))]);
        assert_eq!(z[0]["traceId"], "00000000000000000000000000000abc");
        assert_eq!(z[0]["id"], "0000000000000012");
        assert_eq!(z[0]["parentId"], "0000000000000007");
        assert_eq!(z[0]["kind"], "CLIENT");
        assert_eq!(z[0]["timestamp"], 1_700_000_000_000_123u64);
        assert_eq!(z[0]["duration"], 2_500);
        assert_eq!(z[0]["tags"]["error"], "true");
        assert_eq!(
            z[0]["localEndpoint"]["serviceName"],
            "reviews-waypoint.default"
        );
        let root = zipkin("w", &[span(None)]);
        assert!(root[0].get("parentId").is_none());

        let o = otlp("w", &[span(Some(0x7))]);
        let s = &o["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["parentSpanId"], "0000000000000007");
        assert_eq!(s["kind"], 3);
        assert_eq!(s["startTimeUnixNano"], "1700000000000123000");
        assert_eq!(s["endTimeUnixNano"], "1700000000002623000");
        assert_eq!(s["status"]["code"], 2);
    }

    #[test]
    fn collectors_are_named_with_their_encoding() {
        assert_eq!(
            Collector::parse("zipkin:zipkin.istio-system:9411"),
            Ok(Collector::Zipkin {
                authority: "zipkin.istio-system:9411".into()
            })
        );
        assert!(Collector::parse("otlp-http:collector:4318").is_ok());
        assert!(Collector::parse("otlp-grpc:collector:4317").is_ok());
        assert!(Collector::parse("jaeger:agent:6831").is_err());
        assert!(Collector::parse("zipkin:nohost").is_err());
    }
}
