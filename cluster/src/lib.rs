//! A cadre node: the gRPC API server around the runtime core, and its store backends.
//!
//! In a cluster: membership over ractor_cluster (`membership`), the event log of a node
//! without it (`remote_log`), and on a shared store the controller lease (`leased_log`); see
//! `docs/architecture.md`.

#![warn(unreachable_pub)]

pub mod activations;
pub mod console;
pub mod grpc;
pub mod guardian;
pub mod leased_log;
pub mod member_trees;
pub mod membership;
pub mod node;
pub mod peers;
pub mod probes;
pub mod remote_log;
pub mod store;
pub mod takeover;
pub mod telemetry;

pub use node::{AGENTS, CONTROLLER, DEFAULT_LISTEN, Node, NodeError, NodeExit, NodeOptions, ROOT};
