//! OTLP trace export over gRPC (`opentelemetry.proto.collector.trace.v1.TraceService`),
//! generated from `proto/otlp/trace_service.proto`: the client waypoints export spans with,
//! and the server the tests' collector answers with.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
