//! A cadre node: the gRPC API server around the runtime core.
//!
//! Store backends, membership and controller leadership arrive here too (see ARCHITECTURE.md).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod conversations;
pub mod node;
pub mod store;
pub mod tools;

pub use node::{AGENTS, CONTROLLER, DEFAULT_LISTEN, Node, NodeError, NodeExit, NodeOptions, ROOT};
