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
    /// Any actor that is not a supervisor; default shutdown is a 5000 ms timeout.
    Worker,
    /// A supervisor; default shutdown is `infinity`.
    Supervisor,
}

/// When a supervisor shuts itself down because significant children exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AutoShutdown {
    /// Never (OTP's default); significant children are then not allowed.
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
    /// A supervisor.
    Supervisor,
    /// An agent: one holding an agent's registration, or an exec's agent loop.
    Agent,
    /// An actor that serves tools.
    Tool,
    /// A skill loaded from a folder with a `SKILL.md`.
    Skill,
    /// An MCP server whose tools are in the tool registry.
    Mcp,
    /// A supervised OS process.
    Process,
    /// A node service, such as the controller.
    System,
}

/// Exponential restart backoff with jitter: an extension OTP lacks, off by default.
///
/// The delay before the n-th restart inside the current intensity window is
/// `min(max, initial * 2^(n-1))`, scaled by a random factor in `[1 - jitter, 1 + jitter]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart in the window.
    pub initial: Duration,
    /// Upper bound of the doubled delay (before jitter).
    pub max: Duration,
    /// Random spread, as a fraction of the delay (clamped to `[0, 1]`).
    pub jitter: f64,
}

/// A supervisor's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorFlags {
    /// Which children are restarted when one must be.
    pub strategy: Strategy,
    /// Most restarts allowed inside `period`; one more and the supervisor gives up.
    pub intensity: u32,
    /// Length of the sliding window in which restarts are counted against `intensity`.
    pub period: Duration,
    /// Whether exits of significant children shut the supervisor down.
    pub auto_shutdown: AutoShutdown,
    /// Refuse `start_child` past this many children (like Elixir's DynamicSupervisor).
    pub max_children: Option<usize>,
    /// Delay restarts exponentially; `None` restarts at once, as OTP does.
    pub backoff: Option<Backoff>,
    /// Children that end and are not restarted are removed, as in OTP's `simple_one_for_one`
    /// and Elixir's DynamicSupervisor, so per-request children do not pile up.
    pub dynamic: bool,
}

/// Why an actor exited. `Normal` and `Shutdown` are normal; the rest are abnormal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Finished its work (`normal`).
    Normal,
    /// Stopped on request (`shutdown`), e.g. by its supervisor or by SIGTERM.
    Shutdown,
    /// Killed without a graceful stop (`killed`), e.g. a brutal kill or SIGKILL.
    Killed,
    /// Any other exit, with its description; always abnormal.
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
    /// No child has this id.
    #[error("no child `{0}`")]
    NotFound(String),
    /// The child is running (for `start_child`: present and not terminated).
    #[error("child `{0}` is already running")]
    Running(String),
    /// `start_child` found a terminated child with this id; restart or delete it first.
    #[error("child `{0}` is already present (terminated); restart or delete it")]
    AlreadyPresent(String),
    /// The child is waiting to be started again (backoff or a retried start).
    #[error("child `{0}` is restarting")]
    Restarting(String),
    /// `start_child` was refused: the supervisor already has `max_children` children.
    #[error("supervisor is at max_children ({0})")]
    MaxChildren(usize),
    /// The child spec breaks a rule of [`ChildSpec::validate`](crate::child::ChildSpec::validate).
    #[error("invalid child spec `{id}`: {reason}")]
    InvalidSpec {
        /// The child's id.
        id: String,
        /// The rule it breaks.
        reason: String,
    },
    /// The child's start function failed.
    #[error("child `{id}` failed to start: {reason}")]
    StartFailed {
        /// The child's id.
        id: String,
        /// The start error.
        reason: String,
    },
    /// The call got no reply: the supervisor has stopped or is stopping.
    #[error("supervisor is not running: {0}")]
    Unavailable(String),
}

/// A child as `which_children` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// Its id among its siblings.
    pub id: String,
    /// What kind of actor it is.
    pub kind: ActorKind,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// Running, restarting or stopped.
    pub status: ChildStatus,
    /// How many times it has been restarted (instances started, minus one).
    pub restarts: u32,
    /// The OS pid of its process (local or in a sandbox), if it has one.
    pub pid: Option<u32>,
}

/// The state of a child slot in its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildStatus {
    /// An instance is running.
    Running,
    /// Waiting to be started again (backoff, or a failed start that will be retried).
    Restarting,
    /// Terminated; the spec is kept until `delete_child`.
    Stopped,
}

/// `count_children`: how many specs, running children, supervisors and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildCounts {
    /// Child specs the supervisor holds, running or not.
    pub specs: usize,
    /// Children that are running.
    pub active: usize,
    /// Children of type supervisor, running or not.
    pub supervisors: usize,
    /// Children of type worker, running or not.
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

impl Restart {
    /// The config's name: `permanent`, `transient` or `temporary`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Restart::Permanent => "permanent",
            Restart::Transient => "transient",
            Restart::Temporary => "temporary",
        }
    }
}

/// As the config writes it: `brutal_kill`, `infinity` or milliseconds.
impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shutdown::BrutalKill => f.write_str("brutal_kill"),
            Shutdown::Infinity => f.write_str("infinity"),
            Shutdown::Timeout(t) => write!(f, "{}", t.as_millis()),
        }
    }
}

impl Strategy {
    /// The OTP name: `one_for_one`, `one_for_all` or `rest_for_one`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        }
    }
}

impl ActorKind {
    /// The lowercase name `cadre tree` shows, e.g. `mcp`.
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
    /// `running`, `restarting` or `stopped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChildStatus::Running => "running",
            ChildStatus::Restarting => "restarting",
            ChildStatus::Stopped => "stopped",
        }
    }
}
