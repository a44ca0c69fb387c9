//! The warm pool: sandboxes started ahead of need, handed to one tenant each, replaced when
//! they die.
//!
//! The pool keeps at least `min` sandboxes that belong to no tenant yet (warm), and never more
//! than `max` in all. [`WarmPool::acquire`] hands a warm sandbox to a tenant (or starts one if
//! none is warm and there is room). A sandbox never changes tenant: [`WarmPool::release`]
//! destroys it, since its workspace holds the tenant's files. A sandbox that dies is removed,
//! reported to [`WarmPool::subscribe`]rs, and the pool refills.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cadre_proto::v1::worker_client::WorkerClient;
use tokio::sync::{Notify, broadcast, oneshot};
use tonic::transport::Channel;

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
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    /// Prefix of sandbox ids.
    pub name: String,
}

/// One sandbox as the pool sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    pub id: String,
    /// `None` while warm.
    pub tenant: Option<String>,
    /// Pid of the host process holding it.
    pub pid: Option<u32>,
    pub started: SystemTime,
}

/// A sandbox handed to a tenant.
#[derive(Clone)]
pub struct Lease {
    pub id: String,
    pub tenant: String,
    pub worker: WorkerClient<Channel>,
}

/// Reported when a sandbox ends without being released.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxDied {
    pub id: String,
    pub tenant: Option<String>,
    pub status: String,
}

/// Why a sandbox could not be leased.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("all {max} sandboxes are in use; none is warm")]
    Exhausted { max: usize },
    #[error(transparent)]
    Start(#[from] SandboxError),
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct WarmPool {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn SandboxProvider>,
    config: PoolConfig,
    state: Mutex<State>,
    /// Wakes the refiller.
    refill: Notify,
    died: broadcast::Sender<SandboxDied>,
    next: AtomicU64,
    /// Each sandbox's monitor, which tears it down when it ends.
    monitors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, Entry>,
    /// Sandboxes being started (they count against `max`).
    starting: usize,
    closed: bool,
}

struct Entry {
    info: SandboxInfo,
    worker: WorkerClient<Channel>,
    /// Tells the sandbox's monitor to tear it down.
    stop: Option<oneshot::Sender<()>>,
}

impl WarmPool {
    /// Starts the pool; it fills up to `min` warm sandboxes in the background.
    pub fn start(provider: Arc<dyn SandboxProvider>, config: PoolConfig) -> Self {
        let (died, _) = broadcast::channel(1024);
        let pool = Self {
            inner: Arc::new(Inner {
                provider,
                config,
                state: Mutex::default(),
                refill: Notify::new(),
                died,
                next: AtomicU64::new(1),
                monitors: Mutex::default(),
            }),
        };
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
            return Ok(lease);
        }
        let started = self.launch(Some(tenant)).await;
        self.inner.state.lock().expect("pool lock").starting -= 1;
        self.inner.refill.notify_one();
        let (id, worker) = started?;
        Ok(Lease {
            id,
            tenant: tenant.to_string(),
            worker,
        })
    }

    /// Destroys a leased sandbox (it is never given to another tenant) and refills the pool.
    pub fn release(&self, id: &str) {
        let entry = self
            .inner
            .state
            .lock()
            .expect("pool lock")
            .sandboxes
            .remove(id);
        if let Some(stop) = entry.and_then(|mut e| e.stop.take()) {
            let _ = stop.send(());
        }
        self.inner.refill.notify_one();
    }

    /// Destroys every sandbox, waits until they are gone, and stops refilling.
    pub async fn shutdown(&self) {
        let entries = {
            let mut state = self.inner.state.lock().expect("pool lock");
            state.closed = true;
            std::mem::take(&mut state.sandboxes)
        };
        for (_, mut entry) in entries {
            if let Some(stop) = entry.stop.take() {
                let _ = stop.send(());
            }
        }
        self.inner.refill.notify_one();
        let monitors = std::mem::take(&mut *self.inner.monitors.lock().expect("monitors"));
        for monitor in monitors {
            let _ = monitor.await;
        }
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
                }
                wanted
            };
            if !wanted {
                self.inner.refill.notified().await;
                continue;
            }
            let result = self.launch(None).await;
            self.inner.state.lock().expect("pool lock").starting -= 1;
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot start a warm sandbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Starts a sandbox and its monitor, and adds it to the pool.
    async fn launch(
        &self,
        tenant: Option<&str>,
    ) -> Result<(String, WorkerClient<Channel>), SandboxError> {
        let config = &self.inner.config;
        let n = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", config.name);
        let spec = SandboxSpec {
            id: id.clone(),
            tenant: tenant.unwrap_or_default().to_string(),
            workspace: config.workspaces.join(&id),
            egress: false,
            memory_bytes: config.memory_bytes,
            cpus: config.cpus,
        };
        let mut sandbox = self.inner.provider.start(spec).await?;
        let worker = sandbox.worker();
        let (stop, stopped) = oneshot::channel();
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
                        stop: Some(stop),
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
            tokio::select! {
                status = sandbox.wait() => {
                    let entry = pool.inner.state.lock().expect("pool lock").sandboxes.remove(&monitored);
                    let status = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(sandbox = %monitored, %status, "sandbox died");
                    let _ = pool.inner.died.send(SandboxDied {
                        id: monitored,
                        tenant: entry.and_then(|e| e.info.tenant),
                        status,
                    });
                    pool.inner.refill.notify_one();
                }
                _ = stopped => {}
            }
            sandbox.kill().await;
        });
        let mut monitors = self.inner.monitors.lock().expect("monitors");
        monitors.retain(|m| !m.is_finished());
        monitors.push(monitor);
        Ok((id, worker))
    }
}
