//! The `gvisor` provider: each sandbox is a `runsc` container running `cadre worker`.
//!
//! The container's root is an empty read-only directory; the host's system directories (`/usr`,
//! `/lib`, `/lib64`, `/bin`, `/sbin`, `/etc/alternatives`) and the `cadre` binary are mounted
//! read-only, `/tmp` and
//! `/dev` are the sandbox's own tmpfs, and the workspace is the only host directory it can
//! write. Network: `none` unless the spec allows egress. Memory and CPU limits go into the OCI
//! spec's cgroup resources, and a sandbox limited to fewer cores than the node has runs on that
//! many of its CPUs (see [`CpuSet`]). gVisor's user-space kernel stands between all of it and
//! the host.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use cadre_actors::sandbox::CheckpointFuture;
use cadre_proto::v1::SuspendRequest;

use crate::{
    LocalSandbox, Sandbox, SandboxError, SandboxProvider, SandboxSpec, StartFuture, worker,
};

/// Where the worker's binary and workspace appear inside a sandbox.
const WORKER_BIN: &str = "/cadre/cadre";
const WORKSPACE: &str = "/workspace";
/// Hosted actors' workspaces: a tmpfs, so making one costs no round trip to the host.
const ACTORS: &str = "/actors";
/// Host directories every sandbox sees read-only (those that exist). `/etc/alternatives` holds
/// only the symlinks behind Debian's generic commands (`awk`, `editor`, …), which point back
/// into `/usr`; the rest of `/etc` stays out of the view.
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/alternatives",
];

/// Starts `runsc` sandboxes; keeps their bundles and runsc state under `state_dir`.
pub struct GvisorProvider {
    runsc: PathBuf,
    state_dir: PathBuf,
    worker_bin: PathBuf,
    cpus: Arc<CpuSet>,
}

/// The node's CPUs, and how many live sandboxes run on each.
///
/// A started (not restored) sandbox with a CPU limit below the node's count runs on that many
/// CPUs (rounded up), the least used ones, set as its affinity before `runsc` starts. So
/// gVisor's sentry starts with as many Go processors (`GOMAXPROCS` follows the affinity), and
/// its threads hand work to each other on the same CPUs. Under the ptrace platform each wakeup
/// of a sandbox is a chain of such handoffs (sentry, stub, sentry). Measured on 2 cores with 8
/// busy sandboxes, pinned sandboxes served about 25% more activations at half the p99.
/// Pinning after the start, or unpinning a pinned sandbox, gave none of it.
struct CpuSet {
    cpus: Vec<usize>,
    sandboxes: Mutex<Vec<usize>>,
}

/// Some of the node's CPUs, claimed for one sandbox until dropped.
struct CpuClaim {
    set: Arc<CpuSet>,
    /// Indices into `set.cpus`.
    claimed: Vec<usize>,
}

impl GvisorProvider {
    /// Finds `runsc` on `PATH`. `worker_bin` is the `cadre` binary run inside each sandbox.
    pub fn new(state_dir: PathBuf, worker_bin: PathBuf) -> Result<Self, SandboxError> {
        let runsc = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("runsc"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                SandboxError::Unavailable(
                    "runsc (gVisor) is not installed: `apt-get install -y runsc`, or configure \
                     the `process` provider with `allow_unsandboxed: true`"
                        .into(),
                )
            })?;
        for dir in [state_dir.join("runsc"), state_dir.join("bundles")] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                SandboxError::Unavailable(format!("sandbox state dir {}: {e}", dir.display()))
            })?;
        }
        let provider = Self {
            runsc,
            state_dir,
            worker_bin,
            cpus: Arc::new(CpuSet::of_this_process()),
        };
        provider.remove_leftovers();
        Ok(provider)
    }

    /// Removes the sandboxes a previous run left in the state dir (after a crash): the state
    /// dir is this provider's alone, so none of them is anyone else's.
    fn remove_leftovers(&self) {
        let listed = std::process::Command::new(&self.runsc)
            .arg("--root")
            .arg(self.runsc_root())
            .args(["list", "-quiet"])
            .output();
        let mut ids: Vec<String> = listed
            .map(|l| {
                String::from_utf8_lossy(&l.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        for id in &ids {
            tracing::warn!(sandbox = %id, "removing a sandbox left by the last run");
            let _ = std::process::Command::new(&self.runsc)
                .arg("--root")
                .arg(self.runsc_root())
                .args(["delete", "--force", id])
                .output();
        }
        // Each bundle names a sandbox of the last run, whose cgroups may be left too.
        let bundles = self.state_dir.join("bundles");
        if let Ok(entries) = std::fs::read_dir(&bundles) {
            ids.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        for id in &ids {
            remove_cgroups(id);
        }
        let _ = std::fs::remove_dir_all(&bundles);
        let _ = std::fs::create_dir_all(&bundles);
    }

    fn runsc_root(&self) -> PathBuf {
        self.state_dir.join("runsc")
    }

    /// Starts a sandbox: `runsc run`, or `runsc restore` from a checkpoint image.
    async fn launch(
        &self,
        spec: SandboxSpec,
        image: Option<PathBuf>,
    ) -> Result<Sandbox, SandboxError> {
        if spec.id.is_empty()
            || !spec
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SandboxError::Invalid(format!(
                "id `{}`: use letters, digits, `-` and `_`",
                spec.id
            )));
        }
        let fail = |why: String| SandboxError::Start {
            id: spec.id.clone(),
            why,
        };
        let bundle = self.state_dir.join("bundles").join(&spec.id);
        make_cgroups(&spec.id, spec.memory_bytes, spec.pids);
        let prepare = || -> std::io::Result<()> {
            std::fs::create_dir_all(bundle.join("rootfs"))?;
            std::fs::create_dir_all(&spec.workspace)?;
            let config = oci_config(&spec, &self.worker_bin);
            std::fs::write(bundle.join("config.json"), config.to_string())
        };
        prepare().map_err(|e| fail(format!("bundle {}: {e}", bundle.display())))?;
        let network = if spec.egress { "host" } else { "none" };
        let mut command = tokio::process::Command::new(&self.runsc);
        // A restore runs on every CPU: the sentry decodes its saved kernel while the gofer
        // reopens the mounts and Go's collector marks alongside (pinned, its p50 was ~20 ms
        // slower). It hosts one exclusive actor, whose wakeups matter less than a pool's.
        let claim = match image {
            None => spec.cpus.and_then(|cores| CpuSet::claim(&self.cpus, cores)),
            Some(_) => None,
        };
        if let Some(claim) = &claim {
            tracing::debug!(sandbox = %spec.id, cpus = ?claim.cpus(), "sandbox CPUs");
            let mask = claim.mask();
            // SAFETY: between fork and exec the closure makes one system call on memory
            // prepared before the fork; it allocates nothing and takes no lock.
            unsafe {
                command.pre_exec(move || {
                    let size = std::mem::size_of::<libc::cpu_set_t>();
                    if libc::sched_setaffinity(0, size, &mask) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        command
            .arg("--root")
            .arg(self.runsc_root())
            .arg(format!("--network={network}"));
        match &image {
            Some(image) => command.arg("restore").arg("--image-path").arg(image),
            None => command.arg("run"),
        };
        let mut child = command
            .arg("--bundle")
            .arg(&bundle)
            .arg(&spec.id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", self.runsc.display())))?;
        log_stderr(&spec.id, child.stderr.take());
        let (worker, input) = match worker::connect_child(&mut child).await {
            Ok(connected) => connected,
            Err(e) => {
                let _ = child.kill().await;
                // What runsc left of it (a failed restore leaves its container), so that the
                // id can be started again.
                let _ = tokio::process::Command::new(&self.runsc)
                    .arg("--root")
                    .arg(self.runsc_root())
                    .args(["delete", "--force", &spec.id])
                    .output()
                    .await;
                let _ = std::fs::remove_dir_all(&bundle);
                remove_cgroups(&spec.id);
                return Err(fail(format!("cannot reach its worker: {e}")));
            }
        };
        let (runsc, root, id) = (self.runsc.clone(), self.runsc_root(), spec.id.clone());
        let (memory, pids, cgroup) = (spec.memory_bytes, spec.pids, spec.id.clone());
        let teardown = move || {
            // The CPUs are free again once the sandbox is gone.
            let _claim = claim;
            let _ = std::process::Command::new(&runsc)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&bundle);
            remove_cgroups(&id);
        };
        let hold = LocalSandbox::new(child, input, Some(Box::new(teardown)))
            .with_limit_check(move || limit_hit(&cgroup, memory, pids));
        Ok(Sandbox::new(spec, self.name(), worker, Box::new(hold)))
    }
}

impl SandboxProvider for GvisorProvider {
    fn name(&self) -> &'static str {
        "gvisor"
    }

    fn isolated(&self) -> bool {
        true
    }

    fn start(&self, spec: SandboxSpec) -> StartFuture<'_> {
        Box::pin(self.launch(spec, None))
    }

    fn cannot_checkpoint(&self) -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        (uid != 0).then(|| {
            format!(
                "runsc checkpoint/restore needs root in this runsc version (running as uid {uid})"
            )
        })
    }

    fn checkpoint<'a>(&'a self, sandbox: &'a mut Sandbox, image: &'a Path) -> CheckpointFuture<'a> {
        Box::pin(async move {
            let id = &sandbox.spec.id;
            let fail = |why: String| SandboxError::Checkpoint {
                id: id.clone(),
                why,
            };
            if let Some(why) = self.cannot_checkpoint() {
                return Err(SandboxError::Unsupported(why));
            }
            let mut worker = sandbox.worker();
            let suspend = worker.suspend(SuspendRequest {});
            match tokio::time::timeout(std::time::Duration::from_secs(10), suspend).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    return Err(fail(format!("its worker did not suspend: {status}")));
                }
                Err(_) => return Err(fail("its worker did not answer Suspend in 10 s".into())),
            }
            let _ = std::fs::remove_dir_all(image);
            std::fs::create_dir_all(image)
                .map_err(|e| fail(format!("image dir {}: {e}", image.display())))?;
            let out = tokio::process::Command::new(&self.runsc)
                .arg("--root")
                .arg(self.runsc_root())
                .arg("checkpoint")
                .arg("--image-path")
                .arg(image)
                .arg(id)
                .output()
                .await
                .map_err(|e| fail(format!("{}: {e}", self.runsc.display())))?;
            if !out.status.success() {
                return Err(fail(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            Ok(())
        })
    }

    fn restore(&self, spec: SandboxSpec, image: PathBuf) -> StartFuture<'_> {
        Box::pin(async move {
            if let Some(why) = self.cannot_checkpoint() {
                return Err(SandboxError::Unsupported(why));
            }
            self.launch(spec, Some(image)).await
        })
    }
}

impl CpuSet {
    /// The CPUs this process may run on.
    fn of_this_process() -> Self {
        // SAFETY: a zeroed cpu_set_t is an empty set, and sched_getaffinity writes at most
        // `size` bytes into it.
        let cpus = unsafe {
            let mut mask: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(0, size, &mut mask) == 0 {
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|&cpu| libc::CPU_ISSET(cpu, &mask))
                    .collect()
            } else {
                Vec::new()
            }
        };
        let sandboxes = Mutex::new(vec![0; cpus.len()]);
        Self { cpus, sandboxes }
    }

    /// The least used CPUs for a sandbox limited to `cores`; none (it may run anywhere) when
    /// the limit is as many as there are CPUs.
    fn claim(set: &Arc<Self>, cores: f64) -> Option<CpuClaim> {
        let wanted = (cores.ceil() as usize).max(1);
        if wanted >= set.cpus.len() {
            return None;
        }
        let mut sandboxes = set.sandboxes.lock().expect("cpu set");
        let mut order: Vec<usize> = (0..set.cpus.len()).collect();
        order.sort_by_key(|&i| sandboxes[i]);
        order.truncate(wanted);
        order.sort_unstable();
        for &i in &order {
            sandboxes[i] += 1;
        }
        Some(CpuClaim {
            set: set.clone(),
            claimed: order,
        })
    }
}

impl CpuClaim {
    fn cpus(&self) -> Vec<usize> {
        self.claimed.iter().map(|&i| self.set.cpus[i]).collect()
    }

    fn mask(&self) -> libc::cpu_set_t {
        // SAFETY: a zeroed cpu_set_t is an empty set; every CPU came from sched_getaffinity,
        // so it is below CPU_SETSIZE.
        unsafe {
            let mut mask: libc::cpu_set_t = std::mem::zeroed();
            for cpu in self.cpus() {
                libc::CPU_SET(cpu, &mut mask);
            }
            mask
        }
    }
}

impl Drop for CpuClaim {
    fn drop(&mut self) {
        let mut sandboxes = self.set.sandboxes.lock().expect("cpu set");
        for &i in &self.claimed {
            sandboxes[i] -= 1;
        }
    }
}

/// The OCI runtime spec of a sandbox.
fn oci_config(spec: &SandboxSpec, worker_bin: &Path) -> Value {
    let bind = |source: &Path, destination: &str, mode: &str| {
        json!({"destination": destination, "type": "bind", "source": source,
               "options": ["rbind", mode]})
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": ACTORS, "type": "tmpfs", "source": "tmpfs"}),
    ];
    for dir in SYSTEM_DIRS {
        if Path::new(dir).exists() {
            mounts.push(bind(Path::new(dir), dir, "ro"));
        }
    }
    mounts.push(bind(worker_bin, WORKER_BIN, "ro"));
    mounts.push(bind(&spec.workspace, WORKSPACE, "rw"));
    let mut resources = serde_json::Map::new();
    if let Some(bytes) = spec.memory_bytes {
        resources.insert("memory".into(), json!({"limit": bytes}));
    }
    if let Some(pids) = spec.pids {
        resources.insert("pids".into(), json!({"limit": pids}));
    }
    if let Some(cpus) = spec.cpus {
        let period = 100_000u64;
        resources.insert(
            "cpu".into(),
            json!({"quota": (cpus * period as f64) as i64, "period": period}),
        );
    }
    // With egress the sandbox uses the host's network stack (through gVisor's netstack
    // passthrough), so it gets no network namespace of its own.
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
    ];
    if !spec.egress {
        namespaces.push(json!({"type": "network"}));
    }
    let linux = json!({"namespaces": namespaces, "resources": resources});
    let mut args = vec![
        WORKER_BIN.to_string(),
        "worker".into(),
        "--workspace".into(),
        WORKSPACE.into(),
        "--actors".into(),
        ACTORS.into(),
    ];
    if let Some(quota) = spec.workspace_quota {
        args.push(format!("--workspace-quota={quota}"));
    }
    json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/workspace"],
            "cwd": WORKSPACE,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": spec.id,
        "mounts": mounts,
        "linux": linux,
    })
}

/// Where the host's cgroups are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether the host has cgroup v1 controllers (a v2 host has `cgroup.controllers` at the root).
fn cgroups_v1() -> bool {
    let root = Path::new(CGROUP_ROOT);
    !root.join("cgroup.controllers").exists() && root.join("memory").is_dir()
}

/// Makes sandbox `id`'s memory and pids cgroups (`/ID`) with its limits, on a cgroup v1
/// host, before runsc starts it.
///
/// runsc removes the cgroups it makes when a sandbox ends, counters and all, so nothing
/// would be left to tell why it ended. It uses a controller's cgroup that already exists as it
/// is (setting no limit there, and leaving it in place), so the node makes these two itself,
/// with the limits: they outlive the sandbox until its teardown, and [`limit_hit`] reads
/// their counters. runsc makes the others (CPU) as usual. On a v2 host runsc sets every
/// limit, and an end by one shows as the signal that ended it.
fn make_cgroups(id: &str, memory: Option<u64>, pids: Option<u64>) {
    if !cgroups_v1() {
        return;
    }
    let root = Path::new(CGROUP_ROOT);
    let limits = [
        ("memory", "memory.limit_in_bytes", memory),
        ("pids", "pids.max", pids),
    ];
    for (controller, file, limit) in limits {
        let Some(limit) = limit else { continue };
        let dir = root.join(controller).join(id);
        let made = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join(file), limit.to_string()));
        if let Err(e) = made {
            // runsc then makes it, with the limit.
            tracing::warn!(sandbox = %id, "cannot make its {controller} cgroup: {e}");
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Removes the cgroups of sandbox `id`: those [`make_cgroups`] made and any runsc left.
fn remove_cgroups(id: &str) {
    let Ok(controllers) = std::fs::read_dir(CGROUP_ROOT) else {
        return;
    };
    for controller in controllers.flatten() {
        let _ = std::fs::remove_dir(controller.path().join(id));
    }
}

/// Which of its limits a sandbox that ended by itself hit, from the counters of the cgroups
/// [`make_cgroups`] made: memory charges refused at the limit (the kernel's OOM killer then
/// kills the sandbox), or forks refused.
fn limit_hit(id: &str, memory: Option<u64>, pids: Option<u64>) -> Option<String> {
    let read = |file: String| std::fs::read_to_string(file).unwrap_or_default();
    let memory_refused: u64 = read(format!("{CGROUP_ROOT}/memory/{id}/memory.failcnt"))
        .trim()
        .parse()
        .unwrap_or(0);
    if let (1.., Some(bytes)) = (memory_refused, memory) {
        return Some(format!(
            "memory limit {}",
            crate::workspace::human_bytes(bytes)
        ));
    }
    let forks_refused: u64 = read(format!("{CGROUP_ROOT}/pids/{id}/pids.events"))
        .lines()
        .filter_map(|l| l.strip_prefix("max ")?.trim().parse::<u64>().ok())
        .sum();
    match (forks_refused, pids) {
        (1.., Some(n)) => Some(format!("pids limit {n}")),
        _ => None,
    }
}

/// Logs what runsc and the worker print on stderr, one line at a time.
fn log_stderr(id: &str, stderr: Option<tokio::process::ChildStderr>) {
    let Some(stderr) = stderr else { return };
    let id = id.to_string();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(sandbox = %id, "{line}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(cpus: &[usize]) -> Arc<CpuSet> {
        Arc::new(CpuSet {
            cpus: cpus.to_vec(),
            sandboxes: Mutex::new(vec![0; cpus.len()]),
        })
    }

    #[test]
    fn sandboxes_spread_over_the_least_used_cpus_and_free_them_when_gone() {
        let set = set_of(&[0, 2, 5, 7]);
        let mut one: Vec<_> = (0..4).map(|_| CpuSet::claim(&set, 1.0).unwrap()).collect();
        let mut firsts: Vec<_> = one.iter().flat_map(|c| c.cpus()).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, [0, 2, 5, 7], "one sandbox per CPU first");

        // A fractional limit rounds up; the CPUs freed by the dropped claims go first.
        let (freed_b, freed_a) = (one.remove(2), one.remove(0));
        let mut expect: Vec<_> = [freed_a.cpus(), freed_b.cpus()].concat();
        expect.sort_unstable();
        drop((freed_a, freed_b));
        let two = CpuSet::claim(&set, 1.5).unwrap();
        assert_eq!(two.cpus(), expect);
        assert_eq!(*set.sandboxes.lock().unwrap(), [1, 1, 1, 1]);
        drop(two);
        assert_eq!(*set.sandboxes.lock().unwrap(), [0, 1, 0, 1]);
    }

    #[test]
    fn a_limit_of_every_cpu_pins_nothing() {
        let set = set_of(&[0, 1]);
        assert!(CpuSet::claim(&set, 2.0).is_none());
        assert!(CpuSet::claim(&set, 8.0).is_none());
        assert!(CpuSet::claim(&set, 0.5).is_some());
    }

    #[test]
    fn the_mask_holds_exactly_the_claimed_cpus() {
        let set = set_of(&[1, 3, 4]);
        let claim = CpuSet::claim(&set, 2.0).unwrap();
        let mask = claim.mask();
        let inside: Vec<_> = (0..8)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &mask) })
            .collect();
        assert_eq!(inside, claim.cpus());
        assert_eq!(inside.len(), 2);
    }
}
