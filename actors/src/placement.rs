//! Placement policy: which sandbox slot a logical actor is activated in, which idle actor makes
//! room for it, and when an activation waits. No I/O happens here: the placement actor
//! (`cadre_sandbox::Placement`) asks [`PlacementPolicy::place`] what to do, does it (a worker
//! RPC, a pool lease), and reports the outcome back.
//!
//! The rules, in the order they are tried for an actor that is not active:
//! 1. a free slot in a shared sandbox of the actor's tenant (the least loaded one);
//! 2. a new sandbox from the pool, unless the pool said it is exhausted or the tenant is
//!    already waiting for one;
//! 3. passivate the tenant's least recently used idle actor and take its slot;
//! 4. passivate every actor of another tenant's sandbox in which none is busy, and release that
//!    sandbox so the pool can start one for this tenant;
//! 5. wait (the caller bounds the queue).
//!
//! Actors of different tenants never share a sandbox, and an `exclusive` actor always gets a
//! sandbox of its own, released when the actor is passivated.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How sandboxes are shared and when idle actors are passivated.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementConfig {
    /// Logical actors one shared sandbox hosts at once.
    pub slots_per_sandbox: usize,
    /// An actor idle this long is passivated; a sandbox empty this long is released.
    pub idle_timeout: Duration,
    /// Activations that may wait for a slot; past that they are refused.
    pub queue_limit: usize,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            slots_per_sandbox: 64,
            idle_timeout: Duration::from_secs(60),
            queue_limit: 1024,
        }
    }
}

/// Whether an actor may share a sandbox with others of its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Shares a sandbox with other actors of its tenant.
    #[default]
    Shared,
    /// A sandbox of its own.
    Exclusive,
    /// A sandbox of its own that may open network connections (egress is opt-in per actor,
    /// and never shared with an actor that did not opt in).
    ExclusiveWithEgress,
}

impl Isolation {
    /// Whether the actor has a sandbox of its own.
    pub fn is_exclusive(self) -> bool {
        self != Isolation::Shared
    }
}

/// A logical actor as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalActor {
    /// The actor's id.
    pub id: String,
    /// The tenant it belongs to; actors of different tenants never share a sandbox.
    pub tenant: String,
    /// Whether it may share a sandbox.
    pub isolation: Isolation,
}

/// What the placement actor does next for one actor. `H` is the handle of a sandbox (its
/// worker client).
#[derive(Debug, Clone, PartialEq)]
pub enum Step<H> {
    /// The actor is active in `sandbox` and now pinned there: deliver, then report
    /// [`PlacementPolicy::done`].
    Deliver {
        /// The sandbox it is active in.
        sandbox: String,
        /// That sandbox's handle.
        handle: H,
    },
    /// A slot in `sandbox` is claimed: activate the actor with `state`, then report
    /// [`PlacementPolicy::activated`] or [`PlacementPolicy::activation_failed`].
    Activate {
        /// The sandbox with the claimed slot.
        sandbox: String,
        /// That sandbox's handle.
        handle: H,
        /// The state its last passivation returned (empty at first).
        state: Vec<u8>,
    },
    /// Lease a sandbox for the actor's tenant, then report [`PlacementPolicy::add_sandbox`] or
    /// [`PlacementPolicy::pool_exhausted`].
    Acquire {
        /// The sandbox is for this actor alone.
        exclusive: bool,
    },
    /// Passivate these actors (marked passivating), report each with
    /// [`PlacementPolicy::passivated`], and ask again.
    Passivate(Vec<Victim<H>>),
    /// Release this empty sandbox (already removed from the table) and ask again.
    Release {
        /// The sandbox to release.
        sandbox: String,
    },
    /// Nothing can be done now: wait for a change and ask again.
    Wait,
}

/// An actor to passivate, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Victim<H> {
    /// The actor's id.
    pub actor: String,
    /// The sandbox it is in.
    pub sandbox: String,
    /// That sandbox's handle.
    pub handle: H,
    /// The sandbox is the actor's own: it can be suspended whole instead.
    pub exclusive: bool,
}

/// Where an actor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorState {
    /// Not in any sandbox; its state is kept here.
    Passive,
    /// An exclusive actor waiting for its own sandbox.
    Leasing,
    /// A slot in `sandbox` is claimed and it is being activated there.
    Activating {
        /// The sandbox it is being activated in.
        sandbox: String,
    },
    /// `busy` messages are being delivered to it.
    Active {
        /// The sandbox it is active in.
        sandbox: String,
        /// Deliveries in progress; 0 means idle, so it may be passivated.
        busy: u32,
    },
    /// It is being passivated and still holds its slot in `sandbox`.
    Passivating {
        /// The sandbox it is leaving.
        sandbox: String,
    },
}

/// One actor in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorPlacement {
    /// The actor's id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Whether it may share a sandbox.
    pub isolation: Isolation,
    /// Where it is.
    pub state: ActorState,
    /// Bytes of state kept while passive.
    pub state_bytes: usize,
}

/// One sandbox in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSlots {
    /// The sandbox's id.
    pub id: String,
    /// The tenant whose actors it hosts.
    pub tenant: String,
    /// Leased for one exclusive actor.
    pub exclusive: bool,
    /// Actors it can host at once (1 if exclusive).
    pub slots: usize,
    /// Slots in use (actors activating, active or passivating).
    pub used: usize,
    /// Ids of the actors in it (sorted).
    pub actors: Vec<String>,
}

/// Idle actors and sandboxes found by [`PlacementPolicy::sweep`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep<H> {
    /// Idle actors to passivate (already marked passivating).
    pub passivate: Vec<Victim<H>>,
    /// Sandboxes to release (already removed from the policy).
    pub release: Vec<String>,
}

/// The placement table. Not thread-safe by itself: the placement actor owns it.
pub struct PlacementPolicy<H> {
    config: PlacementConfig,
    actors: HashMap<String, Entry>,
    sandboxes: HashMap<String, SandboxEntry<H>>,
    /// Idle active actors of shared sandboxes per tenant, least recently used first.
    lru: HashMap<Arc<str>, BTreeSet<(u64, String)>>,
    /// Tenants with a lease in progress.
    acquiring: HashMap<Arc<str>, usize>,
    /// The pool refused a lease; cleared when a sandbox goes away.
    pool_exhausted: bool,
    tick: u64,
}

struct Entry {
    tenant: Arc<str>,
    isolation: Isolation,
    state: ActorState,
    /// Kept while passive; what the last passivation returned.
    saved: Vec<u8>,
    /// When it last finished a message (LRU order and idle timeout).
    tick: u64,
    last_used: Instant,
}

struct SandboxEntry<H> {
    tenant: Arc<str>,
    handle: H,
    /// The actor it was leased for, if exclusive.
    exclusive: Option<String>,
    actors: BTreeSet<String>,
    /// When it last became empty.
    empty_since: Instant,
    /// Its actors are being passivated so it can be released.
    reclaiming: bool,
}

impl<H: Clone> PlacementPolicy<H> {
    /// An empty table.
    pub fn new(config: PlacementConfig) -> Self {
        Self {
            config,
            actors: HashMap::new(),
            sandboxes: HashMap::new(),
            lru: HashMap::new(),
            acquiring: HashMap::new(),
            pool_exhausted: false,
            tick: 0,
        }
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// What to do for a message to `actor`. An actor seen for the first time is registered
    /// (passive, empty state); an actor's tenant and isolation never change.
    pub fn place(&mut self, actor: &LogicalActor, now: Instant) -> Result<Step<H>, PlaceError> {
        let entry = match self.actors.get(&actor.id) {
            Some(entry) => {
                if *entry.tenant != *actor.tenant || entry.isolation != actor.isolation {
                    return Err(PlaceError::Mismatch {
                        actor: actor.id.clone(),
                        tenant: entry.tenant.to_string(),
                    });
                }
                entry
            }
            None => {
                let tenant = self.tenant(&actor.tenant);
                self.actors.insert(
                    actor.id.clone(),
                    Entry {
                        tenant,
                        isolation: actor.isolation,
                        state: ActorState::Passive,
                        saved: Vec::new(),
                        tick: 0,
                        last_used: now,
                    },
                );
                &self.actors[&actor.id]
            }
        };
        match &entry.state {
            ActorState::Active { sandbox, .. } => {
                let sandbox = sandbox.clone();
                self.pin(&actor.id);
                let handle = self.sandboxes[&sandbox].handle.clone();
                return Ok(Step::Deliver { sandbox, handle });
            }
            ActorState::Leasing
            | ActorState::Activating { .. }
            | ActorState::Passivating { .. } => return Ok(Step::Wait),
            ActorState::Passive => {}
        }
        let tenant = entry.tenant.clone();
        if actor.isolation.is_exclusive() {
            let own = self
                .sandboxes
                .iter()
                .find(|(_, s)| s.exclusive.as_deref() == Some(&actor.id))
                .map(|(id, _)| id.clone());
            if let Some(sandbox) = own {
                return Ok(self.claim(&actor.id, &sandbox));
            }
            if !self.pool_exhausted {
                self.set_state(&actor.id, ActorState::Leasing);
                return Ok(Step::Acquire { exclusive: true });
            }
            return Ok(self.reclaim(&tenant, true).unwrap_or(Step::Wait));
        }
        let free = self
            .sandboxes
            .iter()
            .filter(|(_, s)| {
                s.tenant == tenant
                    && s.exclusive.is_none()
                    && !s.reclaiming
                    && s.actors.len() < self.config.slots_per_sandbox
            })
            .min_by_key(|(id, s)| (s.actors.len(), (*id).clone()))
            .map(|(id, _)| id.clone());
        if let Some(sandbox) = free {
            return Ok(self.claim(&actor.id, &sandbox));
        }
        let leasing = self.acquiring.get(&tenant).copied().unwrap_or(0) > 0;
        if !self.pool_exhausted && !leasing {
            *self.acquiring.entry(tenant).or_default() += 1;
            return Ok(Step::Acquire { exclusive: false });
        }
        if let Some(victim) = self.least_recently_used(&tenant) {
            return Ok(Step::Passivate(vec![victim]));
        }
        if leasing {
            return Ok(Step::Wait);
        }
        Ok(self.reclaim(&tenant, false).unwrap_or(Step::Wait))
    }

    /// A lease for `actor`'s tenant arrived: the sandbox joins the table (for `actor` alone if
    /// it is exclusive).
    pub fn add_sandbox(&mut self, actor: &LogicalActor, sandbox: String, handle: H, now: Instant) {
        let tenant = self.tenant(&actor.tenant);
        self.lease_ended(actor);
        let exclusive = actor.isolation.is_exclusive().then(|| actor.id.clone());
        self.sandboxes.insert(
            sandbox,
            SandboxEntry {
                tenant,
                handle,
                exclusive,
                actors: BTreeSet::new(),
                empty_since: now,
                reclaiming: false,
            },
        );
    }

    /// An exclusive actor's suspended sandbox was restored: the actor is active in it again,
    /// as it was, and pinned for the message that restored it.
    pub fn add_restored(&mut self, actor: &LogicalActor, sandbox: String, handle: H, now: Instant) {
        self.add_sandbox(actor, sandbox.clone(), handle, now);
        self.claim(&actor.id, &sandbox);
        self.activated(&actor.id, &sandbox);
    }

    /// The pool had no sandbox to lease; until one goes away, room is made by passivation.
    pub fn pool_exhausted(&mut self, actor: &LogicalActor) {
        self.lease_ended(actor);
        self.pool_exhausted = true;
    }

    /// The pool may have room again (it refilled, or a sandbox it leased elsewhere went):
    /// leases are tried again.
    pub fn pool_may_have_room(&mut self) {
        self.pool_exhausted = false;
    }

    /// A lease failed for another reason (the sandbox did not start).
    pub fn lease_failed(&mut self, actor: &LogicalActor) {
        self.lease_ended(actor);
    }

    /// The worker acknowledged the activation: the actor is active and pinned for the message
    /// that activated it (report [`PlacementPolicy::done`] after it). False if the actor is no
    /// longer activating there (its sandbox died meanwhile).
    pub fn activated(&mut self, actor: &str, sandbox: &str) -> bool {
        match self.actors.get_mut(actor) {
            Some(entry)
                if entry.state
                    == (ActorState::Activating {
                        sandbox: sandbox.into(),
                    }) =>
            {
                entry.state = ActorState::Active {
                    sandbox: sandbox.into(),
                    busy: 1,
                };
                true
            }
            _ => false,
        }
    }

    /// The activation failed: the slot is free again and the actor stays passive.
    pub fn activation_failed(&mut self, actor: &str, sandbox: &str, now: Instant) {
        if let Some(entry) = self.actors.get_mut(actor)
            && entry.state
                == (ActorState::Activating {
                    sandbox: sandbox.into(),
                })
        {
            entry.state = ActorState::Passive;
            self.leave(actor, sandbox, now);
        }
    }

    /// A message to an actor pinned by [`Step::Deliver`] was handled (or failed).
    pub fn done(&mut self, actor: &str, now: Instant) {
        self.tick += 1;
        let tick = self.tick;
        let Some(entry) = self.actors.get_mut(actor) else {
            return;
        };
        let ActorState::Active { sandbox, busy } = &mut entry.state else {
            return;
        };
        *busy = busy.saturating_sub(1);
        entry.last_used = now;
        if *busy == 0 {
            entry.tick = tick;
            let exclusive = self
                .sandboxes
                .get(sandbox.as_str())
                .is_some_and(|s| s.exclusive.is_some());
            if !exclusive {
                self.lru
                    .entry(entry.tenant.clone())
                    .or_default()
                    .insert((tick, actor.to_string()));
            }
        }
    }

    /// A passivation ended: with the actor's state, or `None` if the worker did not return it
    /// (the state of its last passivation is kept). Returns a sandbox to release: an exclusive
    /// actor's own, or the last actor of a reclaimed one.
    pub fn passivated(
        &mut self,
        actor: &str,
        sandbox: &str,
        state: Option<Vec<u8>>,
        now: Instant,
    ) -> Option<String> {
        let entry = self.actors.get_mut(actor)?;
        if entry.state
            != (ActorState::Passivating {
                sandbox: sandbox.into(),
            })
        {
            return None;
        }
        entry.state = ActorState::Passive;
        if let Some(state) = state {
            entry.saved = state;
        }
        self.leave(actor, sandbox, now);
        let s = self.sandboxes.get(sandbox)?;
        if s.actors.is_empty() && (s.exclusive.is_some() || s.reclaiming) {
            self.sandboxes.remove(sandbox);
            self.pool_exhausted = false;
            return Some(sandbox.to_string());
        }
        None
    }

    /// A sandbox is gone (it died, or was released). Returns the actors that were in it: they
    /// are passive again with the state of their last passivation.
    pub fn remove_sandbox(&mut self, sandbox: &str) -> Vec<LogicalActor> {
        let Some(s) = self.sandboxes.remove(sandbox) else {
            return Vec::new();
        };
        self.pool_exhausted = false;
        let mut lost = Vec::new();
        for id in s.actors {
            let Some(entry) = self.actors.get_mut(&id) else {
                continue;
            };
            entry.state = ActorState::Passive;
            if let Some(lru) = self.lru.get_mut(&entry.tenant) {
                lru.remove(&(entry.tick, id.clone()));
            }
            lost.push(LogicalActor {
                id,
                tenant: entry.tenant.to_string(),
                isolation: entry.isolation,
            });
        }
        lost
    }

    /// Marks actors idle for at least `idle` for passivation, and removes sandboxes empty
    /// that long.
    pub fn sweep(&mut self, now: Instant, idle: Duration) -> Sweep<H> {
        let expired: Vec<String> = self
            .actors
            .iter()
            .filter(|(_, e)| {
                matches!(e.state, ActorState::Active { busy: 0, .. })
                    && now.duration_since(e.last_used) >= idle
            })
            .map(|(id, _)| id.clone())
            .collect();
        let passivate = expired
            .into_iter()
            .filter_map(|id| self.start_passivation(&id))
            .collect();
        let empty: Vec<String> = self
            .sandboxes
            .iter()
            .filter(|(_, s)| s.actors.is_empty() && now.duration_since(s.empty_since) >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &empty {
            self.sandboxes.remove(id);
        }
        if !empty.is_empty() {
            self.pool_exhausted = false;
        }
        Sweep {
            passivate,
            release: empty,
        }
    }

    /// Every actor that is not passive, plus passive ones if `all`.
    pub fn actors(&self, all: bool) -> Vec<ActorPlacement> {
        let mut listed: Vec<ActorPlacement> = self
            .actors
            .iter()
            .filter(|(_, e)| all || e.state != ActorState::Passive)
            .map(|(id, e)| ActorPlacement {
                id: id.clone(),
                tenant: e.tenant.to_string(),
                isolation: e.isolation,
                state: e.state.clone(),
                state_bytes: e.saved.len(),
            })
            .collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        listed
    }

    /// Number of known actors and of those passive.
    pub fn counts(&self) -> (usize, usize) {
        let passive = self
            .actors
            .values()
            .filter(|e| e.state == ActorState::Passive)
            .count();
        (self.actors.len(), passive)
    }

    /// The sandbox an actor is in, if any.
    pub fn sandbox_of(&self, actor: &str) -> Option<&str> {
        match &self.actors.get(actor)?.state {
            ActorState::Passive | ActorState::Leasing => None,
            ActorState::Activating { sandbox }
            | ActorState::Active { sandbox, .. }
            | ActorState::Passivating { sandbox } => Some(sandbox),
        }
    }

    /// Every sandbox placement holds, in id order.
    pub fn sandboxes(&self) -> Vec<SandboxSlots> {
        let mut listed: Vec<SandboxSlots> = self
            .sandboxes
            .iter()
            .map(|(id, s)| SandboxSlots {
                id: id.clone(),
                tenant: s.tenant.to_string(),
                exclusive: s.exclusive.is_some(),
                slots: if s.exclusive.is_some() {
                    1
                } else {
                    self.config.slots_per_sandbox
                },
                used: s.actors.len(),
                actors: s.actors.iter().cloned().collect(),
            })
            .collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        listed
    }

    /// Forgets a passive actor (its saved state with it). False if it is placed somewhere.
    pub fn forget(&mut self, actor: &str) -> bool {
        match self.actors.get(actor) {
            Some(e) if e.state == ActorState::Passive => {
                self.actors.remove(actor);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// The shared name of a tenant (one allocation per tenant, not per actor).
    fn tenant(&mut self, tenant: &str) -> Arc<str> {
        if let Some((name, _)) = self.lru.get_key_value(tenant) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(tenant);
        self.lru.insert(name.clone(), BTreeSet::new());
        name
    }

    /// A lease asked for by `actor` arrived or failed.
    fn lease_ended(&mut self, actor: &LogicalActor) {
        if actor.isolation.is_exclusive() {
            if self.actors.get(&actor.id).map(|e| &e.state) == Some(&ActorState::Leasing) {
                self.set_state(&actor.id, ActorState::Passive);
            }
            return;
        }
        if let Some(n) = self.acquiring.get_mut(actor.tenant.as_str()) {
            *n -= 1;
            if *n == 0 {
                self.acquiring.remove(actor.tenant.as_str());
            }
        }
    }

    fn set_state(&mut self, actor: &str, state: ActorState) {
        if let Some(entry) = self.actors.get_mut(actor) {
            entry.state = state;
        }
    }

    /// Claims a slot in `sandbox` for a passive actor.
    fn claim(&mut self, actor: &str, sandbox: &str) -> Step<H> {
        let entry = self.actors.get_mut(actor).expect("a known actor");
        entry.state = ActorState::Activating {
            sandbox: sandbox.into(),
        };
        let state = entry.saved.clone();
        let s = self.sandboxes.get_mut(sandbox).expect("a known sandbox");
        s.actors.insert(actor.to_string());
        Step::Activate {
            sandbox: sandbox.to_string(),
            handle: s.handle.clone(),
            state,
        }
    }

    /// Pins an active actor for a delivery (it is not evictable meanwhile).
    fn pin(&mut self, actor: &str) {
        let entry = self.actors.get_mut(actor).expect("a known actor");
        if let ActorState::Active { busy, .. } = &mut entry.state {
            if *busy == 0
                && let Some(lru) = self.lru.get_mut(&entry.tenant)
            {
                lru.remove(&(entry.tick, actor.to_string()));
            }
            *busy += 1;
        }
    }

    /// Frees `actor`'s slot in `sandbox`.
    fn leave(&mut self, actor: &str, sandbox: &str, now: Instant) {
        if let Some(s) = self.sandboxes.get_mut(sandbox) {
            s.actors.remove(actor);
            if s.actors.is_empty() {
                s.empty_since = now;
            }
        }
    }

    /// Marks an idle active actor passivating.
    fn start_passivation(&mut self, actor: &str) -> Option<Victim<H>> {
        let entry = self.actors.get_mut(actor)?;
        let ActorState::Active { sandbox, busy: 0 } = &entry.state else {
            return None;
        };
        let sandbox = sandbox.clone();
        if let Some(lru) = self.lru.get_mut(&entry.tenant) {
            lru.remove(&(entry.tick, actor.to_string()));
        }
        entry.state = ActorState::Passivating {
            sandbox: sandbox.clone(),
        };
        let s = &self.sandboxes[&sandbox];
        Some(Victim {
            actor: actor.to_string(),
            handle: s.handle.clone(),
            exclusive: s.exclusive.is_some(),
            sandbox,
        })
    }

    fn least_recently_used(&mut self, tenant: &Arc<str>) -> Option<Victim<H>> {
        let (_, actor) = self.lru.get(tenant)?.first()?.clone();
        self.start_passivation(&actor)
    }

    /// Picks a sandbox of another tenant (or any, with `own`) in which every actor is idle
    /// (the one used least recently) and marks its actors for passivation, so the sandbox can
    /// be released.
    fn reclaim(&mut self, tenant: &Arc<str>, own: bool) -> Option<Step<H>> {
        let idle = |s: &SandboxEntry<H>| {
            s.actors.iter().all(|a| {
                matches!(
                    self.actors.get(a).map(|e| &e.state),
                    Some(ActorState::Active { busy: 0, .. })
                )
            })
        };
        let last_use = |s: &SandboxEntry<H>| {
            s.actors
                .iter()
                .filter_map(|a| self.actors.get(a).map(|e| e.tick))
                .max()
                .unwrap_or(0)
        };
        let (sandbox, _) = self
            .sandboxes
            .iter()
            .filter(|(_, s)| (own || s.tenant != *tenant) && !s.reclaiming && idle(s))
            .min_by_key(|(id, s)| (last_use(s), (*id).clone()))?;
        let sandbox = sandbox.clone();
        let s = self.sandboxes.get_mut(&sandbox).expect("just found");
        if s.actors.is_empty() {
            self.sandboxes.remove(&sandbox);
            self.pool_exhausted = false;
            return Some(Step::Release { sandbox });
        }
        s.reclaiming = true;
        let actors: Vec<String> = s.actors.iter().cloned().collect();
        let victims = actors
            .iter()
            .filter_map(|a| self.start_passivation(a))
            .collect();
        Some(Step::Passivate(victims))
    }
}

/// Why an actor cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The actor is already known with another tenant or isolation.
    #[error(
        "actor `{actor}` belongs to tenant `{tenant}` with another isolation; an actor's tenant and isolation never change"
    )]
    Mismatch {
        /// The actor's id.
        actor: String,
        /// The tenant it is known under.
        tenant: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: &str, tenant: &str) -> LogicalActor {
        LogicalActor {
            id: id.into(),
            tenant: tenant.into(),
            isolation: Isolation::Shared,
        }
    }

    fn policy(slots: usize) -> PlacementPolicy<u32> {
        PlacementPolicy::new(PlacementConfig {
            slots_per_sandbox: slots,
            idle_timeout: Duration::from_secs(10),
            queue_limit: 8,
        })
    }

    /// Places and activates `a`, leasing sandbox `lease` if asked to.
    fn activate(
        p: &mut PlacementPolicy<u32>,
        a: &LogicalActor,
        lease: &str,
        now: Instant,
    ) -> String {
        loop {
            match p.place(a, now).unwrap() {
                Step::Activate { sandbox, .. } => {
                    assert!(p.activated(&a.id, &sandbox));
                    p.done(&a.id, now);
                    return sandbox;
                }
                Step::Acquire { .. } => p.add_sandbox(a, lease.into(), 0, now),
                Step::Release { sandbox } => assert_ne!(sandbox, lease),
                Step::Passivate(victims) => {
                    for v in victims {
                        if let Some(released) =
                            p.passivated(&v.actor, &v.sandbox, Some(vec![1]), now)
                        {
                            p.remove_sandbox(&released);
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn fills_a_tenants_sandbox_then_leases_another_then_evicts_the_least_recently_used() {
        let now = Instant::now();
        let mut p = policy(2);
        let (a, b, c, d) = (
            actor("a", "t"),
            actor("b", "t"),
            actor("c", "t"),
            actor("d", "t"),
        );
        assert_eq!(activate(&mut p, &a, "s1", now), "s1");
        assert_eq!(activate(&mut p, &b, "s1", now), "s1");
        assert_eq!(activate(&mut p, &c, "s2", now), "s2");
        for x in [&a, &b, &c] {
            assert!(matches!(p.place(x, now).unwrap(), Step::Deliver { .. }));
        }
        // Used in the order b, a, c: b is now the least recently used.
        p.done("b", now);
        p.done("a", now);
        p.done("c", now);
        assert_eq!(
            activate(&mut p, &d, "none", now),
            "s2",
            "s2 has a free slot"
        );
        let e = actor("e", "t");
        assert!(matches!(p.place(&e, now).unwrap(), Step::Acquire { .. }));
        p.pool_exhausted(&e);
        let Step::Passivate(victims) = p.place(&e, now).unwrap() else {
            panic!("expected an eviction")
        };
        assert_eq!(victims.len(), 1);
        assert_eq!(victims[0].actor, "b");
        assert_eq!(p.place(&b, now).unwrap(), Step::Wait, "b is passivating");
        assert_eq!(p.passivated("b", "s1", Some(vec![7]), now), None);
        assert_eq!(activate(&mut p, &e, "none", now), "s1", "b's slot");
        let Step::Passivate(victims) = p.place(&b, now).unwrap() else {
            panic!("expected an eviction")
        };
        assert_eq!(victims[0].actor, "a", "a is now the least recently used");
        assert_eq!(p.passivated("a", "s1", Some(vec![8]), now), None);
        let Step::Activate { sandbox, state, .. } = p.place(&b, now).unwrap() else {
            panic!("expected a's slot")
        };
        assert_eq!(
            (sandbox.as_str(), state),
            ("s1", vec![7]),
            "b's saved state"
        );
    }

    #[test]
    fn tenants_never_share_and_an_idle_tenant_gives_its_sandbox_up() {
        let now = Instant::now();
        let mut p = policy(4);
        let (a, x) = (actor("a", "t1"), actor("x", "t2"));
        activate(&mut p, &a, "s1", now);
        assert!(
            matches!(p.place(&x, now).unwrap(), Step::Acquire { .. }),
            "never s1"
        );
        p.pool_exhausted(&x);
        // Every actor in t1's sandbox is idle, so it is reclaimed for t2.
        let Step::Passivate(victims) = p.place(&x, now).unwrap() else {
            panic!("expected a reclaim")
        };
        assert_eq!(victims[0].actor, "a");
        assert_eq!(
            p.passivated("a", "s1", Some(vec![]), now),
            Some("s1".into())
        );
        assert!(matches!(p.place(&x, now).unwrap(), Step::Acquire { .. }));
        p.add_sandbox(&x, "s2".into(), 0, now);
        assert!(matches!(p.place(&x, now).unwrap(), Step::Activate { .. }));
        assert!(p.sandboxes().iter().all(|s| s.tenant == "t2"));
    }

    #[test]
    fn a_busy_actor_is_never_evicted_so_the_activation_waits() {
        let now = Instant::now();
        let mut p = policy(1);
        let (a, b) = (actor("a", "t"), actor("b", "t"));
        activate(&mut p, &a, "s1", now);
        assert!(matches!(p.place(&a, now).unwrap(), Step::Deliver { .. }));
        assert!(matches!(p.place(&b, now).unwrap(), Step::Acquire { .. }));
        assert_eq!(
            p.place(&actor("c", "t"), now).unwrap(),
            Step::Wait,
            "one lease at a time"
        );
        p.pool_exhausted(&b);
        assert_eq!(p.place(&b, now).unwrap(), Step::Wait);
        p.done("a", now);
        assert!(matches!(p.place(&b, now).unwrap(), Step::Passivate(_)));
    }

    #[test]
    fn exclusive_actors_get_a_sandbox_each_released_on_passivation() {
        let now = Instant::now();
        let mut p = policy(8);
        let x = LogicalActor {
            isolation: Isolation::Exclusive,
            ..actor("x", "t")
        };
        let a = actor("a", "t");
        assert!(matches!(
            p.place(&x, now).unwrap(),
            Step::Acquire { exclusive: true }
        ));
        assert_eq!(
            p.place(&x, now).unwrap(),
            Step::Wait,
            "one lease per exclusive actor"
        );
        p.add_sandbox(&x, "sx".into(), 0, now);
        assert_eq!(activate(&mut p, &x, "none", now), "sx");
        assert_eq!(activate(&mut p, &a, "sa", now), "sa", "not in x's sandbox");
        let later = now + Duration::from_secs(11);
        let sweep = p.sweep(later, Duration::from_secs(10));
        let mut passivated: Vec<_> = sweep.passivate.iter().map(|v| v.actor.clone()).collect();
        passivated.sort();
        assert_eq!(passivated, ["a", "x"]);
        assert_eq!(
            p.passivated("x", "sx", Some(vec![]), later),
            Some("sx".into())
        );
        assert_eq!(p.passivated("a", "sa", Some(vec![]), later), None);
        let sweep = p.sweep(later + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(sweep.release, ["sa"]);
        assert!(p.sandboxes().is_empty());
    }

    #[test]
    fn a_dead_sandbox_hands_back_its_actors_with_their_saved_state() {
        let now = Instant::now();
        let mut p = policy(4);
        let a = actor("a", "t");
        activate(&mut p, &a, "s1", now);
        p.done("a", now);
        let sweep = p.sweep(now + Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(p.passivated("a", "s1", Some(vec![5]), now), None);
        assert_eq!(sweep.passivate.len(), 1);
        activate(&mut p, &a, "s1", now);
        assert_eq!(p.remove_sandbox("s1"), vec![a.clone()]);
        assert!(
            !p.activated("a", "s1"),
            "a stale acknowledgement changes nothing"
        );
        let Step::Acquire { .. } = p.place(&a, now).unwrap() else {
            panic!("expected a new lease")
        };
        p.add_sandbox(&a, "s2".into(), 0, now);
        let Step::Activate { state, .. } = p.place(&a, now).unwrap() else {
            panic!("expected an activation")
        };
        assert_eq!(state, vec![5]);
        assert_eq!(
            p.place(&actor("a", "other"), now),
            Err(PlaceError::Mismatch {
                actor: "a".into(),
                tenant: "t".into()
            })
        );
    }
}
