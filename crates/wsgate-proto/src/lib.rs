//! wsgate-proto: the code generated from `proto/wsgate/v1/gateway.proto` (the gRPC
//! control plane contract) and `envelope.proto` (what pods exchange over Redis), and the
//! file descriptor set for server reflection.
//! Nothing hand-written lives here.

#![allow(missing_docs, clippy::all)]

/// Package `wsgate.v1`.
pub mod pb {
    tonic::include_proto!("wsgate.v1");
}

/// Encoded `FileDescriptorSet` of the package, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wsgate_descriptor");
