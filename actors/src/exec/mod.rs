//! The exec lifecycle: starting, following, resuming, cancelling, approving and recovering
//! execs, and the conversation operations that must respect a running exec (fork, delete).
//!
//! An exec is one turn of a conversation: `InputReceived` and `ExecStateChanged(RUNNING)` are
//! appended, then the exec's agent runs as a transient child of the node's `system/agents`
//! supervisor (`runner.rs`): an agent that crashes is restarted and goes on from the log; one
//! that ends normally is removed. At most one exec holds a conversation at a time
//! ([`ExecClaims`]). Everything here speaks [`ExecError`]; the gRPC layer maps it to status
//! codes in one place.

mod claims;
mod error;
mod ids;
mod runner;
mod summary;
pub mod timeline;

use std::sync::Arc;
use std::time::Duration;

use cadre_proto::v1::{
    AgentPatch, ApprovalDecided, Conversation, Event, ExecState, ExecStateChanged, Forked,
    InputReceived, event,
};

pub use claims::{Claim, ExecClaims, LocalClaims};
pub use error::ExecError;
pub use ids::{MAX_ID_LEN, SYSTEM_PREFIX, check_conversation_id, check_writable};

use crate::agent::ExecRun;
use crate::event_log::{AppendRequest, EventLog, NewEvent, SubscribeError, Subscription};
use crate::services::Services;
use crate::spec::SupervisorError;
use crate::tree::Tree;
use runner::ExecAgent;
use summary::{SummaryFold, unfinished_exec};

/// The built-in agent: replies with its input.
pub const ECHO: &str = "echo";

/// How many conversations a list returns when the request does not say, and at most.
pub const DEFAULT_LIST: u32 = 100;
/// The most conversations one list returns.
pub const MAX_LIST: u32 = 1000;

/// What a second exec is told to do about the running one.
const FOLLOW: &str = "wait for it, or reconnect with last_seq to follow it";

/// The node's execs; cheap to clone.
#[derive(Clone)]
pub struct Execs {
    log: Arc<dyn EventLog>,
    /// Finds the agents supervisor by path, whichever instance runs.
    tree: Tree,
    /// Path of the dynamic supervisor that runs each exec's agent (`system/agents`).
    agents: String,
    claims: Arc<dyn ExecClaims>,
    /// Tools, models and agents for the execs' agents.
    services: Services,
    /// This node's name in its cluster (empty outside one): written with each exec it runs,
    /// so that after a crash only it resumes them.
    node: String,
    /// Whether recovery also takes the execs of no node (written outside any cluster): the
    /// node that holds the log does.
    takes_unowned: bool,
}

/// The events of an exec (or of a conversation) as a client follows them: in order from a
/// seq, until the exec ends, a seq is reached, or forever.
pub struct ExecEvents {
    subscription: Subscription,
    until: Until,
    ended: bool,
}

/// Where an [`ExecEvents`] stream ends.
enum Until {
    /// With the terminal state change of this exec.
    EndOf(String),
    /// With this seq (a conversation that was caught up with).
    Seq(u64),
    /// Never (a subscription).
    Never,
}

/// A fork: which conversation, where, into which, with what changes to the agent.
#[derive(Debug, Clone, Default)]
pub struct Fork {
    /// The conversation forked.
    pub src_conversation_id: String,
    /// The last event copied (0: the whole conversation).
    pub at_seq: u64,
    /// The new conversation's id (empty: a generated one).
    pub dest_conversation_id: String,
    /// Changes to the agent in the branch.
    pub patch: Option<AgentPatch>,
}

impl ExecEvents {
    fn new(subscription: Subscription, until: Until) -> Self {
        let ended = matches!(until, Until::Seq(end) if subscription.last_seq() >= end);
        Self {
            subscription,
            until,
            ended,
        }
    }

    /// The next event; `Err` once if the subscription was cut off, then `None`.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, SubscribeError>> {
        if self.ended {
            return None;
        }
        match self.subscription.next().await? {
            Ok(e) => {
                self.ended = match &self.until {
                    Until::EndOf(exec_id) => is_end_of(&e, exec_id),
                    Until::Seq(end) => e.seq >= *end,
                    Until::Never => false,
                };
                Some(Ok(e))
            }
            Err(e) => {
                self.ended = true;
                Some(Err(e))
            }
        }
    }
}

impl Execs {
    /// Execs journaled in `log`, their agents run under the supervisor at path `agents` of
    /// `tree`, one per conversation as `claims` decide.
    pub fn new(
        log: Arc<dyn EventLog>,
        tree: Tree,
        agents: impl Into<String>,
        claims: Arc<dyn ExecClaims>,
        services: Services,
    ) -> Self {
        Self {
            log,
            tree,
            agents: agents.into(),
            claims,
            services,
            node: String::new(),
            takes_unowned: true,
        }
    }

    /// The execs of node `node` of a cluster; `takes_unowned`: whether its recovery also
    /// resumes execs that no node ran (those of the log from before the cluster).
    pub fn on_node(mut self, node: impl Into<String>, takes_unowned: bool) -> Self {
        self.node = node.into();
        self.takes_unowned = takes_unowned;
        self
    }

    /// Starts an exec of `agent_id` with `input` in `conversation` (a new one if `None`) and
    /// follows it from its first event.
    pub async fn start(
        &self,
        conversation: Option<String>,
        agent_id: String,
        input: String,
    ) -> Result<ExecEvents, ExecError> {
        if let Some(id) = &conversation {
            check_writable("conversation_id", id)?;
        }
        if agent_id.is_empty() {
            return Err(ExecError::Invalid(format!(
                "agent_id: missing (available: {})",
                self.agent_names()
            )));
        }
        if !self.has_agent(&agent_id) {
            return Err(ExecError::Invalid(format!(
                "agent_id: unknown agent `{agent_id}` (available: {})",
                self.agent_names()
            )));
        }
        let conversation = conversation.unwrap_or_else(|| new_id("c"));
        let exec_id = new_id("e");
        self.claim(&conversation, Claim::Exec(exec_id.clone()), FOLLOW)
            .await?;
        let span = crate::traces::exec_span(&agent_id, &conversation, &exec_id, "");
        let begin = AppendRequest {
            conversation_id: conversation.clone(),
            events: vec![
                NewEvent {
                    exec_id: exec_id.clone(),
                    kind: event::Kind::InputReceived(InputReceived {
                        agent_id: agent_id.clone(),
                        text: input.clone(),
                        trace_parent: crate::traces::traceparent(&span).unwrap_or_default(),
                    }),
                },
                self.running(&exec_id),
            ],
            idempotency_key: None,
            open_exec: None,
            owner: None,
        };
        let appended = match self.log.append(begin).await {
            Ok(a) => a,
            Err(e) => {
                self.claims
                    .release(&conversation, &Claim::Exec(exec_id))
                    .await;
                return Err(e.into());
            }
        };
        crate::metrics::metrics().exec_started(&agent_id);
        self.launch(
            conversation,
            exec_id,
            agent_id,
            input,
            span,
            appended.first_seq - 1,
        )
        .await
    }

    /// Follows a conversation from after `last_seq`: to the end of its running exec, or to
    /// its last event if none runs.
    pub async fn follow(&self, conversation: &str, last_seq: u64) -> Result<ExecEvents, ExecError> {
        check_conversation_id("conversation_id", conversation)?;
        let sub = self.log.subscribe(conversation, last_seq).await?;
        if let Some(Claim::Exec(exec_id)) = self.claims.holder(conversation).await {
            return Ok(ExecEvents::new(sub, Until::EndOf(exec_id)));
        }
        // In a cluster the exec may run on another node: the log says whether one is open.
        if !self.node.is_empty() {
            let summary = self.describe(conversation).await?;
            if let Some(exec_id) = unfinished_exec(&summary) {
                return Ok(ExecEvents::new(sub, Until::EndOf(exec_id.to_string())));
            }
        }
        let end = self.log.last_seq(conversation).await?.unwrap_or(0);
        Ok(ExecEvents::new(sub, Until::Seq(end)))
    }

    /// Every event of a conversation after `after_seq`, then live ones, until the client
    /// goes away.
    pub async fn subscribe(
        &self,
        conversation: &str,
        after_seq: u64,
    ) -> Result<ExecEvents, ExecError> {
        check_conversation_id("conversation_id", conversation)?;
        let sub = self.log.subscribe(conversation, after_seq).await?;
        Ok(ExecEvents::new(sub, Until::Never))
    }

    /// Continues the conversation's unfinished exec (after a crash, or in a fork taken
    /// mid-exec): its agent runs again from the log; what it already did is not repeated.
    /// Follows it after `last_seq` (0: from the conversation's end).
    pub async fn resume(&self, conversation: &str, last_seq: u64) -> Result<ExecEvents, ExecError> {
        check_writable("conversation_id", conversation)?;
        let summary = self.describe(conversation).await?;
        if unfinished_exec(&summary).is_none() {
            return Err(ExecError::Conflict(format!(
                "conversation `{conversation}` has no unfinished exec to resume"
            )));
        }
        if !self.has_agent(&summary.agent_id) {
            return Err(ExecError::Conflict(format!(
                "exec `{}` needs agent `{}`, which this node does not have",
                summary.exec_id, summary.agent_id
            )));
        }
        let input = self.input_of(conversation, &summary.exec_id).await?;
        self.claim(conversation, Claim::Exec(summary.exec_id.clone()), FOLLOW)
            .await?;
        let after = if last_seq > 0 {
            last_seq
        } else {
            summary.last_seq
        };
        let span = crate::traces::exec_span(
            &summary.agent_id,
            conversation,
            &summary.exec_id,
            &input.trace_parent,
        );
        self.launch(
            conversation.to_string(),
            summary.exec_id,
            summary.agent_id,
            input.text,
            span,
            after,
        )
        .await
    }

    /// Resumes every exec the last run of this node left unfinished (startup recovery): those
    /// the log says this node runs. An exec whose agent this node no longer has ends FAILED,
    /// naming the agent.
    pub async fn recover(&self) -> Result<(), crate::store::StoreError> {
        let open = self.log.open_execs().await?;
        let open: Vec<_> = open
            .into_iter()
            .filter(|o| o.node == self.node || (o.node.is_empty() && self.takes_unowned))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        tracing::warn!(count = open.len(), "resuming the execs of the last run");
        let count = open.len();
        let mut resumed = 0;
        for exec in open {
            let conversation = exec.conversation_id.clone();
            let summary = match self.describe(&conversation).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(%conversation, error = %e, "cannot recover an exec");
                    continue;
                }
            };
            if summary.exec_id != exec.exec_id || unfinished_exec(&summary).is_none() {
                continue;
            }
            if !self.has_agent(&summary.agent_id) {
                let why = format!("agent `{}` no longer exists on this node", summary.agent_id);
                tracing::warn!(%conversation, exec = %exec.exec_id, "exec not resumed: {why}");
                self.fail_unrunnable(&conversation, &summary.exec_id, &why)
                    .await;
                continue;
            }
            match self.resume(&conversation, summary.last_seq).await {
                Ok(_) => resumed += 1,
                Err(e) => {
                    tracing::warn!(%conversation, exec = %exec.exec_id, error = %e, "exec not resumed")
                }
            }
        }
        tracing::info!(count, resumed, "recovered the execs of the last run");
        Ok(())
    }

    /// Resumes the open execs the log gives this cluster node that do not run here: those it
    /// was given when their node went down. Execs waiting for an approval are left to the
    /// approver's node. Returns how many it resumed.
    pub async fn adopt(&self) -> Result<usize, crate::store::StoreError> {
        if self.node.is_empty() {
            return Ok(0);
        }
        let mut adopted = 0;
        for exec in self.log.open_execs().await? {
            if exec.node != self.node || exec.state == ExecState::WaitingApproval {
                continue;
            }
            if self.claims.holder(&exec.conversation_id).await.is_some() {
                continue;
            }
            match self.resume(&exec.conversation_id, 0).await {
                Ok(_) => {
                    adopted += 1;
                    tracing::info!(
                        conversation = %exec.conversation_id,
                        exec = %exec.exec_id,
                        "took over an exec whose node went down"
                    );
                }
                Err(e) => tracing::warn!(
                    conversation = %exec.conversation_id,
                    exec = %exec.exec_id,
                    error = %e,
                    "cannot take over an exec"
                ),
            }
        }
        Ok(adopted)
    }

    /// Cancels the conversation's unfinished exec (`exec_id`, if not empty, must be it) and
    /// stops its agent.
    pub async fn cancel(
        &self,
        conversation: &str,
        exec_id: &str,
        reason: &str,
    ) -> Result<Conversation, ExecError> {
        check_writable("conversation_id", conversation)?;
        let summary = self.describe(conversation).await?;
        let Some(unfinished) = unfinished_exec(&summary).map(str::to_string) else {
            return Err(ExecError::Conflict(format!(
                "conversation `{conversation}` has no unfinished exec to cancel"
            )));
        };
        if !exec_id.is_empty() && exec_id != unfinished {
            return Err(ExecError::Conflict(format!(
                "exec `{exec_id}` is not the unfinished exec of conversation `{conversation}` \
                 (that is `{unfinished}`)"
            )));
        }
        let reason = if reason.is_empty() {
            "cancelled by request"
        } else {
            reason
        };
        // Fenced on the exec being open: of a cancel and the agent's own end, one wins.
        self.log
            .append(AppendRequest {
                conversation_id: conversation.to_string(),
                events: vec![state_change(&unfinished, ExecState::Cancelled, reason)],
                idempotency_key: None,
                open_exec: Some(unfinished.clone()),
                owner: None,
            })
            .await?;
        crate::metrics::metrics().exec_cancelled(&summary.agent_id);
        // The agent may be running (or may not, e.g. after a crash); its appends are refused
        // from now on either way.
        if let Some((agents, _)) = self.tree.supervisor(&self.agents) {
            match agents.terminate_child(&unfinished).await {
                // A stopped transient child stays listed until deleted.
                Ok(()) => {
                    let _ = agents.delete_child(&unfinished).await;
                }
                Err(SupervisorError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(exec = %unfinished, error = %e, "cannot stop a cancelled exec's agent")
                }
            }
        }
        self.claims
            .release(conversation, &Claim::Exec(unfinished))
            .await;
        self.describe(conversation).await
    }

    /// Decides the tool call the conversation's exec waits on (`call_id`, if not empty, must
    /// be it), then runs the exec on from the log.
    pub async fn approve(
        &self,
        conversation: &str,
        call_id: &str,
        approved: bool,
        reason: &str,
    ) -> Result<Conversation, ExecError> {
        check_writable("conversation_id", conversation)?;
        let summary = self.describe(conversation).await?;
        if summary.exec_state != ExecState::WaitingApproval as i32 {
            return Err(ExecError::Conflict(format!(
                "conversation `{conversation}` has no exec waiting for an approval"
            )));
        }
        if !call_id.is_empty() && call_id != summary.waiting_call_id {
            return Err(ExecError::Conflict(format!(
                "exec `{}` waits on call {} (`{}`), not {call_id}",
                summary.exec_id, summary.waiting_call_id, summary.waiting_tool
            )));
        }
        let exec_id = summary.exec_id.clone();
        let reason = match reason {
            "" if approved => "approved",
            "" => "declined",
            reason => reason,
        };
        // Fenced on the exec being open, and keyed by the call: two approvers, one decision.
        let decided = AppendRequest {
            conversation_id: conversation.to_string(),
            events: vec![
                NewEvent {
                    exec_id: exec_id.clone(),
                    kind: event::Kind::ApprovalDecided(ApprovalDecided {
                        call_id: summary.waiting_call_id.clone(),
                        tool: summary.waiting_tool.clone(),
                        approved,
                        reason: reason.to_string(),
                    }),
                },
                self.running(&exec_id),
            ],
            idempotency_key: Some(format!(
                "{conversation}/{exec_id}/{}/decided",
                summary.waiting_call_id
            )),
            open_exec: Some(exec_id.clone()),
            owner: None,
        };
        let appended = self.log.append(decided).await?;
        if appended.duplicate {
            return Err(ExecError::Conflict(format!(
                "call {} of exec `{exec_id}` was already decided",
                summary.waiting_call_id
            )));
        }
        // The paused agent has ended; run it on from the log.
        let claim = Claim::Exec(exec_id.clone());
        self.claims.release(conversation, &claim).await;
        self.claim(conversation, claim, FOLLOW).await?;
        let input = self.input_of(conversation, &exec_id).await?;
        // The approver follows the exec with Subscribe or Exec (last_seq) if they want to.
        let span = crate::traces::exec_span(
            &summary.agent_id,
            conversation,
            &exec_id,
            &input.trace_parent,
        );
        drop(
            self.launch(
                conversation.to_string(),
                exec_id,
                summary.agent_id,
                input.text,
                span,
                appended.last_seq,
            )
            .await?,
        );
        self.describe(conversation).await
    }

    /// Copies a conversation's events 1..`fork.at_seq` into a new conversation, with a
    /// `Forked` event (and its patch) at the end. `at_seq` 0 is refused: a fork names the last
    /// event it keeps (the conversation's last seq keeps all of them).
    pub async fn fork(&self, fork: Fork) -> Result<Conversation, ExecError> {
        let src = fork.src_conversation_id;
        check_conversation_id("src_conversation_id", &src)?;
        if !fork.dest_conversation_id.is_empty() {
            check_writable("dest_conversation_id", &fork.dest_conversation_id)?;
        }
        if fork.at_seq == 0 {
            return Err(ExecError::Invalid(
                "at_seq: must be ≥ 1, the last event the branch keeps (give the conversation's \
                 last seq to keep all of it)"
                    .into(),
            ));
        }
        let end = self
            .log
            .last_seq(&src)
            .await?
            .ok_or_else(|| ExecError::NotFound(format!("no conversation `{src}`")))?;
        let at = fork.at_seq;
        if at > end {
            return Err(ExecError::OutOfRange(format!(
                "at_seq {at} is beyond the end of conversation `{src}` (last seq {end})"
            )));
        }
        let dest = if fork.dest_conversation_id.is_empty() {
            new_id("c")
        } else {
            fork.dest_conversation_id
        };
        if let Some(model) = fork.patch.as_ref().and_then(|p| p.model.as_ref())
            && !self.services.models.contains_key(model)
        {
            return Err(ExecError::Invalid(format!(
                "patch.model: unknown model `{model}` (models: {})",
                self.services
                    .models
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if fork.patch.as_ref().and_then(|p| p.max_iterations) == Some(0) {
            return Err(ExecError::Invalid(
                "patch.max_iterations: must be ≥ 1".into(),
            ));
        }
        // Copied, not referenced: each conversation stays self-contained (reads never follow a
        // chain of forks), at the cost of storing the shared prefix again.
        let prefix = self.log.read(&src, 0, at as usize).await?;
        let mut events: Vec<NewEvent> = prefix
            .into_iter()
            .filter_map(|e| {
                e.kind.map(|kind| NewEvent {
                    exec_id: e.exec_id,
                    kind,
                })
            })
            .collect();
        events.push(NewEvent {
            exec_id: String::new(),
            kind: event::Kind::Forked(Forked {
                src_conversation_id: src,
                at_seq: at,
                patch: fork.patch,
            }),
        });
        self.log
            .create(AppendRequest {
                conversation_id: dest.clone(),
                events,
                idempotency_key: None,
                open_exec: None,
                owner: None,
            })
            .await?;
        self.describe(&dest).await
    }

    /// Deletes a conversation that has no unfinished exec; returns how many events it had.
    pub async fn delete(&self, conversation: &str) -> Result<u64, ExecError> {
        check_writable("conversation_id", conversation)?;
        let hint = format!("cancel it first (`cadre cancel --conversation {conversation}`)");
        // Held while deleting, so no exec starts in the conversation meanwhile.
        self.claim(conversation, Claim::Deleting, &hint).await?;
        let deleted = self.log.delete(conversation).await;
        if deleted.is_ok()
            && let Some(host) = &self.services.host
        {
            host.remove(&crate::builtin::workspace_actor(conversation));
        }
        self.claims.release(conversation, &Claim::Deleting).await;
        Ok(deleted?)
    }

    /// Conversations in id order after `after`, at most `limit` (0: [`DEFAULT_LIST`]), with
    /// their last seq.
    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<Conversation>, ExecError> {
        let limit = match limit {
            0 => DEFAULT_LIST,
            n if n > MAX_LIST => {
                return Err(ExecError::Invalid(format!(
                    "limit: at most {MAX_LIST}, got {n}"
                )));
            }
            n => n,
        };
        Ok(self
            .log
            .list(after, limit as usize)
            .await?
            .into_iter()
            .map(|(conversation_id, last_seq)| Conversation {
                conversation_id,
                last_seq,
                ..Default::default()
            })
            .collect())
    }

    /// A conversation's summary, from its log.
    pub async fn describe(&self, id: &str) -> Result<Conversation, ExecError> {
        check_conversation_id("conversation_id", id)?;
        let mut fold = SummaryFold::new(id);
        let last = self
            .scan(id, |e| {
                fold.apply(e);
                true
            })
            .await?;
        if last == 0 {
            return Err(ExecError::NotFound(format!("no conversation `{id}`")));
        }
        Ok(fold.finish(last))
    }

    /// Whether this node can run `agent`.
    fn has_agent(&self, agent: &str) -> bool {
        agent == ECHO || self.services.agents.get(agent).is_some()
    }

    fn agent_names(&self) -> String {
        let mut names = vec![ECHO.to_string()];
        names.extend(self.services.agents.ids());
        names.join(", ")
    }

    /// The exec runs, on this node (which resumes it after a crash).
    fn running(&self, exec_id: &str) -> NewEvent {
        NewEvent {
            exec_id: exec_id.to_string(),
            kind: event::Kind::ExecStateChanged(ExecStateChanged {
                state: ExecState::Running as i32,
                reason: String::new(),
                node: self.node.clone(),
                // The controller gives the node's lease its epoch.
                epoch: 0,
            }),
        }
    }

    /// Makes `claim` the conversation's holder, or says which exec holds it (and what to do:
    /// `hint`). A client sees an exec's end as soon as it commits, a moment before the agent
    /// lets the conversation go, so an exec whose terminal event is in the log holds it no
    /// more.
    async fn claim(&self, conversation: &str, claim: Claim, hint: &str) -> Result<(), ExecError> {
        loop {
            let current = self.claims.holder(conversation).await;
            match &current {
                Some(Claim::Deleting) => {
                    return Err(ExecError::Conflict(format!(
                        "conversation `{conversation}` is being deleted"
                    )));
                }
                Some(Claim::Exec(other)) if !self.finished(conversation, other).await? => {
                    return Err(ExecError::Conflict(format!(
                        "conversation `{conversation}` already has a running exec `{other}`; {hint}"
                    )));
                }
                _ => {}
            }
            if self
                .claims
                .take(conversation, current.as_ref(), claim.clone())
                .await
            {
                return Ok(());
            }
        }
    }

    /// Whether the conversation's last event ends `exec_id`.
    async fn finished(&self, conversation: &str, exec_id: &str) -> Result<bool, ExecError> {
        let Some(last) = self.log.last_seq(conversation).await? else {
            return Ok(false);
        };
        let tail = self.log.read(conversation, last - 1, 1).await?;
        Ok(tail.first().is_some_and(|e| is_end_of(e, exec_id)))
    }

    /// Follows the claimed exec's events after `after` and runs its agent under
    /// `system/agents`. If either fails, the exec ends FAILED and the conversation is free again.
    async fn launch(
        &self,
        conversation: String,
        exec_id: String,
        agent_id: String,
        input: String,
        span: tracing::Span,
        after: u64,
    ) -> Result<ExecEvents, ExecError> {
        crate::traces::set(&span, "cadre.seq.first", (after + 1) as i64);
        let agent = self.services.agents.get(&agent_id).map(|spec| {
            Arc::new(ExecRun {
                log: self.log.clone(),
                tools: self.services.tools.clone(),
                models: self.services.models.clone(),
                agents: self.services.agents.clone(),
                host: self.services.host.clone(),
                agent_id: agent_id.clone(),
                spec,
                conversation: conversation.clone(),
                exec_id: exec_id.clone(),
                node: self.node.clone(),
            })
        });
        let runner = ExecAgent {
            log: self.log.clone(),
            node: self.node.clone(),
            claims: self.claims.clone(),
            conversation,
            exec_id,
            agent_id,
            started: std::time::Instant::now(),
            span,
            input,
            agent,
        };
        let sub = match self.log.subscribe(&runner.conversation, after).await {
            Ok(sub) => sub,
            Err(e) => {
                runner.fail(&e.to_string()).await;
                return Err(e.into());
            }
        };
        let Some((agents, _)) = self.tree.supervisor(&self.agents) else {
            let why = "the agents supervisor is not running";
            runner.fail(why).await;
            return Err(ExecError::Unavailable(why.into()));
        };
        let mut started = agents.start_child(runner.clone().child_spec()).await;
        for _ in 0..50 {
            match &started {
                // The agent of an earlier launch (paused for an approval) is still ending.
                Err(SupervisorError::Running(_)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(SupervisorError::AlreadyPresent(_)) => {
                    let _ = agents.delete_child(&runner.exec_id).await;
                }
                _ => break,
            }
            started = agents.start_child(runner.clone().child_spec()).await;
        }
        if let Err(e) = started {
            runner.fail(&e.to_string()).await;
            return Err(ExecError::Unavailable(format!(
                "cannot start the agent: {e}"
            )));
        }
        Ok(ExecEvents::new(sub, Until::EndOf(runner.exec_id)))
    }

    /// Ends an unfinished exec that cannot run again as FAILED with `why`, and frees its
    /// conversation.
    async fn fail_unrunnable(&self, conversation: &str, exec_id: &str, why: &str) {
        let claimed = self
            .claim(conversation, Claim::Exec(exec_id.to_string()), FOLLOW)
            .await;
        if let Err(e) = claimed {
            tracing::warn!(%conversation, exec = %exec_id, error = %e, "cannot end the exec");
            return;
        }
        let runner = ExecAgent {
            log: self.log.clone(),
            node: self.node.clone(),
            claims: self.claims.clone(),
            conversation: conversation.to_string(),
            exec_id: exec_id.to_string(),
            agent_id: String::new(),
            started: std::time::Instant::now(),
            span: tracing::Span::none(),
            input: String::new(),
            agent: None,
        };
        runner.fail(why).await;
    }

    /// An exec's `InputReceived`: its input and trace context.
    async fn input_of(
        &self,
        conversation: &str,
        exec_id: &str,
    ) -> Result<InputReceived, ExecError> {
        let mut input = None;
        self.scan(conversation, |e| match &e.kind {
            Some(event::Kind::InputReceived(i)) if e.exec_id == exec_id => {
                input = Some(i.clone());
                false
            }
            _ => true,
        })
        .await?;
        input.ok_or_else(|| {
            ExecError::Conflict(format!(
                "exec `{exec_id}` has no input in conversation `{conversation}`"
            ))
        })
    }

    /// Reads the conversation from the start, page by page, while `visit` returns true.
    /// Returns the seq of the last event read (0 if there are none).
    async fn scan(
        &self,
        conversation: &str,
        visit: impl FnMut(&Event) -> bool,
    ) -> Result<u64, ExecError> {
        Ok(crate::event_log::scan(self.log.as_ref(), conversation, visit).await?)
    }
}

/// Whether `e` is the terminal state change of `exec_id`.
fn is_end_of(e: &Event, exec_id: &str) -> bool {
    match &e.kind {
        Some(event::Kind::ExecStateChanged(s)) if e.exec_id == exec_id => {
            ExecState::is_terminal_value(s.state)
        }
        _ => false,
    }
}

/// A state change of `exec_id`.
fn state_change(exec_id: &str, state: ExecState, reason: &str) -> NewEvent {
    NewEvent {
        exec_id: exec_id.to_string(),
        kind: event::Kind::ExecStateChanged(ExecStateChanged {
            state: state as i32,
            reason: reason.to_string(),
            node: String::new(),
            epoch: 0,
        }),
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
