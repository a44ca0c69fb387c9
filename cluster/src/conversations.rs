//! `cadre.v1.Conversations`: execs, subscriptions, forks.
//!
//! Each exec's agent runs as a transient child of the node's `root/agents` supervisor: an agent
//! that crashes is restarted and goes on from the log; one that ends normally is removed. The
//! agents are the `agent` children of the config (model agents, see
//! [`cadre_actors::agent`]) and the built-in `echo`, which replies with its input.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use cadre_actors::agent::{ExecEnd, ExecRun};
use cadre_actors::controller::{
    AppendError, AppendRequest, Controller, DeleteError, NewEvent, SubscribeError, Subscription,
};
use cadre_actors::{
    ActorKind, ChildExit, ChildSpec, ExitReason, Restart, Services, Shutdown, StartContext,
    StartError, StartFuture, Started, SupervisorError, Tree,
};
use cadre_proto::v1::conversations_server::Conversations;
use cadre_proto::v1::{
    ApprovalDecided, ApproveRequest, CancelRequest, Conversation, DeleteConversationRequest,
    DeleteConversationResponse, Event, ExecRequest, ExecState, ExecStateChanged, ForkRequest,
    Forked, GetConversationRequest, InputReceived, ListConversationsRequest,
    ListConversationsResponse, OutputEmitted, SubscribeRequest, event,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The built-in agent: replies with its input.
pub const ECHO: &str = "echo";

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ConversationsService {
    controller: Controller,
    /// Finds the agents supervisor (`root/agents`) by path, whichever instance runs.
    tree: Tree,
    agents: String,
    /// conversation id → the exec running in it (or waiting for an approval).
    running: Arc<Mutex<HashMap<String, String>>>,
    /// Tools, models and agents for model agents.
    services: Services,
}

/// What a second exec is told to do about the running one.
const FOLLOW: &str = "wait for it, or reconnect with last_seq to follow it";
/// Marks a conversation being deleted in the running map (not a valid exec id).
const DELETING: &str = "\0deleting";

/// How many events a list returns when the request does not say.
const DEFAULT_LIST: u32 = 100;
const MAX_LIST: u32 = 1000;

impl ConversationsService {
    pub fn new(
        controller: Controller,
        tree: Tree,
        agents: impl Into<String>,
        services: Services,
    ) -> Self {
        Self {
            controller,
            tree,
            agents: agents.into(),
            running: Arc::default(),
            services,
        }
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

    /// Resumes every exec the last run of the node left unfinished (startup recovery). An exec
    /// whose agent this node does not have ends FAILED, saying so.
    pub async fn recover(&self, open: Vec<cadre_actors::controller::OpenExec>) {
        let count = open.len();
        let mut resumed = 0;
        for exec in open {
            let conversation = exec.conversation_id.clone();
            let summary = match self.describe(&conversation).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(%conversation, error = %e.message(), "cannot recover an exec");
                    continue;
                }
            };
            if summary.exec_id != exec.exec_id || unfinished_exec(&summary).is_none() {
                continue;
            }
            let request = ExecRequest {
                conversation_id: conversation.clone(),
                resume: true,
                last_seq: summary.last_seq,
                ..Default::default()
            };
            match self.resume(request).await {
                Ok(_) => resumed += 1,
                Err(e) => {
                    tracing::warn!(%conversation, exec = %exec.exec_id, error = %e.message(), "exec not resumed")
                }
            }
        }
        tracing::info!(count, resumed, "recovered the execs of the last run");
    }

    /// Makes `exec_id` the conversation's running exec, or says which exec is running (and
    /// what to do: `hint`). A client sees an exec's end as soon as it commits, a moment before
    /// the agent forgets it, so an exec whose terminal event is in the log is not running any
    /// more.
    async fn claim(&self, conversation: &str, exec_id: &str, hint: &str) -> Result<(), Status> {
        loop {
            let current = self.running_exec(conversation);
            if current.as_deref() == Some(DELETING) {
                return Err(Status::failed_precondition(format!(
                    "conversation `{conversation}` is being deleted"
                )));
            }
            if let Some(other) = &current
                && !self.finished(conversation, other).await?
            {
                return Err(Status::failed_precondition(format!(
                    "conversation `{conversation}` already has a running exec `{other}`; {hint}"
                )));
            }
            let mut running = self.running.lock().expect("running");
            if running.get(conversation) == current.as_ref() {
                running.insert(conversation.to_string(), exec_id.to_string());
                return Ok(());
            }
        }
    }

    /// Whether the conversation's last event ends `exec_id`.
    async fn finished(&self, conversation: &str, exec_id: &str) -> Result<bool, Status> {
        let unavailable = |e: cadre_actors::store::StoreError| Status::unavailable(e.to_string());
        let Some(last) = self
            .controller
            .last_seq(conversation)
            .await
            .map_err(unavailable)?
        else {
            return Ok(false);
        };
        let tail = self
            .controller
            .read(conversation, last - 1, 1)
            .await
            .map_err(unavailable)?;
        Ok(tail.first().is_some_and(|e| is_end_of(e, exec_id)))
    }

    fn running_exec(&self, conversation: &str) -> Option<String> {
        self.running
            .lock()
            .expect("running")
            .get(conversation)
            .cloned()
    }

    /// Streams the subscription's events until `done` says the last one ends the stream (or,
    /// with `caught_up`, until that seq). The response polls the subscription itself, with no
    /// task or channel between them: the events of one commit reach the encoder together and
    /// leave in one write, and a client that goes away drops the subscription at once.
    fn stream(
        &self,
        sub: Subscription,
        done: impl Fn(&Event) -> bool + Send + 'static,
        caught_up: Option<u64>,
    ) -> EventStream {
        let ended = caught_up.is_some_and(|end| sub.last_seq() >= end);
        let events = futures_util::stream::unfold(
            (sub, done, ended),
            move |(mut sub, done, ended)| async move {
                if ended {
                    return None;
                }
                match sub.next().await? {
                    Ok(e) => {
                        let last = done(&e) || caught_up.is_some_and(|end| e.seq >= end);
                        Some((Ok(Event::clone(&e)), (sub, done, last)))
                    }
                    Err(e) => Some((Err(subscribe_status(e)), (sub, done, true))),
                }
            },
        );
        Box::pin(events)
    }

    /// Continues the conversation's unfinished exec (after a crash, or in a fork taken
    /// mid-exec): its agent runs again from the log; what it already did is not repeated.
    async fn resume(&self, r: ExecRequest) -> Result<EventStream, Status> {
        let conversation = r.conversation_id;
        let summary = self.describe(&conversation).await?;
        if unfinished_exec(&summary).is_none() {
            return Err(Status::failed_precondition(format!(
                "conversation `{conversation}` has no unfinished exec to resume"
            )));
        }
        if !self.has_agent(&summary.agent_id) {
            return Err(Status::failed_precondition(format!(
                "exec `{}` needs agent `{}`, which this node does not have",
                summary.exec_id, summary.agent_id
            )));
        }
        let input = self.input_of(&conversation, &summary.exec_id).await?;
        self.claim(&conversation, &summary.exec_id, FOLLOW).await?;
        let after = if r.last_seq > 0 {
            r.last_seq
        } else {
            summary.last_seq
        };
        self.launch(
            conversation,
            summary.exec_id,
            summary.agent_id,
            input,
            after,
        )
        .await
    }

    /// Streams the claimed exec's events after `after` and runs its agent under `root/agents`.
    /// If either fails, the exec ends FAILED and the conversation is free again.
    async fn launch(
        &self,
        conversation: String,
        exec_id: String,
        agent_id: String,
        input: String,
        after: u64,
    ) -> Result<EventStream, Status> {
        let model = self.services.agents.get(&agent_id).map(|spec| {
            Arc::new(ExecRun {
                controller: self.controller.clone(),
                tools: self.services.tools.clone(),
                models: self.services.models.clone(),
                agents: self.services.agents.clone(),
                host: self.services.host.clone(),
                agent_id: agent_id.clone(),
                spec,
                conversation: conversation.clone(),
                exec_id: exec_id.clone(),
            })
        });
        let agent = ExecAgent {
            controller: self.controller.clone(),
            running: self.running.clone(),
            conversation,
            exec_id,
            input,
            model,
        };
        let sub = match self.controller.subscribe(&agent.conversation, after).await {
            Ok(sub) => sub,
            Err(e) => {
                agent.fail(&e.to_string()).await;
                return Err(subscribe_status(e));
            }
        };
        let Some((agents, _)) = self.tree.supervisor(&self.agents) else {
            agent.fail("the agents supervisor is not running").await;
            return Err(Status::unavailable("the agents supervisor is not running"));
        };
        let mut started = agents.start_child(agent.clone().child_spec()).await;
        for _ in 0..50 {
            match &started {
                // The agent of an earlier launch (paused for an approval) is still ending.
                Err(SupervisorError::Running(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(SupervisorError::AlreadyPresent(_)) => {
                    let _ = agents.delete_child(&agent.exec_id).await;
                }
                _ => break,
            }
            started = agents.start_child(agent.clone().child_spec()).await;
        }
        if let Err(e) = started {
            agent.fail(&e.to_string()).await;
            return Err(Status::unavailable(format!("cannot start the agent: {e}")));
        }
        let exec_id = agent.exec_id;
        Ok(self.stream(sub, move |e| is_end_of(e, &exec_id), None))
    }

    /// The input of an exec, from its `InputReceived`.
    async fn input_of(&self, conversation: &str, exec_id: &str) -> Result<String, Status> {
        let mut input = None;
        self.scan(conversation, |e| match &e.kind {
            Some(event::Kind::InputReceived(i)) if e.exec_id == exec_id => {
                input = Some(i.text.clone());
                false
            }
            _ => true,
        })
        .await?;
        input.ok_or_else(|| {
            Status::failed_precondition(format!(
                "exec `{exec_id}` has no input in conversation `{conversation}`"
            ))
        })
    }

    /// Reads the conversation from the start, page by page, while `visit` returns true.
    /// Returns the seq of the last event read (0 if there are none).
    async fn scan(
        &self,
        conversation: &str,
        mut visit: impl FnMut(&Event) -> bool,
    ) -> Result<u64, Status> {
        let mut after = 0;
        loop {
            let page = self
                .controller
                .read(conversation, after, 4096)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let Some(last) = page.last() else {
                return Ok(after);
            };
            after = last.seq;
            for e in &page {
                if !visit(e) {
                    return Ok(e.seq);
                }
            }
        }
    }

    async fn start_exec(
        &self,
        conversation: String,
        r: ExecRequest,
    ) -> Result<EventStream, Status> {
        if !self.has_agent(&r.agent_id) {
            return Err(Status::invalid_argument(format!(
                "agent_id: unknown agent `{}` (available: {})",
                r.agent_id,
                self.agent_names()
            )));
        }
        let exec_id = new_id("e");
        self.claim(&conversation, &exec_id, FOLLOW).await?;
        let begin = AppendRequest {
            conversation_id: conversation.clone(),
            events: vec![
                NewEvent {
                    exec_id: exec_id.clone(),
                    kind: event::Kind::InputReceived(InputReceived {
                        agent_id: r.agent_id.clone(),
                        text: r.input.clone(),
                    }),
                },
                state(&exec_id, ExecState::Running, ""),
            ],
            idempotency_key: None,
            open_exec: None,
        };
        let appended = match self.controller.append(begin).await {
            Ok(a) => a,
            Err(e) => {
                self.running.lock().expect("running").remove(&conversation);
                return Err(append_status(e));
            }
        };
        self.launch(
            conversation,
            exec_id,
            r.agent_id,
            r.input,
            appended.first_seq - 1,
        )
        .await
    }
}

#[tonic::async_trait]
impl Conversations for ConversationsService {
    type ExecStream = EventStream;
    type SubscribeStream = EventStream;

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        let reconnect = r.input.is_empty();
        if reconnect && r.conversation_id.is_empty() {
            return Err(Status::invalid_argument(
                "input: empty; give an input to start an exec, or a conversation_id (and last_seq) \
                 to reconnect to one",
            ));
        }
        if r.resume {
            if !r.input.is_empty() {
                return Err(Status::invalid_argument(
                    "input: must be empty with resume (it continues the unfinished exec)",
                ));
            }
            return self.resume(r).await.map(Response::new);
        }
        if !reconnect && r.last_seq > 0 {
            return Err(Status::invalid_argument(
                "input: must be empty with resume or last_seq (they reconnect to an exec)",
            ));
        }
        if !reconnect {
            let conversation = if r.conversation_id.is_empty() {
                new_id("c")
            } else {
                r.conversation_id.clone()
            };
            return self.start_exec(conversation, r).await.map(Response::new);
        }
        // Reconnect: exactly the events after last_seq, then the running exec to its end.
        let sub = self
            .controller
            .subscribe(&r.conversation_id, r.last_seq)
            .await
            .map_err(subscribe_status)?;
        let stream = match self.running_exec(&r.conversation_id) {
            Some(exec_id) => self.stream(sub, move |e| is_end_of(e, &exec_id), None),
            None => {
                let end = self
                    .controller
                    .last_seq(&r.conversation_id)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?
                    .unwrap_or(0);
                self.stream(sub, |_| false, Some(end))
            }
        };
        Ok(Response::new(stream))
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        let sub = self
            .controller
            .subscribe(&r.conversation_id, r.after_seq)
            .await
            .map_err(subscribe_status)?;
        Ok(Response::new(self.stream(sub, |_| false, None)))
    }

    async fn get(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        let id = request.into_inner().conversation_id;
        Ok(Response::new(self.describe(&id).await?))
    }

    async fn list(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => DEFAULT_LIST,
            n if n > MAX_LIST => {
                return Err(Status::invalid_argument(format!(
                    "limit: at most {MAX_LIST}, got {n}"
                )));
            }
            n => n,
        };
        let conversations = self
            .controller
            .list(&r.after, limit as usize)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .into_iter()
            .map(|(conversation_id, last_seq)| Conversation {
                conversation_id,
                last_seq,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ListConversationsResponse { conversations }))
    }

    async fn fork(&self, request: Request<ForkRequest>) -> Result<Response<Conversation>, Status> {
        let r = request.into_inner();
        let end = self
            .controller
            .last_seq(&r.src_conversation_id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| {
                Status::not_found(format!("no conversation `{}`", r.src_conversation_id))
            })?;
        let at = if r.at_seq == 0 { end } else { r.at_seq };
        if at > end {
            return Err(Status::out_of_range(format!(
                "at_seq {at} is beyond the end of conversation `{}` (last seq {end})",
                r.src_conversation_id
            )));
        }
        let dest = if r.dest_conversation_id.is_empty() {
            new_id("c")
        } else {
            r.dest_conversation_id
        };
        if let Some(model) = r.patch.as_ref().and_then(|p| p.model.as_ref())
            && !self.services.models.contains_key(model)
        {
            return Err(Status::invalid_argument(format!(
                "patch.model: unknown model `{model}` (models: {})",
                self.services
                    .models
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if r.patch.as_ref().and_then(|p| p.max_iterations) == Some(0) {
            return Err(Status::invalid_argument(
                "patch.max_iterations: must be ≥ 1",
            ));
        }
        // Copied, not referenced: each conversation stays self-contained (reads never follow a
        // chain of forks), at the cost of storing the shared prefix again.
        let prefix = self
            .controller
            .read(&r.src_conversation_id, 0, at as usize)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
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
                src_conversation_id: r.src_conversation_id,
                at_seq: at,
                patch: r.patch,
            }),
        });
        self.controller
            .create(AppendRequest {
                conversation_id: dest.clone(),
                events,
                idempotency_key: None,
                open_exec: None,
            })
            .await
            .map_err(append_status)?;
        Ok(Response::new(self.describe(&dest).await?))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<Conversation>, Status> {
        self.cancel_exec(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<Conversation>, Status> {
        self.approve_call(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<DeleteConversationRequest>,
    ) -> Result<Response<DeleteConversationResponse>, Status> {
        let id = request.into_inner().conversation_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("conversation_id is required"));
        }
        let hint = format!("cancel it first (`cadre cancel --conversation {id}`)");
        // Held while deleting, so no exec starts in the conversation meanwhile.
        self.claim(&id, DELETING, &hint).await?;
        let deleted = self.controller.delete(&id).await;
        release(&self.running, &id, DELETING);
        let events = deleted.map_err(delete_status)?;
        Ok(Response::new(DeleteConversationResponse {
            conversation_id: id,
            events,
        }))
    }
}

impl ConversationsService {
    async fn approve_call(&self, r: ApproveRequest) -> Result<Conversation, Status> {
        let conversation = r.conversation_id;
        let summary = self.describe(&conversation).await?;
        if summary.exec_state != ExecState::WaitingApproval as i32 {
            return Err(Status::failed_precondition(format!(
                "conversation `{conversation}` has no exec waiting for an approval"
            )));
        }
        if !r.call_id.is_empty() && r.call_id != summary.waiting_call_id {
            return Err(Status::failed_precondition(format!(
                "exec `{}` waits on call {} (`{}`), not {}",
                summary.exec_id, summary.waiting_call_id, summary.waiting_tool, r.call_id
            )));
        }
        let exec_id = summary.exec_id.clone();
        let reason = if r.reason.is_empty() {
            if r.approved { "approved" } else { "declined" }.to_string()
        } else {
            r.reason
        };
        // Fenced on the exec being open, and keyed by the call: two approvers, one decision.
        let decided = AppendRequest {
            conversation_id: conversation.clone(),
            events: vec![
                NewEvent {
                    exec_id: exec_id.clone(),
                    kind: event::Kind::ApprovalDecided(ApprovalDecided {
                        call_id: summary.waiting_call_id.clone(),
                        tool: summary.waiting_tool.clone(),
                        approved: r.approved,
                        reason,
                    }),
                },
                state(&exec_id, ExecState::Running, ""),
            ],
            idempotency_key: Some(format!(
                "{conversation}/{exec_id}/{}/decided",
                summary.waiting_call_id
            )),
            open_exec: Some(exec_id.clone()),
        };
        let appended = self
            .controller
            .append(decided)
            .await
            .map_err(append_status)?;
        if appended.duplicate {
            return Err(Status::failed_precondition(format!(
                "call {} of exec `{exec_id}` was already decided",
                summary.waiting_call_id
            )));
        }
        // The paused agent has ended; run it on from the log.
        release(&self.running, &conversation, &exec_id);
        self.claim(&conversation, &exec_id, FOLLOW).await?;
        let input = self.input_of(&conversation, &exec_id).await?;
        // The approver follows the exec with Subscribe or Exec (last_seq) if they want to.
        drop(
            self.launch(
                conversation.clone(),
                exec_id,
                summary.agent_id,
                input,
                appended.last_seq,
            )
            .await?,
        );
        self.describe(&conversation).await
    }

    async fn cancel_exec(&self, r: CancelRequest) -> Result<Conversation, Status> {
        let conversation = r.conversation_id;
        let summary = self.describe(&conversation).await?;
        let Some(exec_id) = unfinished_exec(&summary).map(str::to_string) else {
            return Err(Status::failed_precondition(format!(
                "conversation `{conversation}` has no unfinished exec to cancel"
            )));
        };
        if !r.exec_id.is_empty() && r.exec_id != exec_id {
            return Err(Status::failed_precondition(format!(
                "exec `{}` is not the unfinished exec of conversation `{conversation}` (that \
                 is `{exec_id}`)",
                r.exec_id
            )));
        }
        let reason = if r.reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            r.reason
        };
        // Fenced on the exec being open: of a cancel and the agent's own end, one wins.
        self.controller
            .append(AppendRequest {
                conversation_id: conversation.clone(),
                events: vec![state(&exec_id, ExecState::Cancelled, &reason)],
                idempotency_key: None,
                open_exec: Some(exec_id.clone()),
            })
            .await
            .map_err(append_status)?;
        // The agent may be running (or may not, e.g. after a crash); its appends are refused
        // from now on either way.
        if let Some((agents, _)) = self.tree.supervisor(&self.agents) {
            match agents.terminate_child(&exec_id).await {
                // A stopped transient child stays listed until deleted.
                Ok(()) => {
                    let _ = agents.delete_child(&exec_id).await;
                }
                Err(SupervisorError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(exec = %exec_id, error = %e, "cannot stop a cancelled exec's agent")
                }
            }
        }
        release(&self.running, &conversation, &exec_id);
        self.describe(&conversation).await
    }

    /// A conversation's summary, from its log.
    async fn describe(&self, id: &str) -> Result<Conversation, Status> {
        let mut c = Conversation {
            conversation_id: id.to_string(),
            ..Default::default()
        };
        // The exec's model steps, and its tool calls not answered yet (call id, tool).
        let mut step = 0u32;
        let mut pending_calls: Vec<(String, String)> = Vec::new();
        let after = self
            .scan(id, |e| {
                let last_call = pending_calls.first().cloned().unwrap_or_default();
                match &e.kind {
                    Some(event::Kind::InputReceived(i)) => {
                        step = 0;
                        pending_calls.clear();
                        c.exec_id = e.exec_id.clone();
                        c.agent_id = i.agent_id.clone();
                        c.exec_state = ExecState::Pending as i32;
                    }
                    Some(event::Kind::ExecStateChanged(s)) if e.exec_id == c.exec_id => {
                        c.exec_state = s.state;
                        c.waiting_call_id.clear();
                        c.waiting_tool.clear();
                        if s.state == ExecState::WaitingApproval as i32 {
                            c.waiting_call_id = last_call.0.clone();
                            c.waiting_tool = last_call.1.clone();
                        }
                    }
                    Some(event::Kind::ModelCalled(m)) if e.exec_id == c.exec_id => {
                        pending_calls = waiting_calls(&m.response_json, &mut step);
                    }
                    Some(event::Kind::ToolReturned(t)) if e.exec_id == c.exec_id => {
                        pending_calls.retain(|(id, _)| id != &t.call_id);
                    }
                    Some(event::Kind::Forked(f)) => {
                        c.forked_from = f.src_conversation_id.clone();
                        c.forked_at_seq = f.at_seq;
                    }
                    _ => {}
                }
                true
            })
            .await?;
        if after == 0 {
            return Err(Status::not_found(format!("no conversation `{id}`")));
        }
        c.last_seq = after;
        Ok(c)
    }
}

/// The tool calls of a model step, as (`STEP.INDEX`, tool), counting the step.
fn waiting_calls(response_json: &str, step: &mut u32) -> Vec<(String, String)> {
    *step += 1;
    let response: serde_json::Value = serde_json::from_str(response_json).unwrap_or_default();
    let calls = response["choices"][0]["message"]["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let wire = c["function"]["name"].as_str().unwrap_or_default();
            (format!("{step}.{}", i + 1), wire.replacen("__", ".", 1))
        })
        .collect()
}

/// Whether `e` is the terminal state change of `exec_id`.
fn is_end_of(e: &Event, exec_id: &str) -> bool {
    match &e.kind {
        Some(event::Kind::ExecStateChanged(s)) if e.exec_id == exec_id => is_terminal(s.state),
        _ => false,
    }
}

fn is_terminal(state: i32) -> bool {
    matches!(
        ExecState::try_from(state),
        Ok(ExecState::Completed | ExecState::Failed | ExecState::Cancelled)
    )
}

/// The conversation's exec that has not finished, if any.
fn unfinished_exec(summary: &Conversation) -> Option<&str> {
    (!summary.exec_id.is_empty() && !is_terminal(summary.exec_state))
        .then_some(summary.exec_id.as_str())
}

/// Forgets that `exec_id` runs in `conversation`, unless another exec has taken its place.
fn release(running: &Mutex<HashMap<String, String>>, conversation: &str, exec_id: &str) {
    let mut running = running.lock().expect("running");
    if running.get(conversation).map(String::as_str) == Some(exec_id) {
        running.remove(conversation);
    }
}

fn state(exec_id: &str, state: ExecState, reason: &str) -> NewEvent {
    NewEvent {
        exec_id: exec_id.to_string(),
        kind: event::Kind::ExecStateChanged(ExecStateChanged {
            state: state as i32,
            reason: reason.to_string(),
        }),
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn subscribe_status(e: SubscribeError) -> Status {
    match e {
        SubscribeError::NotFound(_) => Status::not_found(e.to_string()),
        SubscribeError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        SubscribeError::TooSlow { .. } => Status::aborted(e.to_string()),
        SubscribeError::Deleted(_) => Status::not_found(e.to_string()),
        SubscribeError::Store(_) => Status::unavailable(e.to_string()),
    }
}

pub fn delete_status(e: DeleteError) -> Status {
    match e {
        DeleteError::Invalid(_) => Status::invalid_argument(e.to_string()),
        DeleteError::NotFound(_) => Status::not_found(e.to_string()),
        DeleteError::Store(_) | DeleteError::Unavailable => Status::unavailable(e.to_string()),
    }
}

pub fn append_status(e: AppendError) -> Status {
    match e {
        AppendError::Invalid(_) => Status::invalid_argument(e.to_string()),
        AppendError::HistoryLimit { .. } => Status::resource_exhausted(e.to_string()),
        AppendError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        AppendError::ExecFinished { .. } => Status::failed_precondition(e.to_string()),
        AppendError::Store(_) | AppendError::Unavailable => Status::unavailable(e.to_string()),
    }
}

/// An exec's agent: the built-in `echo` (replies with its input, deterministically) or a model
/// agent's durable loop.
#[derive(Clone)]
struct ExecAgent {
    controller: Controller,
    running: Arc<Mutex<HashMap<String, String>>>,
    conversation: String,
    exec_id: String,
    input: String,
    model: Option<Arc<ExecRun>>,
}

impl ExecAgent {
    /// A transient child: a crashed agent is restarted and resumes from the log; one that ends
    /// normally is removed (`root/agents` is dynamic).
    fn child_spec(self) -> ChildSpec {
        let id = self.exec_id.clone();
        let start = move |ctx: StartContext| -> StartFuture {
            let agent = self.clone();
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
        if let Some(model) = &self.model {
            return model.run().await.map_err(|e| e.to_string());
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
                state(&self.exec_id, ExecState::Completed, ""),
            ],
            // The fence alone makes the reply exactly-once, with no key to look up: it ends
            // the exec, so a retry after it committed is refused as finished.
            idempotency_key: None,
            open_exec: Some(self.exec_id.clone()),
        };
        match self.controller.append(reply).await {
            Ok(_) => Ok(ExecEnd::Completed),
            Err(AppendError::ExecFinished { .. }) => Ok(ExecEnd::Finished),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Ends the exec as FAILED (best effort) when the agent could not run.
    async fn fail(&self, why: &str) {
        let failed = AppendRequest {
            conversation_id: self.conversation.clone(),
            events: vec![state(&self.exec_id, ExecState::Failed, why)],
            idempotency_key: None,
            open_exec: Some(self.exec_id.clone()),
        };
        match self.controller.append(failed).await {
            Ok(_) | Err(AppendError::ExecFinished { .. }) => {}
            Err(e) => {
                tracing::error!(exec = %self.exec_id, error = %e, "cannot record a failed exec")
            }
        }
        self.finished();
    }

    fn finished(&self) {
        release(&self.running, &self.conversation, &self.exec_id);
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
        match agent.run().await {
            // Paused: the exec stays claimed until an approval runs it on.
            Ok(ExecEnd::WaitingApproval) => {}
            Ok(_) => agent.finished(),
            Err(e) => {
                tracing::warn!(exec = %agent.exec_id, error = %e, "agent failed; its supervisor restarts it");
                return Err(Box::new(ChildExit(ExitReason::Error(e))));
            }
        }
        myself.stop(None);
        Ok(())
    }
}
