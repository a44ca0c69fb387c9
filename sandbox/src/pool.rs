//! The warm pool: sandboxes started ahead of need, handed to one tenant each, replaced when
//! they die.
//!
//! The pool keeps at least `min` sandboxes that belong to no tenant yet (warm), and never more
//! than `max` in all. [`WarmPool::acquire`] hands a warm sandbox to a tenant (or starts one if
//! none is warm and there is room). A sandbox never changes tenant: [`WarmPool::release`]
//! destroys it and removes its workspace, since that holds the tenant's files. A sandbox that
//! dies is removed, reported to [`WarmPool::subscribe`]rs, and the pool refills; its workspace
//! stays until it is started again under its id ([`WarmPool::resume`]) or forgotten
//! ([`WarmPool::forget`]). A leased sandbox can be suspended ([`WarmPool::suspend`]), which
//! frees its place and keeps its workspace: checkpointed to an image on disk where the provider
//! can, else stopped. It comes back later under the same id ([`WarmPool::resume`]): restored
//! from its image, or started afresh on its workspace.
//!
//! A sandbox kept for an owner ([`WarmPool::keep`]: an exclusive actor, such as a conversation's
//! workspace) is recorded on disk, and its workspace outlives the sandbox and the node: it is
//! removed only when forgotten. A pool that starts finds the records of earlier runs
//! ([`WarmPool::kept`]) and removes every other workspace they left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cadre_proto::v1::WorkerStatsRequest;
use cadre_proto::v1::worker_client::WorkerClient;
use tokio::sync::{Notify, broadcast, oneshot};
use tonic::transport::Channel;

use crate::workspace::Workspaces;
use crate::{SandboxError, SandboxProvider, SandboxSpec};

/// How the pool sizes and limits its sandboxes.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Warm sandboxes kept ready.
    pub min: usize,
    /// Most sandboxes in all (warm and leased).
    pub max: usize,
    /// Workspaces go under this directory, one per sandbox.
    pub workspaces: PathBuf,
    /// Most bytes a workspace may hold (`sandbox.workspace_mib`): each is a filesystem of
    /// this size; `None` for plain folders (see [`Workspaces`]).
    pub workspace_quota: Option<u64>,
    /// A new workspace is refused while the disk holding them has less free than this.
    pub min_free_disk: u64,
    /// Memory limit per sandbox, in bytes; `None` for no limit.
    pub memory_bytes: Option<u64>,
    /// CPU limit per sandbox, in cores; `None` for no limit.
    pub cpus: Option<f64>,
    /// Most processes and threads per sandbox; `None` for no limit.
    pub pids: Option<u64>,
    /// Prefix of sandbox ids.
    pub name: String,
    /// Checkpoint images go under this directory, one per suspended sandbox.
    pub images: PathBuf,
    /// Records of the sandboxes kept for an owner go under this directory, one file per
    /// sandbox (named by its id, holding the owner).
    pub owners: PathBuf,
}

/// One sandbox as the pool sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    /// The sandbox's id.
    pub id: String,
    /// `None` while warm.
    pub tenant: Option<String>,
    /// Pid of the host process holding it.
    pub pid: Option<u32>,
    /// When it was started.
    pub started: SystemTime,
}

/// A sandbox handed to a tenant.
#[derive(Clone)]
pub struct Lease {
    /// The sandbox's id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// A client of its worker.
    pub worker: WorkerClient<Channel>,
}

/// How a sandbox was suspended.
#[derive(Debug, Clone, PartialEq)]
pub enum Suspended {
    /// Its memory and processes are in its image: a resume restores them.
    Checkpointed,
    /// It was stopped (why: the provider cannot checkpoint, or the checkpoint failed); a
    /// resume starts it afresh on its workspace.
    Stopped {
        /// Why it was stopped.
        why: String,
    },
}

/// A suspended sandbox back in the pool.
pub struct Resumed {
    /// The sandbox, leased to its tenant again.
    pub lease: Lease,
    /// Whether it was restored from its image (memory and processes as they were), rather
    /// than started afresh on its workspace.
    pub restored: bool,
}

/// Reported when a sandbox ends without being released.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxDied {
    /// The sandbox's id.
    pub id: String,
    /// Its tenant; `None` if it was warm.
    pub tenant: Option<String>,
    /// How it ended.
    pub status: String,
}

/// A sandbox that ended by itself, as `cadre sandboxes ls` shows it for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedSandbox {
    /// The sandbox as it was.
    pub info: SandboxInfo,
    /// How it ended: `killed: memory limit 512 MiB`, `signal: 9 (SIGKILL)`.
    pub status: String,
}

/// How many ended sandboxes the pool remembers.
const ENDED_KEPT: usize = 32;

/// Why a sandbox could not be leased.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every place is taken and no sandbox is warm.
    #[error("all {max} sandboxes are in use; none is warm")]
    Exhausted {
        /// The pool's `max`.
        max: usize,
    },
    /// A sandbox cannot be started.
    #[error(transparent)]
    Start(#[from] SandboxError),
    /// The pool has no sandbox with this id.
    #[error("no sandbox `{0}` in the pool")]
    Unknown(String),
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct WarmPool {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn SandboxProvider>,
    config: PoolConfig,
    workspaces: Workspaces,
    state: Mutex<State>,
    /// Wakes the refiller.
    refill: Notify,
    died: broadcast::Sender<SandboxDied>,
    next: AtomicU64,
    /// Each sandbox's monitor, which tears it down when it ends.
    monitors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Suspended sandboxes still being removed: a restore under the same id waits.
    removing: Mutex<HashMap<String, oneshot::Receiver<()>>>,
    /// Sandboxes started with network access (also while suspended, so a restore has it too).
    egress: Mutex<HashSet<String>>,
    /// Sandboxes kept for an owner: id → owner, as recorded under `config.owners`.
    kept: Mutex<BTreeMap<String, String>>,
    /// The last sandboxes that ended by themselves, oldest first.
    ended: Mutex<std::collections::VecDeque<EndedSandbox>>,
}

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, Entry>,
    /// Sandboxes being started (they count against `max`).
    starting: usize,
    /// Of those, the warm ones the pool starts by itself.
    warming: usize,
    closed: bool,
}

struct Entry {
    info: SandboxInfo,
    worker: WorkerClient<Channel>,
    /// Tells the sandbox's monitor to tear it down or suspend it.
    control: Option<oneshot::Sender<Control>>,
}

impl State {
    /// Removes a sandbox from the pool; its monitor's control, to tell it what to do.
    fn take(&mut self, id: &str) -> Option<oneshot::Sender<Control>> {
        self.sandboxes.remove(id)?.control.take()
    }
}

/// What a sandbox's monitor is told to do.
enum Control {
    /// Tear it down and remove its workspace.
    Stop,
    /// Tear it down and keep its workspace, for a start under its id.
    Park {
        /// Sent once the stopped sandbox is removed.
        gone: oneshot::Sender<()>,
    },
    Suspend {
        image: PathBuf,
        done: oneshot::Sender<Result<(), SandboxError>>,
        /// Sent once the stopped sandbox is removed.
        gone: oneshot::Sender<()>,
    },
}

impl WarmPool {
    /// Starts the pool; it fills up to `min` warm sandboxes in the background.
    /// Images left by an earlier run are removed (its sandboxes' memory is gone), and so is
    /// every workspace it left that was not kept for an owner.
    pub fn start(provider: Arc<dyn SandboxProvider>, config: PoolConfig) -> Self {
        let _ = std::fs::remove_dir_all(&config.images);
        let kept = read_kept(&config.owners);
        let workspaces = Workspaces::new(
            config.workspaces.clone(),
            config.workspace_quota,
            config.min_free_disk,
        );
        for id in workspaces.ids() {
            if !kept.contains_key(&id) {
                tracing::info!(sandbox = %id, "removing a workspace left by an earlier run");
                workspaces.remove(&id);
            }
        }
        provider.adopt(&kept);
        let (died, _) = broadcast::channel(1024);
        let pool = Self {
            inner: Arc::new(Inner {
                provider,
                config,
                workspaces,
                state: Mutex::default(),
                refill: Notify::new(),
                died,
                next: AtomicU64::new(1),
                monitors: Mutex::default(),
                removing: Mutex::default(),
                egress: Mutex::default(),
                kept: Mutex::new(kept),
                ended: Mutex::default(),
            }),
        };
        let weak = Arc::downgrade(&pool.inner);
        cadre_actors::metrics::metrics().sample_with(
            "sandboxes",
            Box::new(move |m| {
                let Some(inner) = weak.upgrade() else {
                    return false;
                };
                let provider = inner.provider.name().to_string();
                let state = inner.state.lock().expect("pool lock");
                let leased = state
                    .sandboxes
                    .values()
                    .filter(|e| e.info.tenant.is_some())
                    .count();
                m.sandboxes.clear();
                for (name, n) in [
                    ("warm", state.sandboxes.len() - leased),
                    ("leased", leased),
                    ("starting", state.starting),
                ] {
                    m.sandboxes
                        .get_or_create(&cadre_actors::metrics::SandboxLabels {
                            provider: provider.clone(),
                            state: name.to_string(),
                        })
                        .set(n as i64);
                }
                true
            }),
        );
        let refiller = pool.clone();
        tokio::spawn(async move { refiller.refill_loop().await });
        pool
    }

    /// Every sandbox, in id order.
    pub fn list(&self) -> Vec<SandboxInfo> {
        let state = self.inner.state.lock().expect("pool lock");
        state.sandboxes.values().map(|e| e.info.clone()).collect()
    }

    /// Sandboxes that end without being released.
    pub fn subscribe(&self) -> broadcast::Receiver<SandboxDied> {
        self.inner.died.subscribe()
    }

    /// The last sandboxes that ended by themselves (at most 32), oldest first.
    pub fn ended(&self) -> Vec<EndedSandbox> {
        self.inner
            .ended
            .lock()
            .expect("ended")
            .iter()
            .cloned()
            .collect()
    }

    /// How sandbox `id` ended, if it ended by itself: waits up to `wait` for its end to be
    /// noticed (a caller whose call to the worker broke may hear of it first).
    pub async fn end_of(&self, id: &str, wait: Duration) -> Option<String> {
        let mut died = self.subscribe();
        let known = |pool: &Self| {
            let ended = pool.inner.ended.lock().expect("ended");
            ended
                .iter()
                .rev()
                .find(|e| e.info.id == id)
                .map(|e| e.status.clone())
        };
        if let Some(status) = known(self) {
            return Some(status);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, died.recv()).await {
                Ok(Ok(d)) if d.id == id => return Some(d.status),
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    if let Some(status) = known(self) {
                        return Some(status);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return known(self),
            }
        }
    }

    /// Hands a warm sandbox to `tenant`, or starts one if none is warm and there is room.
    pub async fn acquire(&self, tenant: &str) -> Result<Lease, PoolError> {
        let warm = {
            let mut state = self.inner.state.lock().expect("pool lock");
            let room = state.sandboxes.len() + state.starting < self.inner.config.max;
            let warm = state
                .sandboxes
                .values_mut()
                .find(|e| e.info.tenant.is_none());
            match warm {
                Some(entry) => {
                    entry.info.tenant = Some(tenant.to_string());
                    Some(Lease {
                        id: entry.info.id.clone(),
                        tenant: tenant.to_string(),
                        worker: entry.worker.clone(),
                    })
                }
                None if room => {
                    state.starting += 1;
                    None
                }
                None => {
                    return Err(PoolError::Exhausted {
                        max: self.inner.config.max,
                    });
                }
            }
        };
        self.inner.refill.notify_one();
        if let Some(lease) = warm {
            self.inner.provider.leased(&lease.id, tenant);
            return Ok(lease);
        }
        let id = self.next_id();
        let started = self.launch(id.clone(), Some(tenant), None).await;
        self.inner.state.lock().expect("pool lock").starting -= 1;
        self.inner.refill.notify_one();
        let worker = started?;
        Ok(Lease {
            id,
            tenant: tenant.to_string(),
            worker,
        })
    }

    /// Starts a sandbox with network access for `tenant` (never a warm one: warm sandboxes
    /// have none). A warm sandbox gives up its place if the pool is full.
    pub async fn acquire_with_egress(&self, tenant: &str) -> Result<Lease, PoolError> {
        self.make_room().await?;
        let id = self.next_id();
        self.inner.egress.lock().expect("egress").insert(id.clone());
        let started = self.launch(id.clone(), Some(tenant), None).await;
        self.inner.state.lock().expect("pool lock").starting -= 1;
        self.inner.refill.notify_one();
        let worker = started.inspect_err(|_| {
            self.inner.egress.lock().expect("egress").remove(&id);
        })?;
        Ok(Lease {
            id,
            tenant: tenant.to_string(),
            worker,
        })
    }

    /// Destroys a leased sandbox (it is never given to another tenant) and refills the pool.
    pub fn release(&self, id: &str) {
        self.inner.egress.lock().expect("egress").remove(id);
        let control = self.inner.state.lock().expect("pool lock").take(id);
        if let Some(control) = control {
            let _ = control.send(Control::Stop);
        }
        self.inner.refill.notify_one();
    }

    /// Why sandboxes cannot be suspended here, or `None` if they can.
    pub fn cannot_suspend(&self) -> Option<String> {
        self.inner.provider.cannot_checkpoint()
    }

    /// Suspends a leased sandbox, which frees its place and keeps its workspace. Where the
    /// provider can checkpoint, its memory and processes go to its image on disk (the
    /// checkpoint's duration is the time this takes); where it cannot, or the checkpoint
    /// fails, the sandbox is stopped. Either way [`WarmPool::resume`] brings it back.
    pub async fn suspend(&self, id: &str) -> Result<Suspended, PoolError> {
        let control = self.inner.state.lock().expect("pool lock").take(id);
        let control = control.ok_or_else(|| PoolError::Unknown(id.to_string()))?;
        let (gone, removed) = oneshot::channel();
        self.inner
            .removing
            .lock()
            .expect("removing")
            .insert(id.to_string(), removed);
        if let Some(why) = self.inner.provider.cannot_checkpoint() {
            let _ = control.send(Control::Park { gone });
            self.inner.refill.notify_one();
            return Ok(Suspended::Stopped { why });
        }
        let (done, result) = oneshot::channel();
        let image = self.image(id);
        let _ = control.send(Control::Suspend {
            image: image.clone(),
            done,
            gone,
        });
        let result = result.await.unwrap_or_else(|_| {
            Err(SandboxError::Unavailable(format!(
                "sandbox `{id}` ended while it was being suspended"
            )))
        });
        self.inner.refill.notify_one();
        Ok(match result {
            Ok(()) => Suspended::Checkpointed,
            Err(e) => {
                // A partial image would only fail to restore.
                let _ = std::fs::remove_dir_all(&image);
                Suspended::Stopped { why: e.to_string() }
            }
        })
    }

    /// Brings a suspended (or dead) sandbox back for `tenant` under its id, if there is room
    /// (a warm sandbox gives up its place if need be): restored from its image if it has one,
    /// else, or if the restore fails, started afresh on its workspace. The image is removed
    /// either way (it would fail again); only `Exhausted` keeps it for a later try.
    pub async fn resume(&self, id: &str, tenant: &str) -> Result<Resumed, PoolError> {
        self.make_room().await?;
        self.removed(id).await;
        let image = self.image(id);
        let restored = if image.is_dir() {
            let restored = self
                .launch(id.to_string(), Some(tenant), Some(&image))
                .await;
            let _ = std::fs::remove_dir_all(&image);
            restored
                .inspect_err(|e| {
                    tracing::warn!(sandbox = id, error = %e,
                        "cannot restore the suspended sandbox; starting it afresh on its workspace");
                })
                .ok()
        } else {
            None
        };
        let resumed = match restored {
            Some(worker) => Ok((worker, true)),
            None => self
                .launch(id.to_string(), Some(tenant), None)
                .await
                .map(|worker| (worker, false)),
        };
        self.inner.state.lock().expect("pool lock").starting -= 1;
        self.inner.refill.notify_one();
        let (worker, restored) = resumed.inspect_err(|_| {
            self.inner.egress.lock().expect("egress").remove(id);
        })?;
        Ok(Resumed {
            lease: Lease {
                id: id.to_string(),
                tenant: tenant.to_string(),
                worker,
            },
            restored,
        })
    }

    /// Sandboxes kept for an owner, this run's and earlier runs': (id, owner), in id order.
    pub fn kept(&self) -> Vec<(String, String)> {
        let kept = self.inner.kept.lock().expect("kept");
        kept.iter()
            .map(|(id, owner)| (id.clone(), owner.clone()))
            .collect()
    }

    /// Keeps sandbox `id` for `owner`, durably: its workspace now stays when the sandbox stops
    /// or dies and when the node stops or restarts, until [`WarmPool::forget`]. A sandbox kept
    /// for the same owner before is forgotten.
    pub async fn keep(&self, id: &str, owner: &str) -> std::io::Result<()> {
        let (dir, name, content) = (
            self.inner.config.owners.clone(),
            id.to_string(),
            owner.to_string(),
        );
        tokio::task::spawn_blocking(move || write_synced(&dir, &name, content.as_bytes()))
            .await
            .map_err(std::io::Error::other)??;
        let replaced: Vec<String> = {
            let mut kept = self.inner.kept.lock().expect("kept");
            let replaced = kept
                .iter()
                .filter(|(other, o)| *o == owner && other.as_str() != id)
                .map(|(other, _)| other.clone())
                .collect();
            kept.insert(id.to_string(), owner.to_string());
            replaced
        };
        for old in replaced {
            self.forget(&old);
        }
        Ok(())
    }

    /// Removes a sandbox for good: stops it if it runs, and removes its workspace and its
    /// record as kept, if it was (a sandbox that died and will not be started again under its
    /// id, or a kept sandbox whose owner is gone).
    pub fn forget(&self, id: &str) {
        let was_kept = self.inner.kept.lock().expect("kept").remove(id).is_some();
        if was_kept {
            let _ = std::fs::remove_file(self.inner.config.owners.join(id));
        }
        let control = self.inner.state.lock().expect("pool lock").take(id);
        if let Some(control) = control {
            // Its monitor removes the workspace once the sandbox is down.
            let _ = control.send(Control::Stop);
            self.inner.refill.notify_one();
            return;
        }
        let (pool, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            pool.removed(&id).await;
            pool.inner.egress.lock().expect("egress").remove(&id);
            let _ = tokio::task::spawn_blocking(move || pool.inner.workspaces.remove(&id)).await;
        });
    }

    /// Counts one more sandbox as starting once there is room for it: a warm sandbox gives up
    /// its place if the pool is full; `Exhausted` if every place is leased.
    async fn make_room(&self) -> Result<(), PoolError> {
        loop {
            {
                let mut state = self.inner.state.lock().expect("pool lock");
                let full = state.sandboxes.len() + state.starting >= self.inner.config.max;
                let warm = state
                    .sandboxes
                    .iter()
                    .find(|(_, e)| e.info.tenant.is_none())
                    .map(|(id, _)| id.clone());
                match (full, warm) {
                    (false, _) => {
                        state.starting += 1;
                        return Ok(());
                    }
                    (true, Some(warm)) => {
                        if let Some(control) = state.take(&warm) {
                            let _ = control.send(Control::Stop);
                        }
                        state.starting += 1;
                        return Ok(());
                    }
                    (true, None) if state.warming == 0 => {
                        return Err(PoolError::Exhausted {
                            max: self.inner.config.max,
                        });
                    }
                    // A warm sandbox is on its way: it will give up its place.
                    (true, None) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until what is left of a suspended sandbox is removed (a resume under its id
    /// needs that).
    pub async fn removed(&self, id: &str) {
        let removing = self.inner.removing.lock().expect("removing").remove(id);
        if let Some(removed) = removing {
            let _ = removed.await;
        }
    }

    /// Whether a suspended sandbox has an image to restore (else it was stopped, or died, and
    /// starts afresh on its workspace).
    pub fn has_image(&self, id: &str) -> bool {
        self.image(id).is_dir()
    }

    /// Where a suspended sandbox's image goes.
    fn image(&self, id: &str) -> PathBuf {
        self.inner.config.images.join(id)
    }

    /// Destroys every sandbox, waits until they are gone, and stops refilling.
    pub async fn shutdown(&self) {
        let entries = {
            let mut state = self.inner.state.lock().expect("pool lock");
            state.closed = true;
            std::mem::take(&mut state.sandboxes)
        };
        for (_, mut entry) in entries {
            if let Some(control) = entry.control.take() {
                let _ = control.send(Control::Stop);
            }
        }
        self.inner.refill.notify_one();
        let monitors = std::mem::take(&mut *self.inner.monitors.lock().expect("monitors"));
        for monitor in monitors {
            let _ = monitor.await;
        }
        self.inner.workspaces.close_all();
    }

    /// Keeps `min` warm sandboxes, one start at a time; retries failed starts after a pause.
    async fn refill_loop(self) {
        loop {
            let wanted = {
                let mut state = self.inner.state.lock().expect("pool lock");
                if state.closed {
                    return;
                }
                let warm = state
                    .sandboxes
                    .values()
                    .filter(|e| e.info.tenant.is_none())
                    .count();
                let total = state.sandboxes.len() + state.starting;
                let wanted =
                    warm + state.starting < self.inner.config.min && total < self.inner.config.max;
                if wanted {
                    state.starting += 1;
                    state.warming += 1;
                }
                wanted
            };
            if !wanted {
                self.inner.refill.notified().await;
                continue;
            }
            let result = self.launch(self.next_id(), None, None).await;
            {
                let mut state = self.inner.state.lock().expect("pool lock");
                state.starting -= 1;
                state.warming -= 1;
            }
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot start a warm sandbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn next_id(&self) -> String {
        let n = self.inner.next.fetch_add(1, Ordering::SeqCst);
        // Fixed width: runsc accepts a unique prefix for an id, so no id may be the prefix
        // of another.
        format!("{}-{n:08x}", self.inner.config.name)
    }

    /// Starts a sandbox (from a checkpoint `image`, if given) and its monitor, and adds it to
    /// the pool.
    async fn launch(
        &self,
        id: String,
        tenant: Option<&str>,
        image: Option<&std::path::Path>,
    ) -> Result<WorkerClient<Channel>, SandboxError> {
        let config = &self.inner.config;
        let workspace = {
            let (pool, id) = (self.clone(), id.clone());
            tokio::task::spawn_blocking(move || pool.inner.workspaces.open(&id))
                .await
                .map_err(|e| SandboxError::Unavailable(e.to_string()))??
        };
        let spec = SandboxSpec {
            id: id.clone(),
            tenant: tenant.unwrap_or_default().to_string(),
            workspace,
            egress: self.inner.egress.lock().expect("egress").contains(&id),
            memory_bytes: config.memory_bytes,
            cpus: config.cpus,
            pids: config.pids,
            workspace_quota: config.workspace_quota,
        };
        let started = match image {
            Some(image) => self.inner.provider.restore(spec, image.to_path_buf()).await,
            None => self.inner.provider.start(spec).await,
        };
        let mut sandbox = match started {
            Ok(sandbox) => sandbox,
            Err(e) => {
                self.inner.workspaces.close(&id);
                return Err(e);
            }
        };
        let worker = sandbox.worker();
        if image.is_some() {
            // runsc reads the image while the sandbox starts; it has done so once the worker
            // answers (a bad image ends the sandbox first).
            if let Err(status) = worker.clone().stats(WorkerStatsRequest {}).await {
                sandbox.kill().await;
                self.inner.workspaces.close(&id);
                return Err(SandboxError::Start {
                    id,
                    why: format!("the restored worker does not answer: {status}"),
                });
            }
        }
        let (control, controlled) = oneshot::channel();
        let closed = {
            let mut state = self.inner.state.lock().expect("pool lock");
            if !state.closed {
                state.sandboxes.insert(
                    id.clone(),
                    Entry {
                        info: SandboxInfo {
                            id: id.clone(),
                            tenant: tenant.map(str::to_string),
                            pid: sandbox.pid(),
                            started: SystemTime::now(),
                        },
                        worker: worker.clone(),
                        control: Some(control),
                    },
                );
            }
            state.closed
        };
        if closed {
            sandbox.kill().await;
            return Err(SandboxError::Unavailable("the pool is shut down".into()));
        }
        let pool = self.clone();
        let monitored = id.clone();
        let monitor = tokio::spawn(async move {
            let control = tokio::select! {
                ended = sandbox.ended() => {
                    let status = ended.status;
                    let entry = pool.inner.state.lock().expect("pool lock").sandboxes.remove(&monitored);
                    tracing::warn!(sandbox = %monitored, %status, "sandbox died");
                    if let Some(entry) = &entry {
                        let mut ended = pool.inner.ended.lock().expect("ended");
                        if ended.len() == ENDED_KEPT {
                            ended.pop_front();
                        }
                        ended.push_back(EndedSandbox {
                            info: entry.info.clone(),
                            status: status.clone(),
                        });
                    }
                    // Its workspace stays: whoever hears of the death may start it again
                    // under its id (once what is left of it is removed) or forget it.
                    let (gone, removed) = oneshot::channel();
                    pool.inner.removing.lock().expect("removing").insert(monitored.clone(), removed);
                    let _ = pool.inner.died.send(SandboxDied {
                        id: monitored.clone(),
                        tenant: entry.and_then(|e| e.info.tenant),
                        status,
                    });
                    pool.inner.refill.notify_one();
                    Some(Control::Park { gone })
                }
                control = controlled => control.ok(),
            };
            let workspaces = &pool.inner.workspaces;
            match control {
                Some(Control::Suspend { image, done, gone }) => {
                    let _ = done.send(pool.inner.provider.checkpoint(&mut sandbox, &image).await);
                    // Removing a stopped gVisor sandbox takes a while (over a second here):
                    // the suspension is done without waiting for it; a resume waits.
                    sandbox.kill().await;
                    workspaces.close(&monitored);
                    let _ = gone.send(());
                }
                Some(Control::Park { gone }) => {
                    sandbox.kill().await;
                    workspaces.close(&monitored);
                    let _ = gone.send(());
                }
                Some(Control::Stop) => {
                    sandbox.kill().await;
                    let kept = pool
                        .inner
                        .kept
                        .lock()
                        .expect("kept")
                        .contains_key(&monitored);
                    if kept {
                        workspaces.close(&monitored);
                    } else {
                        let pool = pool.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            pool.inner.workspaces.remove(&monitored)
                        })
                        .await;
                    }
                }
                None => {
                    sandbox.kill().await;
                    workspaces.close(&monitored);
                }
            }
        });
        let mut monitors = self.inner.monitors.lock().expect("monitors");
        monitors.retain(|m| !m.is_finished());
        monitors.push(monitor);
        Ok(worker)
    }
}

/// The records of kept sandboxes under `owners`: id → owner. Unreadable ones are skipped
/// (logged): their workspaces are then removed as not kept.
fn read_kept(owners: &Path) -> BTreeMap<String, String> {
    let mut kept = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(owners) else {
        return kept;
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            // A record whose write did not finish: its sandbox was never used.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        match std::fs::read_to_string(entry.path()) {
            Ok(owner) if !owner.is_empty() => {
                kept.insert(id, owner);
            }
            Ok(_) => tracing::warn!(sandbox = %id, "ignoring an empty record of a kept sandbox"),
            Err(e) => tracing::warn!(sandbox = %id, error = %e,
                "cannot read the record of a kept sandbox; its workspace is removed"),
        }
    }
    kept
}

/// Writes `dir/name` durably: the file's data and its directory entry are on disk on return.
fn write_synced(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".{name}.partial"));
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&partial, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}
