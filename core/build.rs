//! Generates the gRPC API (`proto/weft/v1/mesh.proto`) and OTLP trace export
//! (`proto/otlp/trace_service.proto`) with tonic and prost.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/weft/v1/mesh.proto");
    println!("cargo:rerun-if-changed=proto/otlp/trace_service.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &["proto/weft/v1/mesh.proto", "proto/otlp/trace_service.proto"],
            &["proto"],
        )
        .map_err(|e| {
            format!("{e} (is protoc installed? ./scripts/deps.sh installs protobuf-compiler)")
                .into()
        })
}
