//! A cadre node: the gRPC API server around the runtime core, and its store backends.
//!
//! Membership and controller leadership arrive here too (see `docs/architecture.md`).

#![warn(unreachable_pub)]

pub mod grpc;
pub mod guardian;
pub mod node;
pub mod store;

pub use node::{AGENTS, CONTROLLER, DEFAULT_LISTEN, Node, NodeError, NodeExit, NodeOptions, ROOT};
