//! The work of supervised actors in sandboxes placed by [`Placement`]: pinned actors (a
//! conversation's workspace) and processes (MCP servers).
//!
//! Starting a process pins the actor's logical actor (activating it in a slot of a sandbox of its
//! tenant, or in a sandbox of its own), then runs the process there through the worker's `Run`
//! call, whose stdio is bridged to in-memory pipes. The pin holds the slot for as long as the
//! process runs. If the sandbox dies, the call breaks and the process is reported
//! [`HostedExit::Lost`]; dropping the [`HostedProcess`] ends the call, which kills the process.

use cadre_actors::placement::{Isolation, LogicalActor};
use cadre_actors::process::ProcessExit;
use cadre_actors::sandbox::{
    HostFuture, HostedActor, HostedExit, HostedProcess, HostedSpec, PinFuture, PinnedWorker,
    SandboxError, SandboxHost,
};
use cadre_actors::tree::ActorLog;
use cadre_proto::v1::{ProcessStart, RunInput, RunOutput, run_input, run_output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::Placement;

/// How long a caller whose call broke waits to hear whether its sandbox ended.
const END_NOTICED: Duration = Duration::from_secs(2);

/// Bytes buffered in each direction of a hosted process's stdio.
const PIPE_BUFFER: usize = 256 * 1024;

impl SandboxHost for Placement {
    fn pin(&self, actor: HostedActor) -> PinFuture<'_> {
        Box::pin(async move {
            let logical = LogicalActor {
                id: logical_id(&actor.id),
                tenant: actor.tenant.clone(),
                isolation: match (actor.egress, actor.exclusive) {
                    (true, _) => Isolation::ExclusiveWithEgress,
                    (false, true) => Isolation::Exclusive,
                    (false, false) => Isolation::Shared,
                },
            };
            let pinned = Placement::pin(self, &logical)
                .await
                .map_err(|e| SandboxError::Start {
                    id: actor.id.clone(),
                    why: e.to_string(),
                })?;
            Ok(PinnedWorker {
                sandbox: pinned.sandbox.clone(),
                worker: pinned.worker.clone(),
                hold: Box::new(pinned),
            })
        })
    }

    fn remove(&self, actor: &HostedActor) {
        Placement::remove(self, &logical_id(&actor.id));
    }

    fn end_of<'a>(
        &'a self,
        sandbox: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(self.pool().end_of(sandbox, END_NOTICED))
    }

    fn spawn(&self, spec: HostedSpec) -> HostFuture<'_> {
        Box::pin(async move {
            let fail = |why: String| SandboxError::Start {
                id: spec.actor.id.clone(),
                why,
            };
            let deadline = tokio::time::Instant::now() + DYING_SANDBOX_WAIT;
            let (pinned, inputs, mut outputs, pid) = loop {
                let pinned = SandboxHost::pin(self, spec.actor.clone()).await?;
                match start_process(&pinned, &spec).await {
                    Ok((inputs, outputs, pid)) => break (pinned, inputs, outputs, pid),
                    // The worker does not answer: its sandbox is most likely dying and placement
                    // has not heard yet. Ask again once it has rather than fail the start (each
                    // failed start counts against the supervisor's restart intensity).
                    Err(s)
                        if s.code() != tonic::Code::InvalidArgument
                            && tokio::time::Instant::now() < deadline =>
                    {
                        drop(pinned);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(s) => return Err(fail(s.message().to_string())),
                }
            };
            let (exit_tx, exit) = watch::channel(None);
            let (stdout_theirs, stdout) = tokio::io::duplex(PIPE_BUFFER);
            let (stdin, stdin_theirs) = tokio::io::duplex(PIPE_BUFFER);
            let (signals, signal_rx) = mpsc::unbounded_channel();
            let (path, log) = (spec.actor.id.clone(), spec.log.clone());
            let output = tokio::spawn(async move {
                let exit = pump_outputs(&mut outputs, stdout_theirs, &path, log.as_ref()).await;
                let _ = exit_tx.send(Some(exit));
            });
            let input = tokio::spawn(pump_inputs(stdin_theirs, signal_rx, inputs));
            Ok(HostedProcess {
                sandbox: pinned.sandbox.clone(),
                pid,
                stdin: Box::pin(stdin),
                stdout: Box::pin(stdout),
                exit,
                signals,
                hold: Box::new(Hold {
                    _pinned: pinned.hold,
                    tasks: [output.abort_handle(), input.abort_handle()],
                }),
            })
        })
    }
}

/// How long a start waits for placement to notice that the sandbox it offered is dead.
const DYING_SANDBOX_WAIT: Duration = Duration::from_secs(10);

/// Starts the process on the pinned actor's worker: the call's input, its output, the pid.
async fn start_process(
    pinned: &PinnedWorker,
    spec: &HostedSpec,
) -> Result<(mpsc::Sender<RunInput>, tonic::Streaming<RunOutput>, u32), tonic::Status> {
    let (inputs, input_rx) = mpsc::channel::<RunInput>(64);
    let start = RunInput {
        input: Some(run_input::Input::Start(ProcessStart {
            argv: spec.argv.clone(),
            env: spec.env.iter().cloned().collect(),
            cwd: String::new(),
        })),
    };
    let _ = inputs.send(start).await;
    let mut outputs = pinned
        .worker
        .clone()
        .run(ReceiverStream::new(input_rx))
        .await?
        .into_inner();
    match outputs.message().await? {
        Some(RunOutput {
            output: Some(run_output::Output::Pid(pid)),
        }) => Ok((inputs, outputs, pid)),
        _ => Err(tonic::Status::internal(
            "the worker did not start the process",
        )),
    }
}

/// The pin and the tasks that carry the call; dropping it ends the call.
struct Hold {
    _pinned: Box<dyn Send + Sync>,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for Hold {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Placement's actor ids take letters, digits, `.`, `-` and `_`: `root/tools/time` becomes
/// `root.tools.time`.
fn logical_id(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect()
}

/// Copies the process's stdout into `stdout` and its stderr lines to `log` (else the node's
/// log), until its exit.
async fn pump_outputs(
    outputs: &mut tonic::Streaming<RunOutput>,
    mut stdout: DuplexStream,
    path: &str,
    log: Option<&ActorLog>,
) -> HostedExit {
    let mut stderr_line = Vec::new();
    loop {
        match outputs.message().await {
            Ok(Some(RunOutput { output: Some(out) })) => match out {
                run_output::Output::Stdout(bytes) => {
                    // A reader that went away just loses the output.
                    let _ = stdout.write_all(&bytes).await;
                }
                run_output::Output::Stderr(bytes) => {
                    stderr_line.extend_from_slice(&bytes);
                    while let Some(end) = stderr_line.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = stderr_line.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line[..line.len() - 1]);
                        match log {
                            Some(log) => log.line("stderr", &line),
                            None => {
                                tracing::info!(target: "cadre::process", actor = %path, stream = "stderr", "{line}")
                            }
                        }
                    }
                }
                run_output::Output::Exit(e) => {
                    return HostedExit::Exited(if e.signal != 0 {
                        ProcessExit::Signal(e.signal)
                    } else {
                        ProcessExit::Code(e.code)
                    });
                }
                run_output::Output::Pid(_) => {}
            },
            Ok(Some(RunOutput { output: None })) => {}
            Ok(None) => {
                return HostedExit::Lost("the worker ended the call without an exit".into());
            }
            Err(status) => return HostedExit::Lost(status.message().to_string()),
        }
    }
}

/// Sends what is written to the process's stdin, and its signals, to the worker.
async fn pump_inputs(
    mut stdin: DuplexStream,
    mut signals: mpsc::UnboundedReceiver<i32>,
    inputs: mpsc::Sender<RunInput>,
) {
    let mut buf = vec![0; 64 * 1024];
    let mut open = true;
    loop {
        let input = tokio::select! {
            n = stdin.read(&mut buf), if open => match n {
                Ok(0) | Err(_) => {
                    open = false;
                    run_input::Input::CloseStdin(true)
                }
                Ok(n) => run_input::Input::Stdin(buf[..n].to_vec()),
            },
            Some(sig) = signals.recv() => run_input::Input::Signal(sig),
            else => {
                // Nothing more to send; keep the call open until it is dropped.
                std::future::pending::<()>().await;
                return;
            }
        };
        if inputs.send(RunInput { input: Some(input) }).await.is_err() {
            return;
        }
    }
}
