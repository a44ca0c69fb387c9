//! cadre's wire contract: protobuf messages and gRPC services of package `cadre.v1`.
//!
//! The `.proto` sources live in `proto/cadre/v1/`; they are compiled at build time with protox.

/// The encoded `FileDescriptorSet` of every cadre proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cadre_descriptor.bin"));

/// Package `cadre.v1`.
pub mod v1 {
    tonic::include_proto!("cadre.v1");
}
