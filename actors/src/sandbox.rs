//! Sandboxes: where untrusted work runs. The [`SandboxProvider`] trait is implemented by
//! `cadre-sandbox` (gVisor via `runsc`, plain processes); a [`Sandbox`] runs `cadre worker`,
//! driven over the worker protocol (`cadre.v1.Worker`). A [`SandboxHost`] places the work of
//! supervised actors (MCP servers, conversations' workspaces) in sandboxes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use cadre_proto::v1::worker_client::WorkerClient;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::process::ProcessExit;

/// What a sandbox is given.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// Unique among the provider's live sandboxes.
    pub id: String,
    /// Sandboxes are never shared between tenants; recorded for placement and listings.
    pub tenant: String,
    /// The host directory mounted read-write as the worker's workspace.
    pub workspace: PathBuf,
    /// Whether processes may open network connections.
    pub egress: bool,
    /// Memory limit for everything in the sandbox.
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Most processes and threads in the sandbox.
    pub pids: Option<u64>,
    /// The size of the workspace's filesystem, if it is bounded (the pool mounts it; the
    /// worker names it in errors).
    pub workspace_quota: Option<u64>,
}

/// Why a sandbox could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No sandbox can be had (the provider is not set up, or the pool is shut down).
    #[error("{0}")]
    Unavailable(String),
    /// The spec was refused (say, an id with characters the provider does not allow).
    #[error("invalid sandbox spec: {0}")]
    Invalid(String),
    /// The sandbox (or a hosted actor's process) could not be started.
    #[error("cannot start sandbox `{id}`: {why}")]
    Start {
        /// The sandbox's id (or the hosted actor's).
        id: String,
        /// What went wrong.
        why: String,
    },
    /// The provider cannot do this (say, checkpoint a sandbox).
    #[error("{0}")]
    Unsupported(String),
    /// Checkpointing the sandbox failed.
    #[error("cannot checkpoint sandbox `{id}`: {why}")]
    Checkpoint {
        /// The sandbox's id.
        id: String,
        /// What went wrong.
        why: String,
    },
}

/// A boxed future, so providers can be used as trait objects.
pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<Sandbox, SandboxError>> + Send + 'a>>;

/// A boxed future of a checkpoint.
pub type CheckpointFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SandboxError>> + Send + 'a>>;

/// Starts sandboxes of one kind.
pub trait SandboxProvider: Send + Sync {
    /// `gvisor`, `process`, …
    fn name(&self) -> &'static str;
    /// Whether its sandboxes isolate anything from the host.
    fn isolated(&self) -> bool;
    /// Starts a sandbox running `cadre worker` and connects to it.
    fn start(&self, spec: SandboxSpec) -> StartFuture<'_>;

    /// Told once, when a pool starts, which sandboxes of an earlier run it kept for an owner
    /// (sandbox id → the actor it is kept for; they are started again under their ids). A
    /// provider whose sandboxes outlive the node (worker pods) adopts those and removes the
    /// rest of what the earlier run left.
    fn adopt(&self, kept: &std::collections::BTreeMap<String, String>) {
        let _ = kept;
    }

    /// Told when warm sandbox `id` (started for no tenant) is handed to `tenant`, for a
    /// provider that records tenants outside the node (a worker pod's label).
    fn leased(&self, id: &str, tenant: &str) {
        let _ = (id, tenant);
    }

    /// Why this provider cannot checkpoint sandboxes here, or `None` if it can.
    fn cannot_checkpoint(&self) -> Option<String> {
        Some(format!(
            "the `{}` provider cannot checkpoint sandboxes",
            self.name()
        ))
    }

    /// Saves a running sandbox (memory, processes, its worker) to the directory `image`; the
    /// sandbox is stopped, and the caller removes it ([`Sandbox::kill`]) before restoring the
    /// image under its id. Its worker is asked to Suspend first, so that a restored worker
    /// serves a new connection.
    fn checkpoint<'a>(&'a self, sandbox: &'a mut Sandbox, image: &'a Path) -> CheckpointFuture<'a> {
        let why = self.cannot_checkpoint().unwrap_or_default();
        let _ = (sandbox, image);
        Box::pin(async move { Err(SandboxError::Unsupported(why)) })
    }

    /// Starts a sandbox from a checkpoint `image`, with the spec it was started with; its
    /// processes continue where they were.
    fn restore(&self, spec: SandboxSpec, image: PathBuf) -> StartFuture<'_> {
        let why = self.cannot_checkpoint().unwrap_or_default();
        let _ = (spec, image);
        Box::pin(async move { Err(SandboxError::Unsupported(why)) })
    }
}

/// A logical actor to place in a sandbox (placement's unit).
#[derive(Debug, Clone, PartialEq)]
pub struct HostedActor {
    /// Its id, e.g. the child's path.
    pub id: String,
    /// Whose sandbox it may share: actors of different tenants never share one.
    pub tenant: String,
    /// A sandbox of its own.
    pub exclusive: bool,
    /// Network access (opt-in; implies a sandbox of its own).
    pub egress: bool,
}

/// A process to run in a sandbox on behalf of a supervised actor.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedSpec {
    /// The logical actor the process belongs to.
    pub actor: HostedActor,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Environment variables set for the process.
    pub env: Vec<(String, String)>,
    /// Where its stderr lines go besides the node's log (its stdout is the caller's).
    pub log: Option<crate::tree::ActorLog>,
}

/// A placed actor held in its slot, with its sandbox's worker. Dropping it lets the slot go.
pub struct PinnedWorker {
    /// The id of the sandbox the actor is placed in.
    pub sandbox: String,
    /// A client of that sandbox's worker.
    pub worker: WorkerClient<Channel>,
    /// Keeps the actor pinned in its slot; dropping it lets the slot go.
    pub hold: Box<dyn Send + Sync>,
}

/// A boxed future of a pinned actor.
pub type PinFuture<'a> =
    Pin<Box<dyn Future<Output = Result<PinnedWorker, SandboxError>> + Send + 'a>>;

/// How a hosted process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostedExit {
    /// The process exited with a code or was killed by a signal.
    Exited(ProcessExit),
    /// Its sandbox or the connection to it went away.
    Lost(String),
}

/// A process running in a sandbox. Dropping it kills the process and lets its slot go.
pub struct HostedProcess {
    /// The id of the sandbox it runs in.
    pub sandbox: String,
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// The process's stdin.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// The process's stdout.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// Becomes `Some` once, when the process ends or is lost.
    pub exit: watch::Receiver<Option<HostedExit>>,
    /// Signals for its process group.
    pub signals: mpsc::UnboundedSender<i32>,
    /// Keeps the process's call and its slot alive.
    pub hold: Box<dyn Send + Sync>,
}

/// A boxed future of a hosted process.
pub type HostFuture<'a> =
    Pin<Box<dyn Future<Output = Result<HostedProcess, SandboxError>> + Send + 'a>>;

/// Places the work of supervised actors in sandboxes (implemented by `cadre-sandbox` on the
/// node's placement).
pub trait SandboxHost: Send + Sync {
    /// Activates `actor` in a sandbox of its tenant (or of its own) and holds it there.
    fn pin(&self, actor: HostedActor) -> PinFuture<'_>;
    /// Places `spec.actor` and starts its process there.
    fn spawn(&self, spec: HostedSpec) -> HostFuture<'_>;
    /// Removes `actor` for good: its own sandbox stops and its workspace is deleted (nothing
    /// happens if it has none). A conversation's workspace goes this way when the conversation
    /// is deleted, and no other way.
    fn remove(&self, actor: &HostedActor);
    /// How sandbox `sandbox` ended, if it ended by itself (`killed: memory limit 512 MiB`):
    /// for a caller whose call to its worker broke. Waits a little for the end to be noticed.
    fn end_of<'a>(
        &'a self,
        sandbox: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>>;
}

impl HostedExit {
    /// The end as an actor exit reason (a lost sandbox is an error).
    pub fn reason(&self) -> crate::ExitReason {
        match self {
            HostedExit::Exited(exit) => exit.reason(),
            HostedExit::Lost(why) => crate::ExitReason::Error(format!("sandbox lost: {why}")),
        }
    }
}

/// What keeps a sandbox alive, as its provider holds it: a host process of this node for the
/// `gvisor` and `process` providers (`cadre_sandbox::LocalSandbox`); something else (a pod) for
/// a provider that runs sandboxes elsewhere. Dropping it tears the sandbox down.
pub trait SandboxHold: Send {
    /// The pid of the host process that holds the sandbox, where there is one on this node.
    fn pid(&self) -> Option<u32>;
    /// Waits until the sandbox ends by itself (its worker exits or it is killed); says how.
    fn ended(&mut self) -> Pin<Box<dyn Future<Output = SandboxEnded> + Send + '_>>;
    /// Kills everything in the sandbox and removes what the provider left of it.
    fn kill(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// How a sandbox ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEnded {
    /// Whether what held it exited cleanly (a worker that ended its input, not a kill).
    pub success: bool,
    /// How, in words (`exit status: 1`, `signal: 9 (SIGKILL)`, a pod's reason).
    pub status: String,
}

/// A running sandbox and its worker connection. Dropping it tears the sandbox down.
pub struct Sandbox {
    /// What it was started with.
    pub spec: SandboxSpec,
    /// `gvisor`, `process`, …
    pub provider: &'static str,
    worker: WorkerClient<Channel>,
    hold: Box<dyn SandboxHold>,
}

impl Sandbox {
    /// A sandbox reached through `worker`, kept alive by `hold`.
    pub fn new(
        spec: SandboxSpec,
        provider: &'static str,
        worker: WorkerClient<Channel>,
        hold: Box<dyn SandboxHold>,
    ) -> Self {
        Self {
            spec,
            provider,
            worker,
            hold,
        }
    }

    /// A client of the sandbox's worker (cheap to clone; all share one connection).
    pub fn worker(&self) -> WorkerClient<Channel> {
        self.worker.clone()
    }

    /// Pid of the host process that holds the sandbox, where there is one on this node.
    pub fn pid(&self) -> Option<u32> {
        self.hold.pid()
    }

    /// Waits until the sandbox ends by itself (its worker exits or it is killed); says how.
    pub async fn ended(&mut self) -> SandboxEnded {
        self.hold.ended().await
    }

    /// Kills everything in the sandbox and removes it.
    pub async fn kill(self) {
        self.hold.kill().await
    }
}
