//! cadre's wire contract: protobuf messages and gRPC services of package `cadre.v1`.
//!
//! The `.proto` sources live in `proto/cadre/v1/`; they are compiled at build time with protox.

/// The encoded `FileDescriptorSet` of every cadre proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cadre_descriptor.bin"));

pub mod json;

/// Package `cadre.v1`.
pub mod v1 {
    tonic::include_proto!("cadre.v1");
}

impl v1::ExecState {
    /// Whether an exec in this state is finished (completed, failed or cancelled).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether the raw `state` of an `ExecStateChanged` is a finished one (an unknown value is not).
    pub fn is_terminal_value(state: i32) -> bool {
        Self::try_from(state).is_ok_and(Self::is_terminal)
    }
}
