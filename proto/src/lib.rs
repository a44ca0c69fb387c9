//! cadre's wire contract: protobuf messages and gRPC services of package `cadre.v1`.
//!
//! The `.proto` sources live in `proto/cadre/v1/`; they are compiled at build time with protox.

/// Package `cadre.v1`.
pub mod v1 {
    tonic::include_proto!("cadre.v1");
}
