//! One exec of an agent: the loop, its limits and its appends.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadre_proto::v1::{Event, ExecState, ExecStateChanged, OutputEmitted, event};

use super::AgentSpec;
use super::journal::Journal;
use super::registry::AgentRegistry;
use crate::event_log::{AppendError, AppendRequest, EventLog, NewEvent, Owner};
use crate::model::Models;
use crate::sandbox::SandboxHost;
use crate::store::StoreError;
use crate::tools::ToolRegistry;

/// One exec of a model agent.
pub struct ExecRun {
    /// Where the exec is journaled.
    pub log: Arc<dyn EventLog>,
    /// The node's tools (the spec says which the agent may call).
    pub tools: ToolRegistry,
    /// The node's models, by id.
    pub models: Models,
    /// For the agent's rate limit.
    pub agents: AgentRegistry,
    /// Where process agents run (`None` on a node without sandboxes).
    pub host: Option<Arc<dyn SandboxHost>>,
    /// The agent the exec runs (its id in the registry).
    pub agent_id: String,
    /// The agent's definition; patches journaled in the conversation apply on top.
    pub spec: AgentSpec,
    /// The conversation the exec belongs to (its log).
    pub conversation: String,
    /// The exec's id.
    pub exec_id: String,
    /// The cluster node it runs on (empty outside a cluster): its appends are fenced on it, so
    /// once the exec is given to another node nothing more of this run is written.
    pub node: String,
}

/// First wait before an append that found the log unreachable is tried again; doubled up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// Ended COMPLETED.
    Completed,
    /// Ended FAILED with this reason (a limit, a model that cannot be reached).
    Failed(String),
    /// Paused for an approval; [`ExecRun::run`] goes on once one is recorded.
    WaitingApproval,
    /// The exec was ended by someone else (cancelled) meanwhile.
    Finished,
}

/// Why a run could not go on (its supervisor restarts it, and it resumes from the log).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Appending to the event log failed.
    #[error("the event log: {0}")]
    Append(#[from] AppendError),
    /// The log could not be read (or a process agent's sandbox was lost).
    #[error("cannot read the log: {0}")]
    Read(String),
}

/// How often, and how long apart, a failing model call is tried.
pub(super) const MODEL_ATTEMPTS: u32 = 4;
pub(super) const MODEL_RETRY: Duration = Duration::from_millis(250);

/// What the next step of the loop is, from the journal.
pub(super) enum Next {
    CallModel,
    Compact,
    /// Run (or answer) the tool call at this index of the last step's calls.
    Tool(usize),
    Finish(String),
}

impl ExecRun {
    /// Runs the exec from where its log ends to its end or an approval pause.
    pub async fn run(&self) -> Result<ExecEnd, RunError> {
        let mut journal = self.read_journal().await?;
        if !self.node.is_empty() && !journal.node.is_empty() && journal.node != self.node {
            self.lost(&journal.node);
            return Ok(ExecEnd::Finished);
        }
        if journal.state.is_some_and(ExecState::is_terminal_value) {
            return Ok(ExecEnd::Finished);
        }
        // Counted once per exec, before it does anything (a resumed exec has done something).
        if journal.fresh
            && let Err(limit) = self.agents.admit(&self.agent_id)
        {
            let reason = format!(
                "execs_per_minute: agent `{}` started {limit} execs in the last minute, limit {limit}",
                self.agent_id
            );
            return self.end_failed(&mut journal, reason).await;
        }
        if let Some(command) = &self.spec.command {
            return self.run_process(&mut journal, command).await;
        }
        loop {
            let spec = journal.spec(&self.spec);
            if let Some(reason) = self.limit_reached(&journal, &spec) {
                return self.end_failed(&mut journal, reason).await;
            }
            match journal.next(&spec) {
                Next::Finish(text) => {
                    let events = vec![
                        self.event(event::Kind::OutputEmitted(OutputEmitted { text })),
                        self.state(ExecState::Completed, ""),
                    ];
                    return match self.append(&mut journal, events, "end").await {
                        Ok(()) => Ok(ExecEnd::Completed),
                        Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {
                            Ok(ExecEnd::Finished)
                        }
                        Err(e) => Err(e.into()),
                    };
                }
                next @ (Next::CallModel | Next::Compact) => {
                    let compaction = matches!(next, Next::Compact);
                    match self.call_model(&mut journal, &spec, compaction).await? {
                        Ok(()) => {}
                        Err(Stop::Failed(reason)) => {
                            return self.end_failed(&mut journal, reason).await;
                        }
                        Err(Stop::Finished) => return Ok(ExecEnd::Finished),
                    }
                }
                Next::Tool(index) => {
                    if let Some(end) = self.tool_step(&mut journal, &spec, index).await? {
                        return Ok(end);
                    }
                }
            }
        }
    }

    /// A governance limit the exec has reached, as its FAILED reason.
    pub(super) fn limit_reached(&self, journal: &Journal, spec: &AgentSpec) -> Option<String> {
        if let Some(limit) = spec.exec_timeout
            && journal.started_micros > 0
        {
            let elapsed = Duration::from_micros((now_micros() - journal.started_micros) as u64);
            if elapsed >= limit {
                return Some(format!(
                    "exec_timeout_secs: the exec ran {:.1} s, limit {} s",
                    elapsed.as_secs_f64(),
                    limit.as_secs()
                ));
            }
        }
        None
    }

    pub(super) async fn end_failed(
        &self,
        journal: &mut Journal,
        reason: String,
    ) -> Result<ExecEnd, RunError> {
        tracing::info!(exec = %self.exec_id, %reason, "exec failed");
        match self
            .append(journal, vec![self.state(ExecState::Failed, &reason)], "end")
            .await
        {
            Ok(()) => Ok(ExecEnd::Failed(reason)),
            Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {
                Ok(ExecEnd::Finished)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `conversation/exec/step.index`: the same for every attempt of one call.
    pub(super) fn idempotency_key(&self, call_id: &str) -> String {
        format!("{}/{}/{call_id}", self.conversation, self.exec_id)
    }

    pub(super) fn event(&self, kind: event::Kind) -> NewEvent {
        NewEvent {
            exec_id: self.exec_id.clone(),
            kind,
        }
    }

    pub(super) fn state(&self, state: ExecState, reason: &str) -> NewEvent {
        // No node: the log keeps the exec's owner.
        self.event(event::Kind::ExecStateChanged(ExecStateChanged {
            state: state as i32,
            reason: reason.to_string(),
            node: String::new(),
            epoch: 0,
        }))
    }

    /// Says that the exec was given to `node` (this node was taken for down): its agent stops.
    fn lost(&self, node: &str) {
        tracing::warn!(
            conversation = %self.conversation,
            exec = %self.exec_id,
            now_on = %node,
            "lost the exec to another node (this node was taken for down); its agent stops here"
        );
    }

    /// Appends to the open exec (fenced, with a per-exec idempotency key) and applies the
    /// events to the journal.
    pub(super) async fn append(
        &self,
        journal: &mut Journal,
        events: Vec<NewEvent>,
        key: &str,
    ) -> Result<(), AppendError> {
        // Under the lease the exec had when this run read the log: a later lease (the exec
        // moved away and back meanwhile) refuses it.
        let epoch = journal.epoch;
        let request = || AppendRequest {
            conversation_id: self.conversation.clone(),
            events: events.clone(),
            idempotency_key: Some(format!("{}/{}/{key}", self.conversation, self.exec_id)),
            open_exec: Some(self.exec_id.clone()),
            owner: (!self.node.is_empty()).then(|| Owner {
                node: self.node.clone(),
                epoch,
            }),
        };
        // While the log cannot be reached (a cluster's controller node is down) the agent
        // waits and tries again: the idempotency key makes a retry of an append that did
        // commit a no-op. Crashing instead would only restart it into the same wall, until
        // its supervisor gave up.
        let mut wait = RETRY_FIRST;
        let appended = loop {
            match self.log.append(request()).await {
                Err(AppendError::Store(StoreError::Unavailable(why))) => {
                    if wait == RETRY_FIRST {
                        tracing::warn!(
                            conversation = %self.conversation,
                            exec = %self.exec_id,
                            "the event log cannot be reached; the agent waits for it: {why}"
                        );
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(AppendError::ExecMoved { node, .. }) => {
                    self.lost(&node);
                    return Err(AppendError::ExecMoved {
                        conversation_id: self.conversation.clone(),
                        exec_id: self.exec_id.clone(),
                        node,
                    });
                }
                other => break other?,
            }
        };
        for (i, e) in events.into_iter().enumerate() {
            journal.apply(
                &Event {
                    conversation_id: self.conversation.clone(),
                    seq: appended.first_seq + i as u64,
                    exec_id: e.exec_id,
                    time_unix_micros: now_micros(),
                    kind: Some(e.kind),
                },
                &self.exec_id,
                &self.tools,
            );
        }
        Ok(())
    }

    pub(super) async fn read_journal(&self) -> Result<Journal, RunError> {
        let mut journal = Journal {
            keep_events: self.spec.remote.is_some(),
            fresh: true,
            ..Journal::default()
        };
        let mut after = 0;
        loop {
            let page = self
                .log
                .read(&self.conversation, after, 4096)
                .await
                .map_err(|e| RunError::Read(e.to_string()))?;
            let Some(last) = page.last() else {
                return Ok(journal);
            };
            after = last.seq;
            for e in &page {
                journal.apply(e, &self.exec_id, &self.tools);
            }
        }
    }
}

/// Why a step did not go on.
pub(super) enum Stop {
    /// A limit or an error: the exec ends FAILED with this reason.
    Failed(String),
    /// Someone else ended the exec meanwhile (a cancel).
    Finished,
}

pub(super) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
