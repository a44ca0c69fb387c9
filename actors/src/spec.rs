//! The vocabulary of Erlang/OTP's `supervisor`: strategies, restart types, shutdowns, flags,
//! exit reasons and child statuses (plain data; child specifications are in [`crate::child`]).

use std::fmt;
use std::time::Duration;

/// How a supervisor reacts when one child must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Terminate every other child (reverse start order), then restart all of them.
    OneForAll,
    /// Terminate the children started after the one that exited, then restart it and them.
    RestForOne,
}

/// When a child is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (anything but `normal` or `shutdown`).
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

/// How a supervisor terminates a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Kill at once, no graceful stop.
    BrutalKill,
    /// Ask the child to stop, and kill it if it has not stopped after this long.
    Timeout(Duration),
    /// Ask the child to stop and wait as long as it takes (the default for supervisors).
    Infinity,
}

/// Whether a child is a worker or a supervisor (decides the default shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildType {
    Worker,
    Supervisor,
}

/// When a supervisor shuts itself down because significant children exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AutoShutdown {
    #[default]
    Never,
    /// As soon as any significant child exits by itself.
    AnySignificant,
    /// Once every significant child has exited by itself.
    AllSignificant,
}

/// What kind of actor a node in the tree is; shown by `cadre tree`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorKind {
    Supervisor,
    Agent,
    Tool,
    Skill,
    Mcp,
    Process,
    System,
}

/// Exponential restart backoff with jitter: an extension OTP lacks, off by default.
///
/// The delay before the n-th restart inside the current intensity window is
/// `min(max, initial * 2^(n-1))`, scaled by a random factor in `[1 - jitter, 1 + jitter]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

/// A supervisor's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorFlags {
    pub strategy: Strategy,
    /// Most restarts allowed inside `period`; one more and the supervisor gives up.
    pub intensity: u32,
    pub period: Duration,
    pub auto_shutdown: AutoShutdown,
    /// Refuse `start_child` past this many children (like Elixir's DynamicSupervisor).
    pub max_children: Option<usize>,
    pub backoff: Option<Backoff>,
    /// Children that end and are not restarted are removed, as in OTP's `simple_one_for_one`
    /// and Elixir's DynamicSupervisor, so per-request children do not pile up.
    pub dynamic: bool,
}

/// Why an actor exited. `Normal` and `Shutdown` are normal; the rest are abnormal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    Normal,
    Shutdown,
    Killed,
    Error(String),
}

/// A child instance whose process runs in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosted {
    /// The sandbox, e.g. `sbx-1a2b3c4d-00000002`.
    pub sandbox: String,
    /// The process's pid inside the sandbox.
    pub pid: Option<u32>,
}

/// An error from a supervisor call (`start_child`, `terminate_child`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("no child `{0}`")]
    NotFound(String),
    #[error("child `{0}` is already running")]
    Running(String),
    #[error("child `{0}` is already present (terminated); restart or delete it")]
    AlreadyPresent(String),
    #[error("child `{0}` is restarting")]
    Restarting(String),
    #[error("supervisor is at max_children ({0})")]
    MaxChildren(usize),
    #[error("invalid child spec `{id}`: {reason}")]
    InvalidSpec { id: String, reason: String },
    #[error("child `{id}` failed to start: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("supervisor is not running: {0}")]
    Unavailable(String),
}

/// A child as `which_children` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    pub id: String,
    pub kind: ActorKind,
    pub child_type: ChildType,
    pub status: ChildStatus,
    pub restarts: u32,
    pub pid: Option<u32>,
}

/// The state of a child slot in its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildStatus {
    Running,
    /// Waiting to be started again (backoff, or a failed start that will be retried).
    Restarting,
    /// Terminated; the spec is kept until `delete_child`.
    Stopped,
}

/// `count_children`: how many specs, running children, supervisors and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildCounts {
    pub specs: usize,
    pub active: usize,
    pub supervisors: usize,
    pub workers: usize,
}

impl Default for SupervisorFlags {
    fn default() -> Self {
        Self {
            strategy: Strategy::OneForOne,
            intensity: 1,
            period: Duration::from_secs(5),
            auto_shutdown: AutoShutdown::Never,
            max_children: None,
            backoff: None,
            dynamic: false,
        }
    }
}

impl ExitReason {
    /// `normal` and `shutdown` are normal exits; everything else is a failure.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// An actor that fails with this error exits with exactly this reason (e.g. `Killed`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ChildExit(pub ExitReason);

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        }
    }
}

impl ActorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ActorKind::Supervisor => "supervisor",
            ActorKind::Agent => "agent",
            ActorKind::Tool => "tool",
            ActorKind::Skill => "skill",
            ActorKind::Mcp => "mcp",
            ActorKind::Process => "process",
            ActorKind::System => "system",
        }
    }
}

impl ChildStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChildStatus::Running => "running",
            ChildStatus::Restarting => "restarting",
            ChildStatus::Stopped => "stopped",
        }
    }
}
