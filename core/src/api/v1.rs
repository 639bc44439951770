//! The generated gRPC API (`proto/weft/v1/mesh.proto`): messages, the config-stream and
//! certificate services and their clients.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("weft.v1");
