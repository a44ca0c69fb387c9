//! cadre's runtime core.
//!
//! - [`access`]: the roles of API tokens and what each may do.
//! - [`activation`]: logical actors' homes in a cluster, kept in the event log.
//! - [`supervisor`]: Erlang/OTP-exact supervision trees on ractor.
//! - [`process`]: supervised OS processes (actor kind `process`).
//! - [`tree`]: the live view of a node's trees and its lifecycle events.
//! - [`config`]: the `cadre.yaml` schema, validated with `FILE:LINE:COL` errors.
//! - [`mcp`]: MCP servers as supervised actors (kind `mcp`), in sandboxes.
//! - [`skills`]: skills as supervised actors (kind `skill`).
//! - [`builtin`]: the built-in tools (a conversation's workspace, skills).
//! - [`agent`]: model agents (kind `agent`) and their durable exec loop.
//! - [`model`]: model clients (OpenAI-compatible Chat Completions).
//! - [`tools`]: the tool registry, with argument checks against each tool's schema.

#![warn(unreachable_pub)]

pub mod access;
pub mod activation;
pub mod agent;
pub mod builtin;
pub mod child;
pub mod config;
pub mod controller;
pub mod event_log;
pub mod exec;
pub mod mcp;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod os_process;
pub mod placement;
pub mod process;
pub mod process_ledger;
pub mod sandbox;
pub mod services;
pub mod skills;
pub mod spawned;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod tools;
pub mod traces;
pub mod tree;

pub use child::{ChildSpec, ChildStart, StartContext, StartError, StartFuture, Started};
pub use services::Services;
pub use spec::{
    ActorKind, AutoShutdown, Backoff, ChildCounts, ChildExit, ChildInfo, ChildStatus, ChildType,
    ExitReason, Hosted, Restart, Shutdown, Strategy, SupervisorError, SupervisorFlags,
};
pub use supervisor::{Supervisor, SupervisorRef, supervisor_child};
pub use tree::{Change, LifecycleEvent, Tree, TreeNode};
