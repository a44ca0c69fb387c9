//! The node's guardian: a small process (`cadre guard`) that outlives the node just long
//! enough to kill what the node's [process ledger](cadre_actors::process_ledger) holds and to
//! unmount its workspaces.
//!
//! The node holds the write end of the guardian's stdin and never writes to it. When the node
//! ends, however it ends (SIGKILL included), the kernel closes that end; the guardian reads
//! end-of-file, SIGKILLs the process group of every process still in the ledger, and unmounts
//! what is still mounted below the node's workspaces folder. After a clean stop the ledger is
//! empty, nothing is mounted, and the guardian just exits. It runs in a process group of
//! its own, so a signal to the node's group (Ctrl-C in a terminal) does not take it first.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};

use cadre_actors::process_ledger::ProcessLedger;

/// A running guardian; dropping it lets the guardian go (it empties the ledger and exits).
pub(crate) struct Guardian {
    /// The guardian waits for this to close.
    _watch: ChildStdin,
}

impl Guardian {
    /// Starts `cadre_bin guard --ledger DIR --unmount WORKSPACES` for `ledger`.
    pub(crate) fn start(
        cadre_bin: &Path,
        ledger: &ProcessLedger,
        workspaces: &Path,
    ) -> std::io::Result<Self> {
        let mut child = Command::new(cadre_bin)
            .arg("guard")
            .arg("--ledger")
            .arg(ledger.dir())
            .arg("--unmount")
            .arg(workspaces)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        tracing::debug!(pid = child.id(), "guardian started");
        Ok(Self {
            _watch: child.stdin.take().expect("piped stdin"),
        })
    }
}

/// What `cadre guard` does: waits for end-of-file on stdin (its node's end), then kills every
/// process left in `ledger` and unmounts what is mounted below `unmount`; the pids killed.
pub fn guard(ledger: &Path, unmount: Option<&Path>) -> Vec<u32> {
    use std::io::Read;
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    let killed = ProcessLedger::open(ledger.to_path_buf()).kill_all();
    if let Some(dir) = unmount {
        cadre_sandbox::workspace::unmount_under(dir);
    }
    killed
}
