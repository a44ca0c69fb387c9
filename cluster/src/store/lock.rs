//! One live node per data dir: an exclusive `flock` on `DIR/LOCK`, released by the kernel when
//! the process dies (so a SIGKILLed node never leaves a stale lock).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use cadre_actors::store::StoreError;

/// Held for as long as the node uses the data dir.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    /// The lock file, `DIR/LOCK`.
    pub path: PathBuf,
}

impl DataDirLock {
    /// Locks `dir` (creating it if need be) and writes this process's pid into the lock file;
    /// fails if another node holds it.
    pub fn acquire(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(StoreError::Io(format!(
                "data dir {} is in use by another cadre node{who}; stop it or pick another --data-dir",
                dir.display()
            )));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(Self { _file: file, path })
    }
}
