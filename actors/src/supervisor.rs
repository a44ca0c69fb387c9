//! An Erlang/OTP `supervisor` on ractor.
//!
//! ractor's own linking reports child exits but restarts nothing and kills a subtree without
//! ordered shutdown, so the rules here follow `supervisor.erl`: children start in order and stop
//! in reverse order; a restart is counted at failure time in a sliding `period` window and one
//! more than `intensity` makes the supervisor terminate every child and fail to its parent;
//! `one_for_all`/`rest_for_one` terminate the affected group in reverse order, drop temporary
//! children from it and start the rest again in order; a child that fails to restart is retried
//! through the mailbox and each retry counts as a restart.
//!
//! One deliberate difference: OTP exits with reason `shutdown` when the intensity is exceeded,
//! which a transient parent would not restart. cadre fails with `reached_max_restart_intensity`
//! so that the parent always sees a failure and escalation goes up the tree.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RactorErr, RpcReplyPort,
    SupervisionEvent, rpc::CallResult,
};
use rand::Rng;

use crate::child::{ChildSpec, StartContext, StartError, Started};
use crate::spec::{
    ActorKind, AutoShutdown, ChildCounts, ChildExit, ChildInfo, ChildStatus, ChildType, ExitReason,
    Restart, Shutdown, Strategy, SupervisorError, SupervisorFlags,
};
use crate::tree::{Change, Supervision, Tree};

/// The exit reason of a supervisor that exceeded its restart intensity.
pub const REACHED_MAX_RESTART_INTENSITY: &str = "reached_max_restart_intensity";

/// Handle to a running supervisor.
#[derive(Clone, Debug)]
pub struct SupervisorRef(ActorRef<SupervisorMsg>);

impl Tree {
    /// The running supervisor at `path` (a handle to start and stop its children) and its
    /// flags.
    pub fn supervisor(&self, path: &str) -> Option<(SupervisorRef, SupervisorFlags)> {
        let (cell, flags) = self.supervisor_cell(path)?;
        Some((SupervisorRef(ActorRef::from(cell)), flags))
    }
}

/// Arguments that start a supervisor.
pub struct SupervisorArgs {
    /// Path of this supervisor, e.g. `root` or `root/tools`.
    pub path: String,
    /// Its flags.
    pub flags: SupervisorFlags,
    /// Children in start order.
    pub children: Vec<ChildSpec>,
    /// The node's live tree, in which it records its children.
    pub tree: Tree,
}

/// The supervisor actor. Use [`SupervisorRef::start_root`] or [`supervisor_child`].
pub struct Supervisor;

/// Messages a supervisor handles; [`SupervisorRef`] wraps them in typed calls.
pub enum SupervisorMsg {
    /// `start_child`: add a child at the end of the start order and start it.
    StartChild(ChildSpec, RpcReplyPort<Result<ChildInfo, SupervisorError>>),
    /// `terminate_child`: terminate the child with this id.
    TerminateChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    /// `restart_child`: start a terminated child again.
    RestartChild(String, RpcReplyPort<Result<ChildInfo, SupervisorError>>),
    /// `delete_child`: remove a terminated child's spec.
    DeleteChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    /// `which_children`: every child, in start order.
    WhichChildren(RpcReplyPort<Vec<ChildInfo>>),
    /// `count_children`: counts of specs, running children, supervisors and workers.
    CountChildren(RpcReplyPort<ChildCounts>),
    /// A start that failed during a restart is tried again; this counts as another restart.
    TryAgainRestart(String),
    /// The backoff delay of a restart has passed: start the group now.
    BackoffElapsed(String),
}

// Never sent to another node (ractor's `cluster` feature asks each message type).
impl ractor::Message for SupervisorMsg {}

/// The supervisor's state: its children in start order and its recent restarts.
pub struct SupervisorState {
    myself: ActorRef<SupervisorMsg>,
    path: String,
    flags: SupervisorFlags,
    order: Vec<String>,
    children: HashMap<String, Child>,
    by_actor: HashMap<ActorId, String>,
    restarts: VecDeque<Instant>,
    tree: Tree,
}

struct Child {
    spec: ChildSpec,
    path: String,
    status: ChildStatus,
    instance: Option<Started>,
    /// Instances started so far; `restarts` is this minus one.
    starts: u32,
}

/// What the supervisor does after handling an exit.
enum Flow {
    Continue,
    /// Restart intensity exceeded: every child is terminated; fail to the parent.
    Escalate,
    /// A significant child's exit asks the supervisor to shut down normally.
    AutoShutdown,
}

/// A supervisor as a child of another supervisor (type supervisor, shutdown infinity).
pub fn supervisor_child(
    id: impl Into<String>,
    flags: SupervisorFlags,
    children: Vec<ChildSpec>,
) -> ChildSpec {
    let start = move |ctx: StartContext| -> crate::child::StartFuture {
        let flags = flags.clone();
        let children = children.clone();
        Box::pin(async move {
            let args = SupervisorArgs {
                path: ctx.path,
                flags,
                children,
                tree: ctx.tree,
            };
            let (actor, _) = Actor::spawn_linked(None, Supervisor, args, ctx.supervisor)
                .await
                .map_err(|e| StartError(e.to_string()))?;
            Ok(Started::actor(actor.get_cell()))
        })
    };
    ChildSpec {
        child_type: ChildType::Supervisor,
        shutdown: Shutdown::Infinity,
        ..ChildSpec::worker(id, ActorKind::Supervisor, start)
    }
}

impl SupervisorRef {
    /// Starts a supervisor with no parent (a node's `root`). Returns once every child started.
    pub async fn start_root(
        path: impl Into<String>,
        flags: SupervisorFlags,
        children: Vec<ChildSpec>,
        tree: Tree,
    ) -> Result<(Self, ractor::concurrency::JoinHandle<()>), StartError> {
        let path = path.into();
        tree.add_root(&path, ActorKind::Supervisor);
        let args = SupervisorArgs {
            path,
            flags,
            children,
            tree,
        };
        let (actor, handle) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        Ok((Self(actor), handle))
    }

    /// Wraps the actor of a supervisor started as a child.
    pub fn from_cell(cell: ActorCell) -> Self {
        Self(cell.into())
    }

    /// The supervisor's actor.
    pub fn cell(&self) -> ActorCell {
        self.0.get_cell()
    }

    /// Adds a child at the end of the start order and starts it.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ChildInfo, SupervisorError> {
        self.call(|r| SupervisorMsg::StartChild(spec, r)).await?
    }

    /// Terminates a child (its spec is kept unless it is temporary).
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_string();
        self.call(|r| SupervisorMsg::TerminateChild(id, r)).await?
    }

    /// Starts a terminated child again.
    pub async fn restart_child(&self, id: &str) -> Result<ChildInfo, SupervisorError> {
        let id = id.to_string();
        self.call(|r| SupervisorMsg::RestartChild(id, r)).await?
    }

    /// Removes a terminated child's spec.
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_string();
        self.call(|r| SupervisorMsg::DeleteChild(id, r)).await?
    }

    /// Every child, in start order (OTP's `which_children`).
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.call(SupervisorMsg::WhichChildren).await
    }

    /// How many specs, running children, supervisors and workers it has (OTP's
    /// `count_children`).
    pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
        self.call(SupervisorMsg::CountChildren).await
    }

    /// Shuts the supervisor down like its parent would with shutdown `infinity`: every child
    /// is terminated in reverse start order, honouring its shutdown spec.
    pub async fn shutdown(&self) {
        let _ = self.0.stop_and_wait(Some("shutdown".into()), None).await;
    }

    async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> SupervisorMsg,
    ) -> Result<T, SupervisorError> {
        match self.0.call(msg, None).await {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(_) => Err(SupervisorError::Unavailable("no reply".into())),
            Err(_) => Err(SupervisorError::Unavailable(
                "it has stopped or is stopping".into(),
            )),
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        args.tree
            .supervisor_init(&args.path, &args.flags, myself.get_cell());
        let mut state = SupervisorState {
            myself,
            path: args.path,
            flags: args.flags,
            order: Vec::with_capacity(args.children.len()),
            children: HashMap::with_capacity(args.children.len()),
            by_actor: HashMap::with_capacity(args.children.len()),
            restarts: VecDeque::new(),
            tree: args.tree,
        };
        for spec in args.children {
            spec.validate(&state.flags)?;
            if state.children.contains_key(&spec.id) {
                return Err(format!("duplicate child id `{}`", spec.id).into());
            }
            state.insert(spec);
        }
        let ids = state.order.clone();
        for id in &ids {
            if let Err(e) = state.start_instance(id).await {
                state.terminate_children(&ids).await;
                return Err(format!("failed to start child `{id}`: {e}").into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let ids = state.order.clone();
        state.terminate_children(&ids).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChild(spec, reply) => {
                let _ = reply.send(state.handle_start_child(spec).await);
            }
            SupervisorMsg::TerminateChild(id, reply) => {
                let result = match state.children.get(&id) {
                    None => Err(SupervisorError::NotFound(id)),
                    Some(_) => {
                        state.terminate_instance(&id).await;
                        state.drop_if_temporary(&id);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::RestartChild(id, reply) => {
                let result = match state.children.get(&id).map(|c| c.status) {
                    None => Err(SupervisorError::NotFound(id)),
                    Some(ChildStatus::Running) => Err(SupervisorError::Running(id)),
                    Some(ChildStatus::Restarting) => Err(SupervisorError::Restarting(id)),
                    Some(ChildStatus::Stopped) => match state.start_instance(&id).await {
                        Ok(()) => Ok(state.info(&id)),
                        Err(e) => Err(SupervisorError::StartFailed { id, reason: e.0 }),
                    },
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::DeleteChild(id, reply) => {
                let result = match state.children.get(&id).map(|c| c.status) {
                    None => Err(SupervisorError::NotFound(id)),
                    Some(ChildStatus::Running) => Err(SupervisorError::Running(id)),
                    Some(ChildStatus::Restarting) => Err(SupervisorError::Restarting(id)),
                    Some(ChildStatus::Stopped) => {
                        state.remove(&id);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::WhichChildren(reply) => {
                let _ = reply.send(state.order.iter().map(|id| state.info(id)).collect());
            }
            SupervisorMsg::CountChildren(reply) => {
                let _ = reply.send(state.counts());
            }
            SupervisorMsg::TryAgainRestart(id) => {
                if state.status(&id) == Some(ChildStatus::Restarting) {
                    let flow = state.restart(&id).await;
                    return finish(&myself, flow);
                }
            }
            SupervisorMsg::BackoffElapsed(id) => {
                if state.status(&id) == Some(ChildStatus::Restarting) {
                    let group = state.group(&id);
                    state.start_group(&group).await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason_from_stop(reason)),
            SupervisionEvent::ActorFailed(cell, err) => (cell, reason_from_error(err)),
            _ => return Ok(()),
        };
        // Exits of instances this supervisor already terminated or replaced are stale.
        let Some(id) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let flow = state.child_exited(&id, reason).await;
        finish(&myself, flow)
    }
}

fn finish(myself: &ActorRef<SupervisorMsg>, flow: Flow) -> Result<(), ActorProcessingErr> {
    match flow {
        Flow::Continue => Ok(()),
        Flow::Escalate => Err(Box::new(ChildExit(ExitReason::Error(
            REACHED_MAX_RESTART_INTENSITY.into(),
        )))),
        Flow::AutoShutdown => {
            myself.stop(Some("shutdown".into()));
            Ok(())
        }
    }
}

impl SupervisorState {
    fn insert(&mut self, spec: ChildSpec) {
        let path = format!("{}/{}", self.path, spec.id);
        self.order.push(spec.id.clone());
        let supervision = Supervision {
            restart: spec.restart,
            shutdown: spec.shutdown,
            significant: spec.significant,
        };
        self.tree.added(&self.path, &path, spec.kind, supervision);
        self.children.insert(
            spec.id.clone(),
            Child {
                spec,
                path,
                status: ChildStatus::Stopped,
                instance: None,
                starts: 0,
            },
        );
    }

    fn remove(&mut self, id: &str) {
        if let Some(child) = self.children.remove(id) {
            self.order.retain(|o| o != id);
            self.tree.deleted(&self.path, &child.path, child.spec.kind);
        }
    }

    fn drop_if_temporary(&mut self, id: &str) {
        if self.children.get(id).map(|c| c.spec.restart) == Some(Restart::Temporary) {
            self.remove(id);
        }
    }

    fn status(&self, id: &str) -> Option<ChildStatus> {
        self.children.get(id).map(|c| c.status)
    }

    fn info(&self, id: &str) -> ChildInfo {
        let child = &self.children[id];
        ChildInfo {
            id: id.to_string(),
            kind: child.spec.kind,
            child_type: child.spec.child_type,
            status: child.status,
            restarts: child.starts.saturating_sub(1),
            pid: child.instance.as_ref().and_then(|i| {
                i.os_process
                    .as_ref()
                    .map(|p| p.pid())
                    .or(i.hosted.as_ref().and_then(|h| h.pid))
            }),
        }
    }

    fn counts(&self) -> ChildCounts {
        let mut counts = ChildCounts::default();
        for child in self.children.values() {
            counts.specs += 1;
            if child.status == ChildStatus::Running {
                counts.active += 1;
            }
            match child.spec.child_type {
                ChildType::Supervisor => counts.supervisors += 1,
                ChildType::Worker => counts.workers += 1,
            }
        }
        counts
    }

    async fn handle_start_child(&mut self, spec: ChildSpec) -> Result<ChildInfo, SupervisorError> {
        spec.validate(&self.flags)?;
        if let Some(existing) = self.children.get(&spec.id) {
            return Err(match existing.status {
                ChildStatus::Stopped => SupervisorError::AlreadyPresent(spec.id),
                _ => SupervisorError::Running(spec.id),
            });
        }
        if let Some(max) = self.flags.max_children
            && self.children.len() >= max
        {
            return Err(SupervisorError::MaxChildren(max));
        }
        let id = spec.id.clone();
        self.insert(spec);
        match self.start_instance(&id).await {
            Ok(()) => Ok(self.info(&id)),
            Err(e) => {
                self.remove(&id);
                Err(SupervisorError::StartFailed { id, reason: e.0 })
            }
        }
    }

    /// Starts one instance of the child and records it as running.
    async fn start_instance(&mut self, id: &str) -> Result<(), StartError> {
        let child = self.children.get(id).expect("child exists");
        let ctx = StartContext {
            supervisor: self.myself.get_cell(),
            path: child.path.clone(),
            tree: self.tree.clone(),
        };
        let started = child.spec.start.start(ctx).await?;
        let child = self.children.get_mut(id).expect("child exists");
        let pid = started
            .os_process
            .as_ref()
            .map(|p| p.pid())
            .or(started.hosted.as_ref().and_then(|h| h.pid));
        let placement = started.hosted.as_ref().map(|h| h.sandbox.clone());
        self.by_actor.insert(started.cell.get_id(), id.to_string());
        child.instance = Some(started);
        child.status = ChildStatus::Running;
        child.starts += 1;
        self.tree.started(
            &child.path,
            child.spec.kind,
            pid,
            child.starts - 1,
            placement,
        );
        Ok(())
    }

    /// `do_restart`: decide what an exit means for the child and the supervisor.
    async fn child_exited(&mut self, id: &str, reason: ExitReason) -> Flow {
        let Some(child) = self.children.get_mut(id) else {
            return Flow::Continue;
        };
        if let Some(process) = child.instance.take().and_then(|s| s.os_process) {
            process.kill().await;
        }
        tracing::debug!(actor = %child.path, %reason, "child exited");
        child.status = ChildStatus::Stopped;
        self.tree.status(
            &child.path,
            child.spec.kind,
            ChildStatus::Stopped,
            Change::Exited {
                reason: reason.clone(),
            },
        );
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !reason.is_normal(),
            Restart::Temporary => false,
        };
        if restart {
            if !reason.is_normal() {
                tracing::warn!(actor = %child.path, %reason, "child failed; restarting");
            }
            return self.restart(id).await;
        }
        let significant = child.spec.significant;
        if self.flags.dynamic {
            self.remove(id);
        } else {
            self.drop_if_temporary(id);
        }
        if significant && self.auto_shutdown_due() {
            tracing::info!(supervisor = %self.path, "significant child exited; auto_shutdown");
            let ids = self.order.clone();
            self.terminate_children(&ids).await;
            return Flow::AutoShutdown;
        }
        Flow::Continue
    }

    fn auto_shutdown_due(&self) -> bool {
        match self.flags.auto_shutdown {
            AutoShutdown::Never => false,
            AutoShutdown::AnySignificant => true,
            AutoShutdown::AllSignificant => !self
                .children
                .values()
                .any(|c| c.spec.significant && c.status == ChildStatus::Running),
        }
    }

    /// `restart/2`: count the restart, then restart the child's group per the strategy.
    async fn restart(&mut self, id: &str) -> Flow {
        let now = Instant::now();
        let period = self.flags.period;
        while let Some(oldest) = self.restarts.front() {
            if now.duration_since(*oldest) > period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.push_back(now);
        if self.restarts.len() > self.flags.intensity as usize {
            tracing::error!(
                supervisor = %self.path,
                intensity = self.flags.intensity,
                period_secs = period.as_secs_f64(),
                "{REACHED_MAX_RESTART_INTENSITY}; shutting down"
            );
            crate::metrics::metrics().escalated(&self.path);
            let ids = self.order.clone();
            self.terminate_children(&ids).await;
            // Stopped from now on; a parent restarting it says so again.
            self.tree.status(
                &self.path,
                ActorKind::Supervisor,
                ChildStatus::Stopped,
                Change::Escalated {
                    reason: REACHED_MAX_RESTART_INTENSITY.into(),
                },
            );
            return Flow::Escalate;
        }
        let group = self.group(id);
        if self.flags.strategy != Strategy::OneForOne {
            self.terminate_children(&group).await;
        }
        let group: Vec<String> = group
            .into_iter()
            .filter(|g| self.children.contains_key(g))
            .collect();
        for g in &group {
            self.mark_restarting(g);
            crate::metrics::metrics().restarted(&self.children[g].path);
        }
        if let Some(backoff) = self.flags.backoff {
            let delay = backoff_delay(&backoff, self.restarts.len());
            let myself = self.myself.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = myself.cast(SupervisorMsg::BackoffElapsed(id));
            });
            return Flow::Continue;
        }
        self.start_group(&group).await;
        Flow::Continue
    }

    /// The children a restart of `id` affects, in start order.
    fn group(&self, id: &str) -> Vec<String> {
        match self.flags.strategy {
            Strategy::OneForOne => vec![id.to_string()],
            Strategy::OneForAll => self.order.clone(),
            Strategy::RestForOne => {
                let at = self.order.iter().position(|o| o == id).unwrap_or(0);
                self.order[at..].to_vec()
            }
        }
    }

    /// Starts the group in order; a failed start is retried through the mailbox.
    async fn start_group(&mut self, group: &[String]) {
        for id in group {
            if !self.children.contains_key(id) {
                continue;
            }
            if let Err(e) = self.start_instance(id).await {
                tracing::error!(actor = %self.children[id].path, error = %e, "restart failed; trying again");
                self.mark_restarting(id);
                let _ = self.myself.cast(SupervisorMsg::TryAgainRestart(id.clone()));
                return;
            }
        }
    }

    fn mark_restarting(&mut self, id: &str) {
        let child = self.children.get_mut(id).expect("child exists");
        child.status = ChildStatus::Restarting;
        self.tree.status(
            &child.path,
            child.spec.kind,
            ChildStatus::Restarting,
            Change::Restarting,
        );
    }

    /// Terminates the given children in reverse order; temporary ones are removed.
    async fn terminate_children(&mut self, ids: &[String]) {
        for id in ids.iter().rev() {
            self.terminate_instance(id).await;
            self.drop_if_temporary(id);
        }
    }

    /// Terminates the running instance of a child per its shutdown spec.
    async fn terminate_instance(&mut self, id: &str) {
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        child.status = ChildStatus::Stopped;
        let Some(started) = child.instance.take() else {
            return;
        };
        self.by_actor.remove(&started.cell.get_id());
        shutdown(&started, child.spec.shutdown).await;
        self.tree.status(
            &child.path,
            child.spec.kind,
            ChildStatus::Stopped,
            Change::Terminated,
        );
    }
}

/// OTP's `shutdown/2`: graceful stop with a deadline, then kill; the OS process (if any) is
/// dead and reaped when this returns.
async fn shutdown(started: &Started, shutdown: Shutdown) {
    let cell = &started.cell;
    match shutdown {
        Shutdown::BrutalKill => {
            let _ = cell.kill_and_wait(None).await;
        }
        Shutdown::Timeout(limit) => {
            if let Err(RactorErr::Timeout) = cell
                .stop_and_wait(Some("shutdown".into()), Some(limit))
                .await
            {
                let _ = cell.kill_and_wait(None).await;
            }
        }
        Shutdown::Infinity => {
            let _ = cell.stop_and_wait(Some("shutdown".into()), None).await;
        }
    }
    if let Some(process) = &started.os_process {
        process.kill().await;
    }
}

fn reason_from_stop(reason: Option<String>) -> ExitReason {
    match reason.as_deref() {
        None | Some("normal") | Some("Drained") => ExitReason::Normal,
        Some("shutdown") => ExitReason::Shutdown,
        Some(r) if r.starts_with("shutdown:") => ExitReason::Shutdown,
        Some("killed") => ExitReason::Killed,
        Some(r) => ExitReason::Error(r.to_string()),
    }
}

fn reason_from_error(err: ActorProcessingErr) -> ExitReason {
    match err.downcast::<ChildExit>() {
        Ok(exit) => exit.0,
        Err(err) => ExitReason::Error(err.to_string()),
    }
}

fn backoff_delay(backoff: &crate::spec::Backoff, nth: usize) -> Duration {
    let exp = nth.saturating_sub(1).min(30) as u32;
    let base = backoff
        .initial
        .saturating_mul(2u32.saturating_pow(exp))
        .min(backoff.max);
    let jitter = backoff.jitter.clamp(0.0, 1.0);
    let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
    base.mul_f64(factor.max(0.0))
}
