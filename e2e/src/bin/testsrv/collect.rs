//! `weft-testsrv collect`: trace collectors for the tracing tests. Over HTTP each POSTed body
//! (Zipkin or OTLP JSON) is printed on one line after its path; over gRPC (OTLP's
//! TraceService) each export is printed as the OTLP/HTTP JSON of its spans.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_core::api::otlp::trace_service_server::{TraceService, TraceServiceServer};
use weft_core::api::otlp::{ExportTraceServiceRequest, ExportTraceServiceResponse, any_value};

/// The gRPC collector's service.
pub(crate) fn grpc() -> TraceServiceServer<GrpcCollector> {
    TraceServiceServer::new(GrpcCollector)
}

/// OTLP's gRPC TraceService: each export printed as the OTLP/HTTP JSON of its spans.
pub(crate) struct GrpcCollector;

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let spans: Vec<serde_json::Value> = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter())
            .map(|s| {
                let attributes: Vec<serde_json::Value> = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(v)) => v.clone(),
                            _ => String::new(),
                        };
                        serde_json::json!({"key": kv.key, "value": {"stringValue": value}})
                    })
                    .collect();
                serde_json::json!({
                    "traceId": hex(&s.trace_id),
                    "spanId": hex(&s.span_id),
                    "parentSpanId": hex(&s.parent_span_id),
                    "name": s.name,
                    "kind": s.kind,
                    "attributes": attributes,
                })
            })
            .collect();
        println!(
            "/v1/traces {}",
            serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
        );
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The HTTP collector: each POSTed body printed on one line after its path; 202.
pub(crate) async fn http(listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                if let Ok(body) = body {
                    let text = String::from_utf8_lossy(&body).replace('\n', " ");
                    println!("{path} {text}");
                }
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::ACCEPTED;
                Ok::<_, Infallible>(response)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
