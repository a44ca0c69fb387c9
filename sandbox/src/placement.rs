//! The placement actor: hosts many logical actors on a few sandboxes of the warm pool.
//!
//! It carries out what [`PlacementPolicy`] decides: an actor is activated on demand in a slot
//! of a sandbox of its tenant (a real round trip: the worker makes its workspace and loads its
//! state), idle actors are passivated (their state comes back to the node) after the idle
//! timeout or when their slot is needed, and activations wait in a bounded queue when nothing
//! is free. When a sandbox dies, its actors are lost: each is reported as
//! [`PlacementEvent::Lost`] (their supervisors see the failure) and is placed again on its next
//! message, with the state of its last passivation.
//!
//! An `exclusive` actor has a sandbox of its own, so when it is idle the whole sandbox is
//! suspended (`runsc checkpoint`: memory, processes and all, to an image on disk) and restored
//! on its next message with everything as it was. Where the provider cannot checkpoint (the
//! reason is logged once), or a checkpoint or restore fails, the sandbox is stopped and started
//! again under its id instead: its workspace's files stay, the actor is activated with the
//! state it had when suspended, and only the processes and memory of the sandbox are lost.
//!
//! An exclusive actor's sandbox is kept for it in the pool ([`WarmPool::keep`]), so its
//! workspace survives the node too: placement starts with the kept sandboxes of earlier runs
//! as suspended, and [`Placement::remove`] is the only way a workspace goes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cadre_actors::placement::{
    ActorPlacement, Isolation, LogicalActor, PlaceError, PlacementConfig, PlacementPolicy,
    SandboxSlots, Step, Victim,
};
use cadre_proto::v1::worker_client::WorkerClient;
use cadre_proto::v1::{
    ActivateRequest, ActorActivation, DeliverRequest, PassivateRequest, activation_result,
};
use futures_util::future::join_all;
use tokio::sync::{broadcast, oneshot};
use tonic::transport::Channel;

use crate::{Lease, PoolError, Suspended, WarmPool};

/// Something that happened to placed actors.
#[derive(Debug, Clone, PartialEq)]
pub enum PlacementEvent {
    /// The actor's sandbox died while it was there; it will be placed again on demand.
    Lost {
        /// The actor that was lost.
        actor: LogicalActor,
        /// The id of the sandbox that died.
        sandbox: String,
        /// How the sandbox ended.
        reason: String,
    },
}

/// Why a message could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// Too many activations are already waiting for a slot.
    #[error("{limit} activations are already waiting for a sandbox slot; try again later")]
    QueueFull {
        /// How many may wait.
        limit: usize,
    },
    /// The policy refuses to place the actor.
    #[error(transparent)]
    Refused(#[from] PlaceError),
    /// No sandbox can be leased for the actor's tenant.
    #[error("cannot start a sandbox for tenant `{tenant}`: {reason}")]
    Lease {
        /// The actor's tenant.
        tenant: String,
        /// Why the lease failed.
        reason: String,
    },
    /// The sandbox's worker failed a call for the actor.
    #[error("actor `{actor}` in sandbox `{sandbox}`: {status}")]
    Worker {
        /// The actor's id.
        actor: String,
        /// The sandbox's id.
        sandbox: String,
        /// The worker's error.
        status: tonic::Status,
    },
    /// Placement is shut down.
    #[error("placement is shut down")]
    Closed,
}

/// A message's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The sandbox the actor is in.
    pub sandbox: String,
    /// The actor's answer.
    pub payload: Vec<u8>,
    /// Messages the actor has handled in its life, this one included.
    pub handled: u64,
    /// Whether this message activated the actor.
    pub activated: bool,
    /// Whether it was activated by restoring its suspended sandbox.
    pub restored: bool,
}

/// An active actor held in its slot (it is not passivated while held); dropping it lets go.
pub struct Pinned {
    placement: Placement,
    /// The actor's id.
    pub actor: String,
    /// The sandbox the actor is active in.
    pub sandbox: String,
    /// A client of the sandbox's worker.
    pub worker: WorkerClient<Channel>,
    /// Whether pinning activated the actor.
    pub activated: bool,
    /// Whether it was activated by restoring its suspended sandbox.
    pub restored: bool,
}

/// A sandbox as placement holds it: its worker, and the activations waiting to go to it.
#[derive(Clone)]
struct Held {
    worker: WorkerClient<Channel>,
    activations: Arc<Mutex<Outbox>>,
}

/// Activations waiting for one sandbox. One Activate call per sandbox is in flight at a time,
/// and the activations that arrive meanwhile go together in the next: a busy sandbox is woken
/// once for many of them (under gVisor a wakeup costs far more than an activation's work).
#[derive(Default)]
struct Outbox {
    waiting: Vec<(ActorActivation, oneshot::Sender<Result<(), tonic::Status>>)>,
    sending: bool,
}

/// Passivations a sweep runs at once.
const PASSIVATIONS_AT_ONCE: usize = 64;

/// The placement actor; cheap to clone.
#[derive(Clone)]
pub struct Placement {
    inner: Arc<Inner>,
}

struct Inner {
    pool: WarmPool,
    state: Mutex<State>,
    events: broadcast::Sender<PlacementEvent>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Why sandboxes cannot be checkpointed here, if they cannot; said once in the log.
    cannot_suspend: Option<String>,
    suspend_warned: AtomicBool,
}

struct State {
    policy: PlacementPolicy<Held>,
    /// Activations waiting for a change; all are woken by any change and ask again.
    waiters: VecDeque<oneshot::Sender<()>>,
    /// Exclusive actors whose sandbox is suspended (checkpointed or stopped): the sandbox's id.
    suspended: HashMap<String, String>,
    closed: bool,
}

impl Placement {
    /// The pool placement places on.
    pub fn pool(&self) -> &WarmPool {
        &self.inner.pool
    }

    /// Starts placement on `pool`, with its idle sweeper and its watch on dying sandboxes.
    pub fn start(pool: WarmPool, config: PlacementConfig) -> Self {
        let (events, _) = broadcast::channel(4096);
        let kept = pool.kept().into_iter().map(|(id, owner)| (owner, id));
        let sweep_every =
            (config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let placement = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    policy: PlacementPolicy::new(config),
                    waiters: VecDeque::new(),
                    suspended: kept.collect(),
                    closed: false,
                }),
                cannot_suspend: pool.cannot_suspend(),
                suspend_warned: AtomicBool::new(false),
                pool: pool.clone(),
                events,
                tasks: Mutex::default(),
            }),
        };
        let mut died = pool.subscribe();
        let watcher = placement.clone();
        let watch = tokio::spawn(async move {
            loop {
                match died.recv().await {
                    Ok(dead) => watcher.sandbox_died(&dead.id, &dead.status),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "placement missed sandbox deaths");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let sweeper = placement.clone();
        let sweep = tokio::spawn(async move {
            let mut every = tokio::time::interval(sweep_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let idle = {
                    let mut state = sweeper.lock();
                    // The pool may have room again without placement seeing a sandbox go
                    // (a warm one finished starting): waiting activations ask again.
                    if !state.waiters.is_empty() {
                        state.policy.pool_may_have_room();
                        wake(&mut state);
                    }
                    state.policy.config().idle_timeout
                };
                sweeper.passivate_idle(idle).await;
            }
        });
        *placement.inner.tasks.lock().expect("tasks") = vec![watch, sweep];
        placement
    }

    /// Delivers a message to `actor`, activating it first if it is not active.
    pub async fn send(
        &self,
        actor: &LogicalActor,
        payload: Vec<u8>,
    ) -> Result<Delivered, PlacementError> {
        let pinned = self.pin(actor).await?;
        let answer = pinned
            .worker
            .clone()
            .deliver(DeliverRequest {
                actor_id: actor.id.clone(),
                payload,
            })
            .await
            .map_err(|status| PlacementError::Worker {
                actor: actor.id.clone(),
                sandbox: pinned.sandbox.clone(),
                status,
            })?
            .into_inner();
        Ok(Delivered {
            sandbox: pinned.sandbox.clone(),
            payload: answer.payload,
            handled: answer.handled,
            activated: pinned.activated,
            restored: pinned.restored,
        })
    }

    /// Makes `actor` active (activating it if needed) and holds it in its slot.
    pub async fn pin(&self, actor: &LogicalActor) -> Result<Pinned, PlacementError> {
        let mut queued = false;
        loop {
            let step = {
                let mut state = self.lock();
                if state.closed {
                    return Err(PlacementError::Closed);
                }
                match state.policy.place(actor, Instant::now())? {
                    Step::Wait => {
                        let limit = state.policy.config().queue_limit;
                        if !queued && state.waiters.len() >= limit {
                            return Err(PlacementError::QueueFull { limit });
                        }
                        let (tx, rx) = oneshot::channel();
                        state.waiters.push_back(tx);
                        Err(rx)
                    }
                    step => Ok(step),
                }
            };
            let step = match step {
                Ok(step) => step,
                Err(woken) => {
                    queued = true;
                    let _ = woken.await;
                    continue;
                }
            };
            match step {
                Step::Deliver { sandbox, handle } => {
                    return Ok(self.pinned(actor, sandbox, handle.worker, false, false));
                }
                Step::Activate {
                    sandbox,
                    handle,
                    state,
                } => {
                    let acked = handle
                        .activate(ActorActivation {
                            actor_id: actor.id.clone(),
                            state,
                        })
                        .await;
                    match acked {
                        Ok(()) => {
                            if self.lock().policy.activated(&actor.id, &sandbox) {
                                return Ok(self.pinned(actor, sandbox, handle.worker, true, false));
                            }
                            // Its sandbox died meanwhile: place it again.
                        }
                        Err(status) => {
                            let mut s = self.lock();
                            s.policy
                                .activation_failed(&actor.id, &sandbox, Instant::now());
                            wake(&mut s);
                            return Err(PlacementError::Worker {
                                actor: actor.id.clone(),
                                sandbox,
                                status,
                            });
                        }
                    }
                }
                Step::Acquire { exclusive } => {
                    let (leased, restored) = self.lease(actor, exclusive).await;
                    let mut s = self.lock();
                    let failed = match leased {
                        Ok(lease) if restored => {
                            let (id, worker) = (lease.id, lease.worker);
                            s.policy.add_restored(
                                actor,
                                id.clone(),
                                Held::new(worker.clone()),
                                Instant::now(),
                            );
                            wake(&mut s);
                            drop(s);
                            return Ok(self.pinned(actor, id, worker, true, true));
                        }
                        Ok(lease) => {
                            s.policy.add_sandbox(
                                actor,
                                lease.id,
                                Held::new(lease.worker),
                                Instant::now(),
                            );
                            None
                        }
                        Err(PoolError::Exhausted { .. }) => {
                            s.policy.pool_exhausted(actor);
                            None
                        }
                        Err(e) => {
                            s.policy.lease_failed(actor);
                            Some(e)
                        }
                    };
                    wake(&mut s);
                    drop(s);
                    if let Some(e) = failed {
                        return Err(PlacementError::Lease {
                            tenant: actor.tenant.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
                Step::Passivate(victims) => {
                    join_all(victims.into_iter().map(|v| self.passivate(v))).await;
                }
                Step::Release { sandbox } => {
                    self.inner.pool.release(&sandbox);
                    wake(&mut self.lock());
                }
                Step::Wait => unreachable!("handled above"),
            }
        }
    }

    /// Passivates every actor idle for at least `idle` and releases sandboxes empty that long.
    pub async fn passivate_idle(&self, idle: Duration) {
        let sweep = self.lock().policy.sweep(Instant::now(), idle);
        for sandbox in &sweep.release {
            self.inner.pool.release(sandbox);
        }
        // A bounded number at a time: a sweep may find thousands.
        let mut victims = sweep.passivate.into_iter().peekable();
        while victims.peek().is_some() {
            join_all(
                victims
                    .by_ref()
                    .take(PASSIVATIONS_AT_ONCE)
                    .map(|v| self.passivate(v)),
            )
            .await;
        }
        if !sweep.release.is_empty() {
            wake(&mut self.lock());
        }
    }

    /// Lost actors and other placement events.
    pub fn subscribe(&self) -> broadcast::Receiver<PlacementEvent> {
        self.inner.events.subscribe()
    }

    /// The sandboxes placement holds, with their slots and actors.
    pub fn sandboxes(&self) -> Vec<SandboxSlots> {
        self.lock().policy.sandboxes()
    }

    /// Placed actors (and passive ones too, if `all`).
    pub fn actors(&self, all: bool) -> Vec<ActorPlacement> {
        self.lock().policy.actors(all)
    }

    /// Known actors, and how many of them are passive.
    pub fn counts(&self) -> (usize, usize) {
        self.lock().policy.counts()
    }

    /// Exclusive actors whose sandbox is suspended: (sandbox, actor), in sandbox order.
    pub fn suspended(&self) -> Vec<(String, String)> {
        let mut listed: Vec<(String, String)> = self
            .lock()
            .suspended
            .iter()
            .map(|(actor, sandbox)| (sandbox.clone(), actor.clone()))
            .collect();
        listed.sort();
        listed
    }

    /// Where an actor is, if it is in a sandbox.
    pub fn sandbox_of(&self, actor: &str) -> Option<String> {
        self.lock().policy.sandbox_of(actor).map(str::to_string)
    }

    /// Stops placing: waiting and later activations fail with [`PlacementError::Closed`].
    pub fn shutdown(&self) {
        let mut state = self.lock();
        state.closed = true;
        wake(&mut state);
        drop(state);
        for task in self.inner.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("placement lock")
    }

    fn pinned(
        &self,
        actor: &LogicalActor,
        sandbox: String,
        worker: WorkerClient<Channel>,
        activated: bool,
        restored: bool,
    ) -> Pinned {
        Pinned {
            placement: self.clone(),
            actor: actor.id.clone(),
            sandbox,
            worker,
            activated,
            restored,
        }
    }

    /// Leases a sandbox for `actor`: its own suspended one back, if it has one (true if
    /// restored from its image, false if started afresh on its workspace), or one from the
    /// pool.
    async fn lease(
        &self,
        actor: &LogicalActor,
        exclusive: bool,
    ) -> (Result<Lease, PoolError>, bool) {
        let suspended = if exclusive {
            self.lock().suspended.remove(&actor.id)
        } else {
            None
        };
        let fresh = || async {
            if actor.isolation == Isolation::ExclusiveWithEgress {
                self.inner.pool.acquire_with_egress(&actor.tenant).await
            } else {
                self.inner.pool.acquire(&actor.tenant).await
            }
        };
        let Some(id) = suspended else {
            return (self.fresh_for(actor, exclusive, fresh().await).await, false);
        };
        match self.inner.pool.resume(&id, &actor.tenant).await {
            Ok(resumed) => (Ok(resumed.lease), resumed.restored),
            Err(e @ PoolError::Exhausted { .. }) => {
                self.lock().suspended.insert(actor.id.clone(), id);
                (Err(e), false)
            }
            Err(e) => {
                tracing::warn!(actor = %actor.id, sandbox = %id, error = %e,
                    "cannot start the actor's suspended sandbox again; activating it in a new \
                     sandbox, from its saved state but without its workspace's files");
                (self.fresh_for(actor, exclusive, fresh().await).await, false)
            }
        }
    }

    /// A new sandbox leased for `actor`; an exclusive actor's is kept for it (its workspace
    /// outlives the node), or given back if that cannot be recorded.
    async fn fresh_for(
        &self,
        actor: &LogicalActor,
        exclusive: bool,
        leased: Result<Lease, PoolError>,
    ) -> Result<Lease, PoolError> {
        let lease = leased?;
        if !exclusive {
            return Ok(lease);
        }
        match self.inner.pool.keep(&lease.id, &actor.id).await {
            Ok(()) => Ok(lease),
            Err(e) => {
                self.inner.pool.release(&lease.id);
                Err(PoolError::Start(crate::SandboxError::Unavailable(format!(
                    "cannot record sandbox `{}` as kept for actor `{}`: {e}",
                    lease.id, actor.id
                ))))
            }
        }
    }

    /// Removes an exclusive actor for good: its sandbox stops (if it runs) and its workspace
    /// and saved state are deleted. A shared actor only loses its saved state, if passive.
    pub fn remove(&self, actor: &str) {
        let mut state = self.lock();
        let own = state.suspended.remove(actor).or_else(|| {
            let sandbox = state.policy.sandbox_of(actor)?.to_string();
            let kept = self
                .inner
                .pool
                .kept()
                .into_iter()
                .any(|(id, _)| id == sandbox);
            kept.then(|| {
                state.policy.remove_sandbox(&sandbox);
                sandbox
            })
        });
        state.policy.forget(actor);
        wake(&mut state);
        drop(state);
        if let Some(sandbox) = own {
            self.inner.pool.forget(&sandbox);
        }
    }

    /// Suspends an exclusive actor's own sandbox whole (see the module's docs).
    ///
    /// The actor's state is copied to the node first, so that a sandbox that cannot be
    /// checkpointed, or whose image cannot be restored, is started afresh with the actor as it
    /// was suspended.
    async fn suspend(&self, victim: &Victim<Held>) {
        let state = worker_state(victim, true).await;
        let suspended = self.inner.pool.suspend(&victim.sandbox).await;
        let mut s = self.lock();
        match suspended {
            Ok(how) => {
                if let Suspended::Stopped { why } = how {
                    if self.inner.cannot_suspend.is_none() {
                        tracing::warn!(actor = %victim.actor, sandbox = %victim.sandbox, reason = %why,
                            "cannot checkpoint the actor's sandbox; stopped it instead: it starts \
                             afresh on its workspace on its next message");
                    } else if !self.inner.suspend_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(reason = %why,
                            "idle exclusive actors' sandboxes are stopped instead of checkpointed, \
                             and started afresh on their workspace: their processes and memory are lost");
                    }
                }
                s.suspended
                    .insert(victim.actor.clone(), victim.sandbox.clone());
            }
            Err(e) => {
                tracing::warn!(actor = %victim.actor, sandbox = %victim.sandbox, error = %e,
                    "cannot suspend the actor's sandbox; it is activated in a new sandbox on its \
                     next message, from its saved state");
            }
        }
        // Its sandbox has left the pool either way.
        s.policy
            .passivated(&victim.actor, &victim.sandbox, state, Instant::now());
        wake(&mut s);
    }

    /// Passivates one actor marked by the policy and releases its sandbox if that emptied it.
    async fn passivate(&self, victim: Victim<Held>) {
        cadre_actors::metrics::metrics().passivated();
        if victim.exclusive {
            return self.suspend(&victim).await;
        }
        let state = worker_state(&victim, false).await;
        let mut s = self.lock();
        let release = s
            .policy
            .passivated(&victim.actor, &victim.sandbox, state, Instant::now());
        wake(&mut s);
        drop(s);
        if let Some(sandbox) = release {
            self.inner.pool.release(&sandbox);
        }
    }

    /// Reports the actors of a dead sandbox as lost. An exclusive actor is placed again on its
    /// next message in a sandbox started afresh under the dead one's id, on its workspace, so
    /// that the files stay; a shared sandbox's workspace is removed.
    fn sandbox_died(&self, sandbox: &str, reason: &str) {
        let lost = {
            let mut state = self.lock();
            let lost = state.policy.remove_sandbox(sandbox);
            match lost.iter().find(|a| a.isolation != Isolation::Shared) {
                Some(own) => {
                    state.suspended.insert(own.id.clone(), sandbox.to_string());
                }
                None => self.inner.pool.forget(sandbox),
            }
            wake(&mut state);
            lost
        };
        for actor in lost {
            tracing::warn!(actor = %actor.id, %sandbox, %reason, "actor lost with its sandbox");
            let _ = self.inner.events.send(PlacementEvent::Lost {
                actor,
                sandbox: sandbox.to_string(),
                reason: reason.to_string(),
            });
        }
    }
}

/// The state of an actor marked for passivation, from its worker (`copy`: the actor stays
/// active, else it is passivated there); `None` if the worker does not give it (logged): its
/// last saved state stays.
async fn worker_state(victim: &Victim<Held>, copy: bool) -> Option<Vec<u8>> {
    let request = PassivateRequest {
        actor_id: victim.actor.clone(),
        keep_active: copy,
    };
    match victim.handle.worker.clone().passivate(request).await {
        Ok(answer) => Some(answer.into_inner().state),
        Err(status) => {
            tracing::warn!(actor = %victim.actor, sandbox = %victim.sandbox, %status, copy,
                "the worker did not give the actor's state; keeping its last saved state");
            None
        }
    }
}

impl Held {
    fn new(worker: WorkerClient<Channel>) -> Self {
        Self {
            worker,
            activations: Arc::default(),
        }
    }

    /// Activates one actor in this sandbox, together with the others waiting for it.
    async fn activate(&self, actor: ActorActivation) -> Result<(), tonic::Status> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut outbox = self.activations.lock().expect("outbox");
            outbox.waiting.push((actor, reply));
            !std::mem::replace(&mut outbox.sending, true)
        };
        if lead {
            tokio::spawn(self.clone().send_activations());
        }
        let activated = answer
            .await
            .unwrap_or_else(|_| Err(tonic::Status::cancelled("placement is shut down")));
        if activated.is_ok() {
            cadre_actors::metrics::metrics().activated();
        }
        activated
    }

    /// Sends the waiting activations, one call at a time, until none are left.
    async fn send_activations(self) {
        loop {
            let batch = {
                let mut outbox = self.activations.lock().expect("outbox");
                if outbox.waiting.is_empty() {
                    outbox.sending = false;
                    return;
                }
                std::mem::take(&mut outbox.waiting)
            };
            let (actors, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let asked = actors.len();
            let answered = self
                .worker
                .clone()
                .activate(ActivateRequest { actors })
                .await
                .map(|answer| answer.into_inner().results)
                .and_then(|results| {
                    if results.len() == asked {
                        Ok(results)
                    } else {
                        Err(tonic::Status::internal(format!(
                            "the worker answered {} of {asked} activations",
                            results.len()
                        )))
                    }
                });
            let results = match answered {
                Ok(results) => results,
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                    continue;
                }
            };
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(match result.result {
                    Some(activation_result::Result::Workspace(_)) => Ok(()),
                    Some(activation_result::Result::Error(e)) => {
                        Err(tonic::Status::new(tonic::Code::from(e.code), e.message))
                    }
                    None => Err(tonic::Status::internal(
                        "the worker's answer to an activation is empty",
                    )),
                });
            }
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut state = self.placement.lock();
        state.policy.done(&self.actor, Instant::now());
        if !state.waiters.is_empty() {
            wake(&mut state);
        }
    }
}

/// Wakes every waiting activation to ask again.
fn wake(state: &mut State) {
    for waiter in state.waiters.drain(..) {
        let _ = waiter.send(());
    }
}
