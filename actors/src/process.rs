//! Supervised OS processes (actor kind `process`).
//!
//! Each process runs in its own process group so that a shell and everything it started get the
//! same signals. Exit 0 is `normal` and death by SIGTERM is `shutdown` (both normal); a non-zero
//! exit or any other signal is abnormal (SIGKILL is `killed`). A graceful stop sends SIGTERM and waits; the supervisor kills at the child's
//! shutdown timeout. stdout and stderr go to the tracing log, tagged with the actor's path.

use std::path::PathBuf;
use std::process::Stdio;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

use crate::spec::{
    ActorKind, ChildExit, ChildSpec, ExitReason, StartContext, StartError, StartFuture, Started,
};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

/// How an OS process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    Code(i32),
    Signal(i32),
}

/// A running OS process. Clones share it; only the reaper task ever waits on it, and every
/// signal goes through that task, so a signal never reaches a recycled pid.
#[derive(Clone, Debug)]
pub struct OsProcess {
    pid: u32,
    signals: mpsc::UnboundedSender<i32>,
    exit: watch::Receiver<Option<ProcessExit>>,
}

/// A `process` child: a permanent worker that runs `spec` in a new OS process each start.
pub fn process_child(id: impl Into<String>, spec: ProcessSpec) -> ChildSpec {
    let start = move |ctx: StartContext| -> StartFuture {
        let spec = spec.clone();
        Box::pin(async move {
            let process =
                OsProcess::spawn(&spec, &ctx.path).map_err(|e| StartError(e.to_string()))?;
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

impl OsProcess {
    /// Spawns the process in a new process group and starts its reaper and log forwarders.
    pub fn spawn(spec: &ProcessSpec, path: &str) -> std::io::Result<Self> {
        let (program, args) = spec.command.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command")
        })?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run `{program}`: {e}")))?;
        let pid = child.id().expect("a just-spawned child has a pid");
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, path.to_string(), "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, path.to_string(), "stderr"));
        }
        let (signals, mut signal_rx) = mpsc::unbounded_channel::<i32>();
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    status = child.wait() => {
                        let exit = match status {
                            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                                (Some(code), _) => ProcessExit::Code(code),
                                (None, Some(sig)) => ProcessExit::Signal(sig),
                                (None, None) => ProcessExit::Code(-1),
                            },
                            Err(_) => ProcessExit::Code(-1),
                        };
                        let _ = exit_tx.send(Some(exit));
                        break;
                    }
                    Some(sig) = signal_rx.recv() => {
                        // The leader is not reaped yet (only this task reaps), so the group id
                        // is still ours.
                        unsafe { libc::kill(-(pid as i32), sig) };
                    }
                }
            }
        });
        Ok(Self { pid, signals, exit })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` to the process group, unless the process has already exited.
    pub fn signal(&self, sig: i32) {
        let _ = self.signals.send(sig);
    }

    pub fn exit_status(&self) -> Option<ProcessExit> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited and been reaped.
    pub async fn wait(&self) -> ProcessExit {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(v) => v.expect("waited for Some"),
            // The reaper is gone only after it published the exit (or the runtime is ending).
            Err(_) => self
                .exit_status()
                .unwrap_or(ProcessExit::Signal(libc::SIGKILL)),
        }
    }

    /// SIGKILLs the process group if the process is still running, then waits for it.
    pub async fn kill(&self) -> ProcessExit {
        if self.exit_status().is_none() {
            self.signal(libc::SIGKILL);
        }
        self.wait().await
    }
}

impl ProcessExit {
    pub fn reason(&self) -> ExitReason {
        match *self {
            ProcessExit::Code(0) => ExitReason::Normal,
            ProcessExit::Code(code) => ExitReason::Error(format!("exited with status {code}")),
            ProcessExit::Signal(libc::SIGKILL) => ExitReason::Killed,
            // Like systemd, death by SIGTERM is a requested stop: OTP's `shutdown`.
            ProcessExit::Signal(libc::SIGTERM) => ExitReason::Shutdown,
            ProcessExit::Signal(sig) => ExitReason::Error(format!("killed by signal {sig}")),
        }
    }
}

async fn forward_lines(stream: impl AsyncRead + Unpin, path: String, name: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "cadre::process", actor = %path, stream = name, "{line}");
    }
}

/// The actor that owns one OS process instance.
struct ProcessActor;

struct ProcessState {
    process: OsProcess,
}

enum ProcessMsg {
    Exited(ProcessExit),
}

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
