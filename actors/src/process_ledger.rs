//! The ledger of the OS processes a node started, so that none outlives it.
//!
//! Each running process has a file `DIR/PID` that holds its start time (field 22 of
//! `/proc/PID/stat`), so that a recycled pid is never taken for it. Every process is the leader
//! of its own process group, and killing one kills its group: the children it started too. A
//! node that dies without stopping its processes (SIGKILL, a panic) leaves its ledger behind;
//! its guardian (`cadre guard`, started by the node and waiting for the node's end on a pipe)
//! kills what the ledger holds right then, and the next node on the same data dir does it again
//! at start, for anything the guardian missed.
//!
//! The ledger is process-wide ([`install`]): the node installs it once, and [`OsProcess`](crate::os_process::OsProcess)
//! and the `process` sandbox provider record into it. Where
//! none is installed (a sandbox's worker, unit tests) nothing is recorded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The processes of one node's data dir.
#[derive(Debug, Clone)]
pub struct ProcessLedger {
    dir: PathBuf,
}

static INSTALLED: OnceLock<ProcessLedger> = OnceLock::new();

/// Makes `dir` this process's ledger; later calls keep the first.
pub fn install(dir: PathBuf) -> std::io::Result<&'static ProcessLedger> {
    std::fs::create_dir_all(&dir)?;
    Ok(INSTALLED.get_or_init(|| ProcessLedger { dir }))
}

/// The ledger of this process, if one is installed.
pub fn installed() -> Option<&'static ProcessLedger> {
    INSTALLED.get()
}

impl ProcessLedger {
    /// The ledger in `dir` (which need not exist).
    pub fn open(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Records a just-started process (the leader of its own group). A process whose start
    /// time cannot be read has already ended and is not recorded.
    pub fn record(&self, pid: u32) {
        let Some(started) = start_time(pid) else {
            return;
        };
        if let Err(e) = std::fs::write(self.dir.join(pid.to_string()), started.to_string()) {
            tracing::warn!(pid, error = %e, dir = %self.dir.display(),
                "cannot record a process in the ledger: a crash of the node would leave it running");
        }
    }

    /// Forgets a process that has ended.
    pub fn remove(&self, pid: u32) {
        let _ = std::fs::remove_file(self.dir.join(pid.to_string()));
    }

    /// SIGKILLs the group of every recorded process that still runs (the same process: its
    /// start time matches) and empties the ledger; the pids killed.
    pub fn kill_all(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut killed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let recorded = std::fs::read_to_string(entry.path()).ok();
            let _ = std::fs::remove_file(entry.path());
            let Ok(pid) = name.to_string_lossy().parse::<u32>() else {
                continue;
            };
            let same = recorded
                .and_then(|r| r.trim().parse::<u64>().ok())
                .is_some_and(|started| start_time(pid) == Some(started));
            if same && pid > 1 {
                // SAFETY: plain system calls; the pid is of a process this ledger recorded,
                // checked by its start time just now.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                killed.push(pid);
            }
        }
        killed.sort_unstable();
        killed
    }

    /// Where the ledger is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// When `pid` started, in clock ticks since boot; `None` if there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn kills_the_group_of_a_recorded_process_and_spares_a_recycled_pid() {
        let dir = std::env::temp_dir().join(format!("cadre-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = ProcessLedger::open(dir.clone());
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = leader.id();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        ledger.record(pid);
        // A record whose start time is not the running process's: a recycled pid.
        let mut other = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        std::fs::write(dir.join(other.id().to_string()), "1").unwrap();

        assert_eq!(ledger.kill_all(), vec![pid]);
        let status = leader.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while start_time(grandchild).is_some() && !is_zombie(grandchild) {
            assert!(
                std::time::Instant::now() < deadline,
                "the group's other process runs on"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            other.try_wait().unwrap().is_none(),
            "a recycled pid is spared"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the ledger is empty"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }
}
