//! OS processes: spawned in their own process group, reaped by one task, signalled only
//! through it (so a signal never reaches a recycled pid), and recorded in the node's
//! [process ledger](crate::process_ledger) while they run. Used by `process` children and by
//! the sandbox worker.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

use crate::spec::ExitReason;
use crate::tree::ActorLog;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Variables set on top of the inherited environment.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` keeps the node's.
    pub cwd: Option<PathBuf>,
}

/// How an OS process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    /// Exited with this status (-1 if it is unknown).
    Code(i32),
    /// Killed by this signal.
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

impl OsProcess {
    /// Spawns the process in a new process group and starts its reaper and the forwarders of
    /// its output lines to `log`.
    pub fn spawn(spec: &ProcessSpec, log: ActorLog) -> std::io::Result<Self> {
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
        let ledger = crate::process_ledger::installed();
        if let Some(ledger) = ledger {
            ledger.record(pid);
        }
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, log.clone(), "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, log, "stderr"));
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
                        if let Some(ledger) = ledger {
                            ledger.remove(pid);
                        }
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

    /// The process's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` to the process group, unless the process has already exited.
    pub fn signal(&self, sig: i32) {
        let _ = self.signals.send(sig);
    }

    /// How the process ended, once it has been reaped; `None` until then.
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
    /// The exit reason a supervisor sees: exit 0 is `normal`, SIGTERM `shutdown`, SIGKILL
    /// `killed`, anything else an error.
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

async fn forward_lines(stream: impl AsyncRead + Unpin, log: ActorLog, name: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.line(name, &line);
    }
}
