//! Supervised OS processes (actor kind `process`).
//!
//! Each process runs in its own process group so that a shell and everything it started get the
//! same signals. Exit 0 is `normal` and death by SIGTERM is `shutdown` (both normal); a non-zero
//! exit or any other signal is abnormal (SIGKILL is `killed`). A graceful stop sends SIGTERM and waits; the supervisor kills at the child's
//! shutdown timeout. stdout and stderr go to the tracing log, tagged with the actor's path, and to the actor's
//! bounded buffer in the tree (`cadre actors logs`).

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::child::{ChildSpec, StartContext, StartError, StartFuture, Started};
use crate::spec::{ActorKind, ChildExit, ExitReason};

pub use crate::os_process::{OsProcess, ProcessExit, ProcessSpec};

/// A `process` child: a permanent worker that runs `spec` in a new OS process each start.
pub fn process_child(id: impl Into<String>, spec: ProcessSpec) -> ChildSpec {
    let start = move |ctx: StartContext| -> StartFuture {
        let spec = spec.clone();
        Box::pin(async move {
            let process = OsProcess::spawn(&spec, ctx.tree.log(&ctx.path))
                .map_err(|e| StartError(e.to_string()))?;
            tracing::info!(actor = %ctx.path, pid = process.pid(), "process started");
            match Actor::spawn_linked(None, ProcessActor, process.clone(), ctx.supervisor).await {
                Ok((actor, _)) => Ok(Started {
                    cell: actor.get_cell(),
                    os_process: Some(process),
                    hosted: None,
                }),
                Err(e) => {
                    process.kill().await;
                    Err(StartError(e.to_string()))
                }
            }
        })
    };
    ChildSpec::worker(id, ActorKind::Process, start)
}

/// The actor that owns one OS process instance.
struct ProcessActor;

struct ProcessState {
    process: OsProcess,
}

enum ProcessMsg {
    Exited(ProcessExit),
}

// Never sent to another node (ractor's `cluster` feature asks each message type).
impl ractor::Message for ProcessMsg {}

impl Actor for ProcessActor {
    type Msg = ProcessMsg;
    type State = ProcessState;
    type Arguments = OsProcess;

    async fn pre_start(
        &self,
        myself: ActorRef<ProcessMsg>,
        process: OsProcess,
    ) -> Result<ProcessState, ActorProcessingErr> {
        let watcher = process.clone();
        tokio::spawn(async move {
            let exit = watcher.wait().await;
            let _ = myself.cast(ProcessMsg::Exited(exit));
        });
        Ok(ProcessState { process })
    }

    async fn handle(
        &self,
        myself: ActorRef<ProcessMsg>,
        msg: ProcessMsg,
        _state: &mut ProcessState,
    ) -> Result<(), ActorProcessingErr> {
        let ProcessMsg::Exited(exit) = msg;
        match exit.reason() {
            ExitReason::Normal => {
                myself.stop(Some("normal".into()));
                Ok(())
            }
            reason => Err(Box::new(ChildExit(reason))),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ProcessMsg>,
        state: &mut ProcessState,
    ) -> Result<(), ActorProcessingErr> {
        // Graceful stop: SIGTERM, then wait. The supervisor kills at the shutdown timeout.
        if state.process.exit_status().is_none() {
            state.process.signal(libc::SIGTERM);
            state.process.wait().await;
        }
        Ok(())
    }
}

impl Drop for ProcessState {
    fn drop(&mut self) {
        if self.process.exit_status().is_none() {
            self.process.signal(libc::SIGKILL);
        }
    }
}
