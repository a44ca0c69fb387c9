//! Sandboxes: where untrusted work runs. The [`SandboxProvider`] trait is implemented by
//! `cadre-sandbox` (gVisor via `runsc`, plain processes); a [`Sandbox`] runs `cadre worker`,
//! driven over the worker protocol (`cadre.v1.Worker`).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use cadre_proto::v1::worker_client::WorkerClient;
use tokio::process::Child;
use tonic::transport::Channel;

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
}

/// Why a sandbox could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid sandbox spec: {0}")]
    Invalid(String),
    #[error("cannot start sandbox `{id}`: {why}")]
    Start { id: String, why: String },
}

/// A boxed future, so providers can be used as trait objects.
pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<Sandbox, SandboxError>> + Send + 'a>>;

/// Starts sandboxes of one kind.
pub trait SandboxProvider: Send + Sync {
    /// `gvisor`, `process`, …
    fn name(&self) -> &'static str;
    /// Whether its sandboxes isolate anything from the host.
    fn isolated(&self) -> bool;
    /// Starts a sandbox running `cadre worker` and connects to it.
    fn start(&self, spec: SandboxSpec) -> StartFuture<'_>;
}

/// A running sandbox and its worker connection. Dropping it tears the sandbox down.
pub struct Sandbox {
    pub spec: SandboxSpec,
    /// `gvisor`, `process`, …
    pub provider: &'static str,
    worker: WorkerClient<Channel>,
    /// The host process that holds the sandbox (`runsc run`, or the worker itself).
    child: Child,
    /// Removes what the provider left behind (for gVisor: `runsc delete --force`).
    teardown: Option<Box<dyn FnOnce() + Send>>,
}

impl Sandbox {
    /// A sandbox held by `child` (the host process that keeps it alive), reached through
    /// `worker`; `teardown` removes what the provider left behind once it is gone.
    pub fn new(
        spec: SandboxSpec,
        provider: &'static str,
        worker: WorkerClient<Channel>,
        child: Child,
        teardown: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        Self {
            spec,
            provider,
            worker,
            child,
            teardown,
        }
    }

    /// A client of the sandbox's worker (cheap to clone; all share one connection).
    pub fn worker(&self) -> WorkerClient<Channel> {
        self.worker.clone()
    }

    /// Pid of the host process that holds the sandbox.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the sandbox ends by itself (its worker exits or it is killed).
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Kills everything in the sandbox and removes it.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(teardown) = self.teardown.take() {
            let _ = tokio::task::spawn_blocking(teardown).await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(teardown) = self.teardown.take() {
            teardown();
        }
    }
}
