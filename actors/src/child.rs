//! Child specifications: how a supervisor starts (and restarts) each child, and what a start
//! reports back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorCell;

use crate::os_process::OsProcess;
use crate::spec::{
    ActorKind, AutoShutdown, ChildType, Hosted, Restart, Shutdown, SupervisorError, SupervisorFlags,
};
use crate::tree::Tree;

/// A running child instance, as its start function reports it.
pub struct Started {
    /// The instance's actor; the supervisor watches it for exits.
    pub cell: ActorCell,
    /// The OS process behind the actor, if any: the supervisor makes sure it is dead and
    /// reaped before it counts the child as terminated.
    pub os_process: Option<OsProcess>,
    /// Where the actor's work runs when it is hosted in a sandbox (shown by `cadre tree`).
    pub hosted: Option<Hosted>,
}

impl Started {
    /// An instance that is just an actor (no OS process, not hosted).
    pub fn actor(cell: ActorCell) -> Self {
        Self {
            cell,
            os_process: None,
            hosted: None,
        }
    }
}

/// What a start function is given.
#[derive(Clone)]
pub struct StartContext {
    /// The supervisor to link the new actor to.
    pub supervisor: ActorCell,
    /// The child's path, e.g. `root/tools/time`.
    pub path: String,
    /// The node's live tree (a supervisor child records its own children in it).
    pub tree: Tree,
}

/// Why a child failed to start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// A boxed start future.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<Started, StartError>> + Send>>;

/// Starts one instance of a child; called again on every restart.
pub trait ChildStart: Send + Sync + 'static {
    /// Starts one instance, linked to `ctx.supervisor`.
    fn start(&self, ctx: StartContext) -> StartFuture;
}

impl<F> ChildStart for F
where
    F: Fn(StartContext) -> StartFuture + Send + Sync + 'static,
{
    fn start(&self, ctx: StartContext) -> StartFuture {
        self(ctx)
    }
}

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among its siblings (not a global name).
    pub id: String,
    /// What kind of actor it is (shown by `cadre tree`).
    pub kind: ActorKind,
    /// Starts an instance; called on the first start and on every restart.
    pub start: Arc<dyn ChildStart>,
    /// When it is restarted after it exits.
    pub restart: Restart,
    /// How the supervisor terminates it.
    pub shutdown: Shutdown,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// A significant child's own exit can shut its supervisor down (see [`AutoShutdown`]).
    pub significant: bool,
}

impl ChildSpec {
    /// A permanent worker with a 5000 ms shutdown, as OTP defaults a child spec.
    pub fn worker(id: impl Into<String>, kind: ActorKind, start: impl ChildStart) -> Self {
        Self {
            id: id.into(),
            kind,
            start: Arc::new(start),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_millis(5000)),
            child_type: ChildType::Worker,
            significant: false,
        }
    }

    /// Sets when the child is restarted.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets how the child is terminated.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Sets whether the child is significant for its supervisor's `auto_shutdown`.
    pub fn significant(mut self, significant: bool) -> Self {
        self.significant = significant;
        self
    }

    /// Checks the rules OTP's `check_childspec` enforces against the supervisor's flags.
    pub fn validate(&self, flags: &SupervisorFlags) -> Result<(), SupervisorError> {
        let invalid = |reason: &str| SupervisorError::InvalidSpec {
            id: self.id.clone(),
            reason: reason.to_string(),
        };
        if self.id.is_empty() {
            return Err(invalid("id must not be empty"));
        }
        if self.id.contains('/') {
            return Err(invalid("id must not contain `/`"));
        }
        if self.significant && self.restart == Restart::Permanent {
            return Err(invalid(
                "a significant child must be transient or temporary",
            ));
        }
        if self.significant && flags.auto_shutdown == AutoShutdown::Never {
            return Err(invalid(
                "significant children need auto_shutdown any_significant or all_significant",
            ));
        }
        Ok(())
    }
}
