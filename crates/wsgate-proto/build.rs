//! Generates the gRPC code from `proto/` with a vendored `protoc`, so building wsgate
//! needs no system protobuf compiler, and the proto3 JSON mapping of every `wsgate.v1`
//! message (serde impls, for the HTTP API) from the same descriptors.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protos = [
        root.join("wsgate/v1/gateway.proto"),
        root.join("wsgate/v1/envelope.proto"),
    ];
    // The protos live outside this package, where cargo does not look for changes by
    // itself: without these lines an edited .proto would not regenerate the code.
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("wsgate_descriptor.bin");

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(config, &protos, &[root])?;

    // Output names are the proto field names (`user_id`, `since_offset`); input accepts
    // those and the lowerCamelCase ones, as proto3 JSON requires. Fields at their default
    // value are written too (`"online": false`, `"targets": "0"`), so a caller never has
    // to know proto3's omission rule. Unknown fields are rejected: a misspelt
    // `idempotency_key` must fail, not be dropped.
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".wsgate.v1"])?;
    Ok(())
}
