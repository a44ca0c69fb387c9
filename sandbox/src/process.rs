//! The `process` provider: the worker runs as a plain host process. Nothing is isolated, so it
//! is refused unless the configuration allows it in so many words.

use std::path::PathBuf;
use std::process::Stdio;

use crate::{
    LocalSandbox, Sandbox, SandboxError, SandboxProvider, SandboxSpec, StartFuture, worker,
};

/// Runs `cadre worker` on the host, in the workspace.
pub struct ProcessProvider {
    worker_bin: PathBuf,
}

impl ProcessProvider {
    /// Refused unless `allow_unsandboxed` (config `sandbox.allow_unsandboxed: true`).
    pub fn new(worker_bin: PathBuf, allow_unsandboxed: bool) -> Result<Self, SandboxError> {
        if !allow_unsandboxed {
            return Err(SandboxError::Unavailable(
                "the `process` sandbox provider isolates nothing: untrusted code would run on \
                 the host; set `sandbox.allow_unsandboxed: true` to accept that, or install \
                 runsc for the `gvisor` provider"
                    .into(),
            ));
        }
        tracing::warn!("sandbox provider `process`: nothing is isolated from the host");
        Ok(Self { worker_bin })
    }
}

impl SandboxProvider for ProcessProvider {
    fn name(&self) -> &'static str {
        "process"
    }

    fn isolated(&self) -> bool {
        false
    }

    fn start(&self, spec: SandboxSpec) -> StartFuture<'_> {
        Box::pin(async move {
            let fail = |why: String| SandboxError::Start {
                id: spec.id.clone(),
                why,
            };
            std::fs::create_dir_all(&spec.workspace)
                .map_err(|e| fail(format!("workspace {}: {e}", spec.workspace.display())))?;
            let mut child = tokio::process::Command::new(&self.worker_bin)
                .arg("worker")
                .arg("--workspace")
                .arg(&spec.workspace)
                .args(
                    spec.workspace_quota
                        .map(|q| format!("--workspace-quota={q}")),
                )
                .current_dir(&spec.workspace)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| fail(format!("{}: {e}", self.worker_bin.display())))?;
            let (worker, input) = worker::connect_child(&mut child)
                .await
                .map_err(|e| fail(format!("cannot reach its worker: {e}")))?;
            // Recorded so that a crash of the node does not leave the worker running.
            let ledger = cadre_actors::process_ledger::installed();
            let teardown = match (ledger, child.id()) {
                (Some(ledger), Some(pid)) => {
                    ledger.record(pid);
                    Some(Box::new(move || ledger.remove(pid)) as Box<dyn FnOnce() + Send>)
                }
                _ => None,
            };
            let hold = LocalSandbox::new(child, input, teardown);
            Ok(Sandbox::new(spec, self.name(), worker, Box::new(hold)))
        })
    }
}
