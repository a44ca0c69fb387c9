//! An exec's agent as a supervised child of `system/agents`: the built-in `echo` or an agent's
//! durable loop ([`ExecRun`]).

use std::sync::Arc;

use cadre_proto::v1::{ExecState, OutputEmitted, event};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::claims::{Claim, ExecClaims};
use super::state_change;
use crate::agent::{ExecEnd, ExecRun};
use crate::child::{ChildSpec, StartContext, StartError, StartFuture, Started};
use crate::event_log::{AppendError, AppendRequest, EventLog, NewEvent, Owner};
use crate::spec::{ActorKind, ChildExit, ExitReason, Restart, Shutdown};

/// An exec's agent: the built-in `echo` (replies with its input, deterministically) or a
/// configured agent's durable loop.
#[derive(Clone)]
pub(super) struct ExecAgent {
    pub(super) log: Arc<dyn EventLog>,
    /// The cluster node it runs on (empty outside a cluster): its appends are fenced on it.
    pub(super) node: String,
    pub(super) claims: Arc<dyn ExecClaims>,
    pub(super) conversation: String,
    pub(super) exec_id: String,
    /// The agent's id (empty when it is not known: an exec ended because it cannot run).
    pub(super) agent_id: String,
    /// When this node launched it, for the exec duration metric.
    pub(super) started: std::time::Instant,
    /// The exec's `invoke_agent` span (a disabled one when the node does not trace).
    pub(super) span: tracing::Span,
    pub(super) input: String,
    /// `None` for `echo`.
    pub(super) agent: Option<Arc<ExecRun>>,
}

impl ExecAgent {
    /// A transient child: a crashed agent is restarted and resumes from the log; one that ends
    /// normally is removed (`system/agents` is dynamic).
    pub(super) fn child_spec(self) -> ChildSpec {
        let id = self.exec_id.clone();
        let starts = std::sync::atomic::AtomicU32::new(0);
        let start = move |ctx: StartContext| -> StartFuture {
            let agent = self.clone();
            let restarts = starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if restarts > 0 {
                crate::traces::event(
                    &agent.span,
                    "restart",
                    &[
                        ("cadre.actor.path", ctx.path.clone()),
                        ("cadre.restarts", restarts.to_string()),
                    ],
                );
            }
            Box::pin(async move {
                let (actor, _) = Actor::spawn_linked(None, ExecActor, agent, ctx.supervisor)
                    .await
                    .map_err(|e| StartError(e.to_string()))?;
                Ok(Started::actor(actor.get_cell()))
            })
        };
        // Killed at once on shutdown: everything it did is in the log, and a model call it
        // waits on could otherwise hold the shutdown for the whole timeout.
        ChildSpec::worker(id, ActorKind::Agent, start)
            .restart(Restart::Transient)
            .shutdown(Shutdown::BrutalKill)
    }

    async fn run(&self) -> Result<ExecEnd, String> {
        if let Some(agent) = &self.agent {
            return agent.run().await.map_err(|e| e.to_string());
        }
        let reply = AppendRequest {
            conversation_id: self.conversation.clone(),
            events: vec![
                NewEvent {
                    exec_id: self.exec_id.clone(),
                    kind: event::Kind::OutputEmitted(OutputEmitted {
                        text: self.input.clone(),
                    }),
                },
                state_change(&self.exec_id, ExecState::Completed, ""),
            ],
            // The fence alone makes the reply exactly-once, with no key to look up: it ends
            // the exec, so a retry after it committed is refused as finished.
            idempotency_key: None,
            open_exec: Some(self.exec_id.clone()),
            owner: (!self.node.is_empty()).then(|| Owner::node(self.node.clone())),
        };
        match self.log.append(reply).await {
            Ok(_) => Ok(ExecEnd::Completed),
            Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {
                Ok(ExecEnd::Finished)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Ends the exec as FAILED (best effort) when the agent could not run.
    pub(super) async fn fail(&self, why: &str) {
        let failed = AppendRequest {
            conversation_id: self.conversation.clone(),
            events: vec![state_change(&self.exec_id, ExecState::Failed, why)],
            idempotency_key: None,
            open_exec: Some(self.exec_id.clone()),
            owner: (!self.node.is_empty()).then(|| Owner::node(self.node.clone())),
        };
        match self.log.append(failed).await {
            Ok(_) => self.ended("failed"),
            Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {}
            Err(e) => {
                tracing::error!(exec = %self.exec_id, error = %e, "cannot record a failed exec")
            }
        }
        self.finished().await;
    }

    /// Counts the exec's end in the metrics.
    fn ended(&self, state: &str) {
        if !self.agent_id.is_empty() {
            crate::metrics::metrics().exec_ended(&self.agent_id, state, self.started.elapsed());
        }
    }

    async fn finished(&self) {
        self.claims
            .release(&self.conversation, &Claim::Exec(self.exec_id.clone()))
            .await;
    }
}

struct ExecActor;

impl Actor for ExecActor {
    type Msg = ();
    type State = ExecAgent;
    type Arguments = ExecAgent;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        agent: ExecAgent,
    ) -> Result<ExecAgent, ActorProcessingErr> {
        // Work happens after start, so the supervisor's start_child returns at once.
        myself.cast(())?;
        Ok(agent)
    }

    async fn handle(
        &self,
        myself: ActorRef<()>,
        _msg: (),
        agent: &mut ExecAgent,
    ) -> Result<(), ActorProcessingErr> {
        let run = tracing::Instrument::instrument(agent.run(), agent.span.clone()).await;
        if !matches!(run, Ok(ExecEnd::WaitingApproval) | Err(_)) && crate::traces::enabled() {
            let end = match &run {
                Ok(ExecEnd::Completed) => "completed",
                Ok(ExecEnd::Failed(_)) => "failed",
                _ => "ended elsewhere",
            };
            crate::traces::set(&agent.span, "cadre.exec.end", end);
            if let Ok(Some(last)) = agent.log.last_seq(&agent.conversation).await {
                crate::traces::set(&agent.span, "cadre.seq.last", last as i64);
            }
        }
        match run {
            // Paused: the exec stays claimed until an approval runs it on.
            Ok(ExecEnd::WaitingApproval) => {}
            Ok(end) => {
                match end {
                    ExecEnd::Completed => agent.ended("completed"),
                    ExecEnd::Failed(_) => agent.ended("failed"),
                    _ => {}
                }
                agent.finished().await
            }
            Err(e) => {
                tracing::warn!(exec = %agent.exec_id, error = %e, "agent failed; its supervisor restarts it");
                return Err(Box::new(ChildExit(ExitReason::Error(e))));
            }
        }
        myself.stop(None);
        Ok(())
    }
}
