//! Model agents (kind `agent`) and their durable exec loop.
//!
//! An `agent` child in the tree registers its definition under its id (the `agent_id` of an
//! exec). Each exec then runs [`ExecRun::run`]: a tool-calling loop against the agent's model in
//! which every effect is journaled before its result is used. The loop's state is rebuilt from
//! the conversation's log each time it starts, so after a crash it goes on where the log ends:
//! a model call or tool call with a result in the log is read back, never made again; a tool
//! call with `ToolCalled` but no `ToolReturned` is made again with the same idempotency key.

mod child;
mod journal;
mod model;
mod process;
mod registry;
mod remote;
mod run;
mod tool_calls;

use std::time::Duration;

pub use child::agent_child;
pub use registry::AgentRegistry;
pub use run::{ExecEnd, ExecRun, RunError};
pub use tool_calls::matches_any;

/// An `agent` child's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// A model id of the node's `models:` (empty for a remote agent).
    pub model: String,
    /// A remote agent's `AgentService` address (`http://HOST:PORT`) instead of a model.
    pub remote: Option<String>,
    /// A process agent's command (a harness run in the conversation's sandbox, speaking JSON
    /// lines over stdio) instead of a model.
    pub command: Option<Vec<String>>,
    /// The system message every model call starts with.
    pub system_prompt: String,
    /// The tools it may call: `ns.tool`, `ns.*` or `*`.
    pub tools: Vec<String>,
    /// Tools (same patterns) whose calls pause the exec for an approval, besides those that
    /// always need one.
    pub require_approval: Vec<String>,
    /// Model calls per exec.
    pub max_iterations: u32,
    /// Tokens (prompt + completion) the conversation may use in all; checked before each call.
    pub token_budget: Option<u64>,
    /// When a model call's prompt reaches this many tokens, the next step summarises the
    /// history first.
    pub compact_at_tokens: Option<u64>,
    /// How long one tool call may take.
    pub tool_timeout: Duration,
    /// How long one exec may take (from its input).
    pub exec_timeout: Option<Duration>,
    /// Execs this agent starts per minute on this node.
    pub execs_per_minute: Option<u32>,
    /// The same tool call with the same arguments this many times in one exec stops it.
    pub max_repeats: u32,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            model: String::new(),
            remote: None,
            command: None,
            system_prompt: String::new(),
            tools: Vec::new(),
            require_approval: Vec::new(),
            max_iterations: 20,
            token_budget: None,
            compact_at_tokens: None,
            tool_timeout: Duration::from_secs(60),
            exec_timeout: None,
            execs_per_minute: None,
            max_repeats: 3,
        }
    }
}
