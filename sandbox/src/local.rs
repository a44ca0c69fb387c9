//! Sandboxes held by a host process of this node (`runsc run`, or the worker itself).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;

use cadre_actors::sandbox::{SandboxEnded, SandboxHold};
use tokio::process::Child;

/// A sandbox kept alive by a host process of this node. Dropping it kills the process and
/// removes what the provider left behind.
pub struct LocalSandbox {
    /// The host process that holds the sandbox.
    child: Child,
    /// A duplicate of the worker's stdin: while it is open the worker never reads the end of
    /// its input, even between connections (around a checkpoint).
    _input: OwnedFd,
    /// Removes what the provider left behind (for gVisor: `runsc delete --force`).
    teardown: Option<Box<dyn FnOnce() + Send>>,
    /// Which limit ended the sandbox, if one did (read once its process has exited).
    limit_hit: Option<Box<dyn Fn() -> Option<String> + Send + Sync>>,
}

impl LocalSandbox {
    /// A sandbox held by `child`, with `input` (a duplicate of the worker's stdin; see
    /// [`crate::worker::connect_child`]); `teardown` removes what the provider left behind
    /// once it is gone.
    pub fn new(child: Child, input: OwnedFd, teardown: Option<Box<dyn FnOnce() + Send>>) -> Self {
        Self {
            child,
            _input: input,
            teardown,
            limit_hit: None,
        }
    }

    /// Says which limit ended the sandbox (`memory limit 512 MiB`) when it ends by itself
    /// because of one: its end then reads `killed: memory limit 512 MiB`.
    pub fn with_limit_check(
        mut self,
        limit_hit: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.limit_hit = Some(Box::new(limit_hit));
        self
    }
}

impl SandboxHold for LocalSandbox {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn ended(&mut self) -> Pin<Box<dyn Future<Output = SandboxEnded> + Send + '_>> {
        Box::pin(async move {
            match self.child.wait().await {
                Ok(status) => {
                    let limit = match &self.limit_hit {
                        Some(check) if !status.success() => check(),
                        _ => None,
                    };
                    SandboxEnded {
                        success: status.success(),
                        status: match limit {
                            Some(limit) => format!("killed: {limit}"),
                            None => status.to_string(),
                        },
                    }
                }
                Err(e) => SandboxEnded {
                    success: false,
                    status: e.to_string(),
                },
            }
        })
    }

    fn kill(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            if let Some(teardown) = self.teardown.take() {
                let _ = tokio::task::spawn_blocking(teardown).await;
            }
        })
    }
}

impl Drop for LocalSandbox {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(teardown) = self.teardown.take() {
            teardown();
        }
    }
}
