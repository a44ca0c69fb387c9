//! Sandboxes' workspaces on the node's disk, each bounded by a quota and the node's disk kept
//! safe.
//!
//! With a quota, a workspace is an ext4 filesystem of that size in a sparse file (`ID.disk`,
//! beside the workspace's folder `ID`), loop-mounted on the folder while its sandbox runs. A
//! tool that fills it gets ENOSPC at the quota, from the kernel, at once: nothing is measured
//! after the fact, and the node's own disk (its event log) is never filled by a sandbox. The
//! file grows only as the workspace is written. Mounting needs root (as gVisor does); without
//! a quota a workspace is a plain folder.
//!
//! Every mount is undone when its sandbox goes, when the pool shuts down, and, if the node is
//! killed, by its guardian ([`unmount_under`]); a starting node undoes what an earlier run
//! left.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SandboxError;

/// The workspaces of one pool.
#[derive(Debug, Clone)]
pub struct Workspaces {
    root: PathBuf,
    quota: Option<u64>,
    min_free: u64,
}

impl Workspaces {
    /// Workspaces under `root`, each at most `quota` bytes (`None`: unbounded folders). A new
    /// workspace is refused while the disk under `root` has less than `min_free` bytes free.
    /// Mounts an earlier run left under `root` are undone.
    pub fn new(root: PathBuf, quota: Option<u64>, min_free: u64) -> Self {
        unmount_under(&root);
        Self {
            root,
            quota,
            min_free,
        }
    }

    /// Where workspace `id` is.
    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn disk(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}{DISK}"))
    }

    /// Makes workspace `id` ready for its sandbox: its folder, and with a quota its disk
    /// (made if new) mounted on it. A workspace that does not exist yet is refused while the
    /// node's disk is short of space.
    pub fn open(&self, id: &str) -> Result<PathBuf, SandboxError> {
        let path = self.path(id);
        let fail = |why: String| SandboxError::Start {
            id: id.to_string(),
            why: format!("workspace {}: {why}", path.display()),
        };
        let exists = path.exists() || self.disk(id).exists();
        if !exists {
            std::fs::create_dir_all(&self.root).map_err(|e| fail(e.to_string()))?;
            let free = free_bytes(&self.root).map_err(|e| fail(e.to_string()))?;
            if free < self.min_free {
                return Err(SandboxError::Unavailable(format!(
                    "the node's disk holding {} has {} free, below sandbox.min_free_disk_mib \
                     ({}): no new workspace until space is freed",
                    self.root.display(),
                    human_bytes(free),
                    human_bytes(self.min_free)
                )));
            }
        }
        std::fs::create_dir_all(&path).map_err(|e| fail(e.to_string()))?;
        let Some(quota) = self.quota else {
            return Ok(path);
        };
        if is_mount_point(&path) {
            return Ok(path);
        }
        let disk = self.disk(id);
        if !disk.exists() {
            make_disk(&disk, quota).map_err(fail)?;
        }
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(&disk)
            .arg(&path))
        .map_err(fail)?;
        Ok(path)
    }

    /// Unmounts workspace `id`, keeping its files for the next [`Workspaces::open`].
    pub fn close(&self, id: &str) {
        unmount(&self.path(id));
    }

    /// Removes workspace `id` and its files for good.
    pub fn remove(&self, id: &str) {
        let path = self.path(id);
        unmount(&path);
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(self.disk(id));
    }

    /// The ids of the workspaces on disk.
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .map(|name| match name.strip_suffix(DISK) {
                Some(id) => id.to_string(),
                None => name,
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Unmounts every workspace (the pool is shutting down); their files stay.
    pub fn close_all(&self) {
        unmount_under(&self.root);
    }
}

/// The file name suffix of a workspace's disk.
const DISK: &str = ".disk";

/// An empty ext4 filesystem of `bytes` in a new sparse file: no space is reserved for root
/// (the sandbox's processes are root), and inode tables are initialised lazily, so making one
/// writes little.
fn make_disk(disk: &Path, bytes: u64) -> Result<(), String> {
    let file = std::fs::File::create(disk).map_err(|e| e.to_string())?;
    file.set_len(bytes).map_err(|e| e.to_string())?;
    drop(file);
    let made = run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        ])
        .arg(disk));
    if made.is_err() {
        let _ = std::fs::remove_file(disk);
    }
    made
}

/// Runs a command to its end: its stderr as the error if it fails.
fn run(command: &mut Command) -> Result<(), String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command
        .output()
        .map_err(|e| format!("{program}: {e} (is it installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Unmounts whatever is mounted at `path` (lazily: a process still in it does not stop it).
fn unmount(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
    while unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {}
}

/// Unmounts everything mounted below `root` (deepest first): the workspaces of a node that
/// is gone. Returns how many mounts it undid.
pub fn unmount_under(root: &Path) -> usize {
    let mut points: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(root) && p != root)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in &points {
        tracing::info!(mount = %point.display(), "unmounting a workspace");
        unmount(point);
    }
    points.len()
}

fn is_mount_point(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

/// The mount points this process sees (`/proc/self/mountinfo`'s fifth field, unescaped).
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes free to unprivileged writers on the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; statvfs reads a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// `512 MiB`, `1 GiB`, `1.5 GiB`: a size as people write it.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 bytes");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/data/a\040b"), "/data/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
