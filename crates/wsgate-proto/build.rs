//! Generates the gRPC code from `proto/` with a vendored `protoc`, so building wsgate
//! needs no system protobuf compiler.

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

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("wsgate_descriptor.bin"))
        .compile_with_config(config, &protos, &[root])?;
    Ok(())
}
