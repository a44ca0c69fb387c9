//! Model agents (kind `agent`) and their durable exec loop.
//!
//! An `agent` child in the tree registers its definition under its id (the `agent_id` of an
//! exec). Each exec then runs [`ExecRun::run`]: a tool-calling loop against the agent's model in
//! which every effect is journaled before its result is used. The loop's state is rebuilt from
//! the conversation's log each time it starts, so after a crash it goes on where the log ends:
//! a model call or tool call with a result in the log is read back, never made again; a tool
//! call with `ToolCalled` but no `ToolReturned` is made again with the same idempotency key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cadre_proto::v1::{
    AgentPatch, Event, ExecState, ExecStateChanged, ModelCalled, OutputEmitted, ToolCalled,
    ToolReturned, event, tool_returned,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Value, json};

use crate::controller::{AppendError, AppendRequest, Controller, NewEvent};
use crate::model::{ChatRequest, ModelClient, ModelError, Models};
use crate::process::ProcessExit;
use crate::sandbox::{HostedExit, HostedSpec, SandboxHost};
use crate::services::Services;
use crate::spec::{ActorKind, ChildSpec, StartContext, StartError, StartFuture, Started};
use crate::tools::{CallContext, ToolError, ToolRegistry};

/// An `agent` child's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// A model id of the node's `models:` (empty for a remote agent).
    pub model: String,
    /// A remote agent's `AgentService` address (`http://HOST:PORT`) instead of a model.
    pub remote: Option<String>,
    /// A process agent's command (a harness run in the conversation's sandbox, speaking JSON
    /// lines over stdio) instead of a model.
    pub command: Option<Vec<String>>,
    pub system_prompt: String,
    /// The tools it may call: `ns.tool`, `ns.*` or `*`.
    pub tools: Vec<String>,
    /// Tools (same patterns) whose calls pause the exec for an approval, besides those that
    /// always need one.
    pub require_approval: Vec<String>,
    /// Model calls per exec.
    pub max_iterations: u32,
    /// Tokens (prompt + completion) the conversation may use in all; checked before each call.
    pub token_budget: Option<u64>,
    /// When a model call's prompt reaches this many tokens, the next step summarises the
    /// history first.
    pub compact_at_tokens: Option<u64>,
    /// How long one tool call may take.
    pub tool_timeout: Duration,
    /// How long one exec may take (from its input).
    pub exec_timeout: Option<Duration>,
    /// Execs this agent starts per minute on this node.
    pub execs_per_minute: Option<u32>,
    /// The same tool call with the same arguments this many times in one exec stops it.
    pub max_repeats: u32,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            model: String::new(),
            remote: None,
            command: None,
            system_prompt: String::new(),
            tools: Vec::new(),
            require_approval: Vec::new(),
            max_iterations: 20,
            token_budget: None,
            compact_at_tokens: None,
            tool_timeout: Duration::from_secs(60),
            exec_timeout: None,
            execs_per_minute: None,
            max_repeats: 3,
        }
    }
}

/// The node's agents by id; cheap to clone.
#[derive(Clone, Default)]
pub struct AgentRegistry {
    inner: Arc<RwLock<BTreeMap<String, Registered>>>,
}

#[derive(Clone)]
struct Registered {
    spec: AgentSpec,
    /// The actor that holds the registration.
    path: String,
    /// Start times of recent execs, for `execs_per_minute`.
    starts: Arc<Mutex<VecDeque<Instant>>>,
}

impl AgentRegistry {
    pub fn get(&self, id: &str) -> Option<AgentSpec> {
        self.inner
            .read()
            .expect("agents")
            .get(id)
            .map(|r| r.spec.clone())
    }

    pub fn ids(&self) -> Vec<String> {
        self.inner.read().expect("agents").keys().cloned().collect()
    }

    /// Counts an exec start against the agent's rate limit: `Err(limit)` if it is reached.
    pub fn admit(&self, id: &str) -> Result<(), u32> {
        let Some(r) = self.inner.read().expect("agents").get(id).cloned() else {
            return Ok(());
        };
        let Some(limit) = r.spec.execs_per_minute else {
            return Ok(());
        };
        let mut starts = r.starts.lock().expect("starts");
        let now = Instant::now();
        while starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            starts.pop_front();
        }
        if starts.len() >= limit as usize {
            return Err(limit);
        }
        starts.push_back(now);
        Ok(())
    }

    fn add(&self, id: &str, path: &str, spec: AgentSpec) -> Result<(), String> {
        let mut inner = self.inner.write().expect("agents");
        if let Some(other) = inner.get(id)
            && other.path != path
        {
            return Err(format!(
                "agent id `{id}` is already taken by `{}`",
                other.path
            ));
        }
        inner.insert(
            id.to_string(),
            Registered {
                spec,
                path: path.to_string(),
                starts: Arc::default(),
            },
        );
        Ok(())
    }

    fn remove(&self, id: &str, path: &str) {
        let mut inner = self.inner.write().expect("agents");
        if inner.get(id).is_some_and(|r| r.path == path) {
            inner.remove(id);
        }
    }
}

/// The child spec of an `agent` entry: an actor that holds the agent's registration while it
/// runs (its execs run under the node's `root/agents`).
pub fn agent_child(id: impl Into<String>, spec: AgentSpec, services: Services) -> ChildSpec {
    let id = id.into();
    let agent_id = id.clone();
    let start = move |ctx: StartContext| -> StartFuture {
        let (spec, services, id) = (spec.clone(), services.clone(), agent_id.clone());
        Box::pin(async move {
            if spec.remote.is_none()
                && spec.command.is_none()
                && !services.models.contains_key(&spec.model)
            {
                return Err(StartError(format!(
                    "agent `{id}`: unknown model `{}` (the node's models: {})",
                    spec.model,
                    services
                        .models
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            services
                .agents
                .add(&id, &ctx.path, spec)
                .map_err(StartError)?;
            let held = Held {
                agents: services.agents.clone(),
                id,
                path: ctx.path.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, AgentHolder, held, ctx.supervisor)
                .await
                .map_err(|e| StartError(e.to_string()))?;
            Ok(Started::actor(actor.get_cell()))
        })
    };
    ChildSpec::worker(id, ActorKind::Agent, start)
}

struct Held {
    agents: AgentRegistry,
    id: String,
    path: String,
}

struct AgentHolder;

impl Actor for AgentHolder {
    type Msg = ();
    type State = Held;
    type Arguments = Held;

    async fn pre_start(&self, _: ActorRef<()>, held: Held) -> Result<Held, ActorProcessingErr> {
        Ok(held)
    }

    async fn post_stop(&self, _: ActorRef<()>, held: &mut Held) -> Result<(), ActorProcessingErr> {
        held.agents.remove(&held.id, &held.path);
        Ok(())
    }
}

/// One exec of a model agent.
pub struct ExecRun {
    pub controller: Controller,
    pub tools: ToolRegistry,
    pub models: Models,
    /// For the agent's rate limit.
    pub agents: AgentRegistry,
    /// Where process agents run (`None` on a node without sandboxes).
    pub host: Option<Arc<dyn SandboxHost>>,
    pub agent_id: String,
    pub spec: AgentSpec,
    pub conversation: String,
    pub exec_id: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
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
    #[error("the event log: {0}")]
    Append(#[from] AppendError),
    #[error("cannot read the log: {0}")]
    Read(String),
}

/// How often, and how long apart, a failing model call is tried.
const MODEL_ATTEMPTS: u32 = 4;
const MODEL_RETRY: Duration = Duration::from_millis(250);

/// What the next step of the loop is, from the journal.
enum Next {
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
        if journal.state.is_some_and(is_terminal) {
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
                        Err(AppendError::ExecFinished { .. }) => Ok(ExecEnd::Finished),
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

    /// Runs a process agent: its command starts in the conversation's sandbox, gets the input
    /// as a JSON line on stdin, and writes JSON lines on stdout: `{"type":"output","text"}` is
    /// journaled as an output; `{"type":"tool_call","tool","arguments"}` is made and journaled
    /// by the node, which answers `{"type":"tool_result","call_id","result"|"error"}` on
    /// stdin. Exit 0 completes the exec; anything else fails it. A harness is opaque, so after
    /// a crash it runs again: outputs and tool calls are numbered in order, and those already
    /// in the log are read back (an output is not journaled twice, a returned call is not made
    /// again).
    async fn run_process(
        &self,
        journal: &mut Journal,
        command: &[String],
    ) -> Result<ExecEnd, RunError> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

        let Some(host) = &self.host else {
            let reason = "process agents need sandboxes; this node has none".to_string();
            return self.end_failed(journal, reason).await;
        };
        let spec = HostedSpec {
            actor: crate::builtin::workspace_actor(&self.conversation),
            argv: command.to_vec(),
            env: vec![
                ("CADRE_CONVERSATION".into(), self.conversation.clone()),
                ("CADRE_EXEC".into(), self.exec_id.clone()),
            ],
        };
        let process = match host.spawn(spec).await {
            Ok(p) => p,
            Err(e) => {
                return self
                    .end_failed(journal, format!("process agent: cannot start: {e}"))
                    .await;
            }
        };
        let input = json!({
            "type": "input",
            "conversation_id": self.conversation,
            "exec_id": self.exec_id,
            "text": journal.input,
        });
        let mut stdin = process.stdin;
        let mut lines = BufReader::new(process.stdout).lines();
        let _ = stdin.write_all(format!("{input}\n").as_bytes()).await;
        let (mut outputs, mut calls) = (0u32, 0u32);
        let deadline = self.time_left(journal);
        let work = async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(message) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!(exec = %self.exec_id, %line, "process agent: not a JSON line");
                    continue;
                };
                match message["type"].as_str() {
                    Some("output") => {
                        outputs += 1;
                        let text = message["text"].as_str().unwrap_or_default().to_string();
                        let event = self.event(event::Kind::OutputEmitted(OutputEmitted { text }));
                        self.append(journal, vec![event], &format!("out-{outputs}"))
                            .await?;
                    }
                    Some("tool_call") => {
                        calls += 1;
                        let call_id = format!("p{calls}");
                        let tool = message["tool"].as_str().unwrap_or_default().to_string();
                        let arguments = message["arguments"].clone();
                        let result = self
                            .process_tool(journal, &call_id, &tool, arguments)
                            .await?;
                        let mut answer = json!({"type": "tool_result", "call_id": call_id});
                        match result {
                            Ok(v) => answer["result"] = v,
                            Err(e) => answer["error"] = Value::String(e),
                        }
                        let _ = stdin.write_all(format!("{answer}\n").as_bytes()).await;
                    }
                    _ => {
                        tracing::warn!(exec = %self.exec_id, %line, "process agent: unknown message")
                    }
                }
            }
            drop(stdin);
            let mut exit = process.exit.clone();
            let exit = exit
                .wait_for(Option::is_some)
                .await
                .map(|e| e.clone())
                .ok()
                .flatten();
            Ok::<_, AppendError>(exit)
        };
        let exit = match deadline {
            Some(left) => match tokio::time::timeout(left, work).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = process.signals.send(libc::SIGKILL);
                    let reason = format!(
                        "exec_timeout_secs: the process agent ran past the limit of {} s",
                        self.spec.exec_timeout.unwrap_or_default().as_secs()
                    );
                    return self.end_failed(journal, reason).await;
                }
            },
            None => work.await,
        };
        drop(process.hold);
        let exit = match exit {
            Ok(e) => e,
            Err(AppendError::ExecFinished { .. }) => return Ok(ExecEnd::Finished),
            Err(e) => return Err(e.into()),
        };
        match exit {
            Some(HostedExit::Exited(ProcessExit::Code(0))) => {
                match self
                    .append(journal, vec![self.state(ExecState::Completed, "")], "end")
                    .await
                {
                    Ok(()) => Ok(ExecEnd::Completed),
                    Err(AppendError::ExecFinished { .. }) => Ok(ExecEnd::Finished),
                    Err(e) => Err(e.into()),
                }
            }
            Some(HostedExit::Exited(ProcessExit::Signal(signal))) => {
                let reason = format!("process agent: killed by signal {signal}");
                self.end_failed(journal, reason).await
            }
            Some(HostedExit::Exited(ProcessExit::Code(code))) => {
                let reason = format!("process agent: exited with status {code}");
                self.end_failed(journal, reason).await
            }
            Some(HostedExit::Lost(why)) => Err(RunError::Read(format!("sandbox lost: {why}"))),
            None => Err(RunError::Read(
                "the process agent's exit was not reported".into(),
            )),
        }
    }

    /// One tool call of a process agent: read back if it returned before a crash, made
    /// again with its key if it started, else journaled and made.
    async fn process_tool(
        &self,
        journal: &mut Journal,
        call_id: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Result<Value, String>, AppendError> {
        if let Some(result) = journal.results.get(call_id) {
            return Ok(result.clone());
        }
        let prepared = if matches_any(&self.spec.tools, tool) {
            self.tools.prepare(tool, &arguments)
        } else {
            Err(ToolError::NotFound(format!(
                "{tool}` is not allowed for agent `{}",
                self.agent_id
            )))
        };
        let prepared = match prepared {
            Ok(p) if p.requires_approval || matches_any(&self.spec.require_approval, tool) => {
                let error = format!(
                    "tool `{tool}` needs an approval, which a process agent cannot wait for"
                );
                self.returned(journal, call_id, Err(error.clone())).await?;
                return Ok(Err(error));
            }
            Ok(p) => p,
            Err(e) => {
                self.returned(journal, call_id, Err(e.to_string())).await?;
                return Ok(Err(e.to_string()));
            }
        };
        if !journal.called.contains_key(call_id) {
            let called = ToolCalled {
                call_id: call_id.to_string(),
                tool: tool.to_string(),
                arguments_json: arguments.to_string(),
                idempotency_key: self.idempotency_key(call_id),
            };
            let events = vec![self.event(event::Kind::ToolCalled(called))];
            self.append(journal, events, &format!("{call_id}/called"))
                .await?;
        }
        let ctx = CallContext {
            conversation: self.conversation.clone(),
            idempotency_key: journal.called[call_id].clone(),
        };
        let result = match tokio::time::timeout(self.spec.tool_timeout, prepared.call(&ctx)).await {
            Ok(Ok(o)) => Ok(o.result),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "timed out after {} ms",
                self.spec.tool_timeout.as_millis()
            )),
        };
        self.returned(journal, call_id, result.clone()).await?;
        Ok(result)
    }

    /// A governance limit the exec has reached, as its FAILED reason.
    fn limit_reached(&self, journal: &Journal, spec: &AgentSpec) -> Option<String> {
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

    async fn call_model(
        &self,
        journal: &mut Journal,
        spec: &AgentSpec,
        compaction: bool,
    ) -> Result<Result<(), Stop>, RunError> {
        if !compaction && journal.steps >= spec.max_iterations {
            return Ok(Err(Stop::Failed(format!(
                "max_iterations: {} model calls made, limit {}",
                journal.steps, spec.max_iterations
            ))));
        }
        if let Some(budget) = spec.token_budget
            && journal.tokens_used >= budget
        {
            return Ok(Err(Stop::Failed(format!(
                "token_budget: {} tokens used, limit {budget}",
                journal.tokens_used
            ))));
        }
        let step = journal.model_calls + 1;
        let (name, response) = match &spec.remote {
            Some(address) => (
                format!("remote agent at {address}"),
                self.remote_step(address, journal, spec, step).await,
            ),
            None => {
                let Some(model) = self.models.get(&spec.model).cloned() else {
                    return Ok(Err(Stop::Failed(format!(
                        "model `{}` is not configured",
                        spec.model
                    ))));
                };
                let mut messages = vec![json!({"role": "system", "content": spec.system_prompt})];
                messages.extend(journal.messages.iter().cloned());
                let tools = if compaction {
                    messages.push(json!({"role": "user", "content": COMPACTION_PROMPT}));
                    Vec::new()
                } else {
                    self.tool_list(spec)
                        .into_iter()
                        .map(|t| {
                            json!({
                                "type": "function",
                                "function": {
                                    "name": wire_name(&t.name),
                                    "description": t.description,
                                    "parameters": t.input_schema,
                                }
                            })
                        })
                        .collect()
                };
                let request = ChatRequest { messages, tools };
                let response = self.chat(model.as_ref(), request, journal).await;
                (model.name().to_string(), response)
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(reason) => return Ok(Err(Stop::Failed(reason))),
        };
        let called = ModelCalled {
            model: name,
            request_summary: if compaction {
                format!("compaction of {} messages", journal.messages.len())
            } else {
                format!(
                    "step {} with {} messages",
                    journal.steps + 1,
                    journal.messages.len() + 1
                )
            },
            response_json: response.raw.to_string(),
            prompt_tokens: response.prompt_tokens,
            completion_tokens: response.completion_tokens,
            compaction,
        };
        let key = format!("model-{step}");
        match self
            .append(
                journal,
                vec![self.event(event::Kind::ModelCalled(called))],
                &key,
            )
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(AppendError::ExecFinished { .. }) => Ok(Err(Stop::Finished)),
            Err(e) => Err(e.into()),
        }
    }

    /// One model request, tried again while the endpoint fails transiently, within the exec's
    /// time limit.
    async fn chat(
        &self,
        model: &dyn ModelClient,
        request: ChatRequest,
        journal: &Journal,
    ) -> Result<crate::model::ChatResponse, String> {
        let mut last: Option<ModelError> = None;
        for attempt in 0..MODEL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(MODEL_RETRY * attempt).await;
            }
            let call = model.chat(request.clone());
            let result = match self.time_left(journal) {
                Some(left) => match tokio::time::timeout(left, call).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(format!(
                            "exec_timeout_secs: the model call did not answer within the exec's \
                             limit of {} s",
                            self.spec.exec_timeout.unwrap_or_default().as_secs()
                        ));
                    }
                },
                None => call.await,
            };
            match result {
                Ok(r) => return Ok(r),
                Err(e) if e.is_transient() => {
                    tracing::warn!(exec = %self.exec_id, error = %e, "model call failed; trying again");
                    last = Some(e);
                }
                Err(e) => return Err(format!("model `{}`: {e}", self.spec.model)),
            }
        }
        Err(format!(
            "model `{}`: {} (after {MODEL_ATTEMPTS} attempts)",
            self.spec.model,
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    fn time_left(&self, journal: &Journal) -> Option<Duration> {
        let limit = self.spec.exec_timeout?;
        let elapsed = Duration::from_micros((now_micros() - journal.started_micros).max(0) as u64);
        Some(limit.saturating_sub(elapsed))
    }

    /// The tools the agent may call. A model gets them in the wire format, where `.` is not
    /// allowed in a function name (`time.now` is sent as `time__now`).
    fn tool_list(&self, spec: &AgentSpec) -> Vec<crate::tools::ToolInfo> {
        self.tools
            .list()
            .into_iter()
            .filter(|t| matches_any(&spec.tools, &t.name))
            .collect()
    }

    /// One step of a remote agent (`AgentService.Step`), tried again while the agent is
    /// unavailable. Its reply is put in the chat format, so that it is journaled and replayed
    /// like a model's.
    async fn remote_step(
        &self,
        address: &str,
        journal: &Journal,
        spec: &AgentSpec,
        step: u32,
    ) -> Result<crate::model::ChatResponse, String> {
        use cadre_proto::v1::agent_service_client::AgentServiceClient;
        use cadre_proto::v1::{RemoteTool, StepRequest, step_reply};

        let request = StepRequest {
            conversation_id: self.conversation.clone(),
            exec_id: self.exec_id.clone(),
            agent_id: self.agent_id.clone(),
            step,
            history: journal.events.clone(),
            tools: self
                .tool_list(spec)
                .into_iter()
                .map(|t| RemoteTool {
                    name: t.name,
                    description: t.description,
                    input_schema_json: t.input_schema.to_string(),
                })
                .collect(),
        };
        let mut last = String::new();
        for attempt in 0..MODEL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(MODEL_RETRY * attempt).await;
            }
            let reply = async {
                let mut client = AgentServiceClient::connect(address.to_string())
                    .await
                    .map_err(|e| (true, format!("cannot connect: {e}")))?;
                let mut stream = client
                    .step(request.clone())
                    .await
                    .map_err(|s| (s.code() == tonic::Code::Unavailable, s.to_string()))?
                    .into_inner();
                let (mut outputs, mut calls) = (Vec::new(), Vec::new());
                while let Some(r) = stream
                    .message()
                    .await
                    .map_err(|s| (s.code() == tonic::Code::Unavailable, s.to_string()))?
                {
                    match r.kind {
                        Some(step_reply::Kind::Output(text)) => outputs.push(text),
                        Some(step_reply::Kind::ToolCall(c)) => calls.push(c),
                        Some(step_reply::Kind::Fail(reason)) => {
                            return Err((false, format!("it failed the exec: {reason}")));
                        }
                        None => {}
                    }
                }
                Ok((outputs, calls))
            };
            let result = match self.time_left(journal) {
                Some(left) => tokio::time::timeout(left, reply)
                    .await
                    .unwrap_or_else(|_| Err((false, "exec_timeout_secs: limit reached".into()))),
                None => reply.await,
            };
            match result {
                Ok((outputs, calls)) => {
                    let tool_calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            json!({
                                "id": format!("r{step}.{}", i + 1),
                                "type": "function",
                                "function": {
                                    "name": wire_name(&c.tool),
                                    "arguments": c.arguments_json,
                                }
                            })
                        })
                        .collect();
                    let mut message = json!({"role": "assistant", "content": outputs.join("\n")});
                    if !tool_calls.is_empty() {
                        message["tool_calls"] = Value::Array(tool_calls);
                    }
                    return Ok(crate::model::ChatResponse {
                        raw: json!({"choices": [{"index": 0, "message": message}], "outputs": outputs}),
                        prompt_tokens: 0,
                        completion_tokens: 0,
                    });
                }
                Err((true, e)) => {
                    tracing::warn!(exec = %self.exec_id, error = %e, "remote agent unavailable; trying again");
                    last = e;
                }
                Err((false, e)) => return Err(format!("remote agent `{}`: {e}", self.agent_id)),
            }
        }
        Err(format!(
            "remote agent `{}` at {address}: {last} (after {MODEL_ATTEMPTS} attempts)",
            self.agent_id
        ))
    }

    /// Handles the tool call at `index` of the last step: asks for an approval, applies a
    /// decision, or makes the call (again, with the same key, if it was started).
    async fn tool_step(
        &self,
        journal: &mut Journal,
        spec: &AgentSpec,
        index: usize,
    ) -> Result<Option<ExecEnd>, RunError> {
        let call = journal.calls[index].clone();
        let finished = |r: Result<(), AppendError>| match r {
            Ok(()) => Ok(None),
            Err(AppendError::ExecFinished { .. }) => Ok(Some(ExecEnd::Finished)),
            Err(e) => Err(RunError::from(e)),
        };
        let Some(tool) = call.tool.clone() else {
            let error = format!("no tool `{}` for this agent", call.wire_name);
            return finished(self.returned(journal, &call.call_id, Err(error)).await);
        };
        if !journal.called.contains_key(&call.call_id) {
            if !matches_any(&spec.tools, &tool) {
                let error = format!("tool `{tool}` is not allowed for agent `{}`", self.agent_id);
                return finished(self.returned(journal, &call.call_id, Err(error)).await);
            }
            let prepared = match serde_json::from_str::<Value>(&call.arguments) {
                Ok(args) => self.tools.prepare(&tool, &args),
                Err(e) => Err(ToolError::InvalidArguments {
                    tool: tool.clone(),
                    reason: format!("not JSON: {e}"),
                }),
            };
            let prepared = match prepared {
                Ok(p) => p,
                // The model sees what was wrong and may try again.
                Err(e) => {
                    return finished(
                        self.returned(journal, &call.call_id, Err(e.to_string()))
                            .await,
                    );
                }
            };
            let signature = format!("{tool} {}", canonical(&call.arguments));
            let repeats = journal.repeats.get(&signature).copied().unwrap_or(0) + 1;
            if repeats >= spec.max_repeats {
                let reason = format!(
                    "max_repeats: `{tool}` asked for {repeats} times with the same arguments, \
                     limit {}",
                    spec.max_repeats
                );
                return self.end_failed(journal, reason).await.map(Some);
            }
            let needs_approval =
                prepared.requires_approval || matches_any(&spec.require_approval, &tool);
            if needs_approval {
                match journal.decisions.get(&call.call_id) {
                    None if journal.state == Some(ExecState::WaitingApproval as i32) => {
                        return Ok(Some(ExecEnd::WaitingApproval));
                    }
                    None => {
                        let reason = format!(
                            "tool `{tool}` (call {}) needs approval: `cadre approve \
                             --conversation {}`",
                            call.call_id, self.conversation
                        );
                        let events = vec![self.state(ExecState::WaitingApproval, &reason)];
                        let key = format!("wait-{}", call.call_id);
                        return match self.append(journal, events, &key).await {
                            Ok(()) => Ok(Some(ExecEnd::WaitingApproval)),
                            Err(AppendError::ExecFinished { .. }) => Ok(Some(ExecEnd::Finished)),
                            Err(e) => Err(e.into()),
                        };
                    }
                    Some((false, reason)) => {
                        let error = format!("the call was declined by its approver: {reason}");
                        return finished(self.returned(journal, &call.call_id, Err(error)).await);
                    }
                    Some((true, _)) => {}
                }
            }
            let key = self.idempotency_key(&call.call_id);
            let called = ToolCalled {
                call_id: call.call_id.clone(),
                tool: tool.clone(),
                arguments_json: call.arguments.clone(),
                idempotency_key: key,
            };
            let events = vec![self.event(event::Kind::ToolCalled(called))];
            if let Some(end) = finished(
                self.append(journal, events, &format!("{}/called", call.call_id))
                    .await,
            )? {
                return Ok(Some(end));
            }
        }
        let key = journal.called[&call.call_id].clone();
        let args = serde_json::from_str::<Value>(&call.arguments).unwrap_or(json!({}));
        let outcome = match self.tools.prepare(&tool, &args) {
            Ok(prepared) => {
                let ctx = CallContext {
                    conversation: self.conversation.clone(),
                    idempotency_key: key,
                };
                let limit = match self.time_left(journal) {
                    Some(left) => spec.tool_timeout.min(left),
                    None => spec.tool_timeout,
                };
                match tokio::time::timeout(limit, prepared.call(&ctx)).await {
                    Ok(r) => r,
                    Err(_) => {
                        let error = format!("timed out after {} ms", limit.as_millis());
                        if let Some(end) =
                            finished(self.returned(journal, &call.call_id, Err(error)).await)?
                        {
                            return Ok(Some(end));
                        }
                        let reason = if limit < spec.tool_timeout {
                            format!(
                                "exec_timeout_secs: `{tool}` was still running at the exec's \
                                 limit of {} s",
                                spec.exec_timeout.unwrap_or_default().as_secs()
                            )
                        } else {
                            format!(
                                "tool_timeout_ms: `{tool}` did not answer within {} ms",
                                spec.tool_timeout.as_millis()
                            )
                        };
                        return self.end_failed(journal, reason).await.map(Some);
                    }
                }
            }
            Err(e) => Err(e),
        };
        let result = match outcome {
            Ok(o) => Ok(o.result),
            Err(e) => Err(e.to_string()),
        };
        finished(self.returned(journal, &call.call_id, result).await)
    }

    async fn returned(
        &self,
        journal: &mut Journal,
        call_id: &str,
        result: Result<Value, String>,
    ) -> Result<(), AppendError> {
        let returned = ToolReturned {
            call_id: call_id.to_string(),
            outcome: Some(match result {
                Ok(v) => tool_returned::Outcome::ResultJson(v.to_string()),
                Err(e) => tool_returned::Outcome::Error(e),
            }),
        };
        let events = vec![self.event(event::Kind::ToolReturned(returned))];
        self.append(journal, events, &format!("{call_id}/returned"))
            .await
    }

    async fn end_failed(&self, journal: &mut Journal, reason: String) -> Result<ExecEnd, RunError> {
        tracing::info!(exec = %self.exec_id, %reason, "exec failed");
        match self
            .append(journal, vec![self.state(ExecState::Failed, &reason)], "end")
            .await
        {
            Ok(()) => Ok(ExecEnd::Failed(reason)),
            Err(AppendError::ExecFinished { .. }) => Ok(ExecEnd::Finished),
            Err(e) => Err(e.into()),
        }
    }

    /// `conversation/exec/step.index`: the same for every attempt of one call.
    fn idempotency_key(&self, call_id: &str) -> String {
        format!("{}/{}/{call_id}", self.conversation, self.exec_id)
    }

    fn event(&self, kind: event::Kind) -> NewEvent {
        NewEvent {
            exec_id: self.exec_id.clone(),
            kind,
        }
    }

    fn state(&self, state: ExecState, reason: &str) -> NewEvent {
        self.event(event::Kind::ExecStateChanged(ExecStateChanged {
            state: state as i32,
            reason: reason.to_string(),
        }))
    }

    /// Appends to the open exec (fenced, with a per-exec idempotency key) and applies the
    /// events to the journal.
    async fn append(
        &self,
        journal: &mut Journal,
        events: Vec<NewEvent>,
        key: &str,
    ) -> Result<(), AppendError> {
        let appended = self
            .controller
            .append(AppendRequest {
                conversation_id: self.conversation.clone(),
                events: events.clone(),
                idempotency_key: Some(format!("{}/{}/{key}", self.conversation, self.exec_id)),
                open_exec: Some(self.exec_id.clone()),
            })
            .await?;
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

    async fn read_journal(&self) -> Result<Journal, RunError> {
        let mut journal = Journal {
            keep_events: self.spec.remote.is_some(),
            fresh: true,
            ..Journal::default()
        };
        let mut after = 0;
        loop {
            let page = self
                .controller
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
enum Stop {
    /// A limit or an error: the exec ends FAILED with this reason.
    Failed(String),
    /// Someone else ended the exec meanwhile (a cancel).
    Finished,
}

/// What the agent asks its model for when its context grew past the compaction threshold.
const COMPACTION_PROMPT: &str = "Summarise the conversation so far for yourself: the user's \
    goals, what was done, tool results that still matter, and what remains. Reply with the \
    summary only.";

/// A tool call the model asked for in the exec's last step.
#[derive(Debug, Clone)]
struct PlannedCall {
    /// `STEP.INDEX`: unique in the exec even if the model reuses its own ids.
    call_id: String,
    /// The model's id for it (tool messages answer it).
    model_id: String,
    wire_name: String,
    /// The registry's name, if the wire name maps to one.
    tool: Option<String>,
    arguments: String,
}

/// The state of a conversation and its exec, rebuilt from the log.
#[derive(Default)]
struct Journal {
    /// Whether the conversation's events are kept (a remote agent is sent them).
    keep_events: bool,
    events: Vec<Event>,
    /// This exec has nothing in the log after its input and state changes.
    fresh: bool,
    /// The chat history (without the system prompt).
    messages: Vec<Value>,
    /// The latest fork patch.
    patch: Option<AgentPatch>,
    /// Model calls of this exec (steps, not counting compactions).
    steps: u32,
    /// All model calls of this exec (for step numbering).
    model_calls: u32,
    tokens_used: u64,
    last_prompt_tokens: u64,
    /// The tool calls of this exec's last step.
    calls: Vec<PlannedCall>,
    /// The last step's text when it asked for no tools.
    final_text: Option<String>,
    /// Calls with a `ToolCalled`: call id → idempotency key.
    called: HashMap<String, String>,
    returned: std::collections::HashSet<String>,
    decisions: HashMap<String, (bool, String)>,
    /// Calls per tool and arguments in this exec.
    repeats: HashMap<String, u32>,
    /// The exec's last state.
    state: Option<i32>,
    /// The exec's input.
    input: String,
    /// Results of this exec's returned calls.
    results: HashMap<String, Result<Value, String>>,
    started_micros: i64,
    /// Per exec: the model ids of its last step's calls, by call id (for tool messages).
    model_ids: HashMap<String, String>,
    /// The exec the open tool calls belong to, to answer them if it ends first.
    open_exec: Option<String>,
    open_calls: Vec<(String, String)>,
}

impl Journal {
    fn spec(&self, base: &AgentSpec) -> AgentSpec {
        let mut spec = base.clone();
        if let Some(p) = &self.patch {
            if let Some(s) = &p.system_prompt {
                spec.system_prompt = s.clone();
            }
            if let Some(m) = &p.model {
                spec.model = m.clone();
            }
            if let Some(m) = p.max_iterations {
                spec.max_iterations = m;
            }
            if let Some(t) = p.token_budget {
                spec.token_budget = Some(t);
            }
        }
        spec
    }

    fn next(&self, spec: &AgentSpec) -> Next {
        if let Some(i) = self
            .calls
            .iter()
            .position(|c| !self.returned.contains(&c.call_id))
        {
            return Next::Tool(i);
        }
        if let Some(text) = &self.final_text {
            return Next::Finish(text.clone());
        }
        if spec.remote.is_none()
            && spec
                .compact_at_tokens
                .is_some_and(|at| self.last_prompt_tokens >= at)
        {
            return Next::Compact;
        }
        Next::CallModel
    }

    fn apply(&mut self, e: &Event, exec: &str, tools: &ToolRegistry) {
        if self.keep_events {
            self.events.push(e.clone());
        }
        let mine = e.exec_id == exec;
        if mine {
            self.fresh &= matches!(
                e.kind,
                Some(event::Kind::InputReceived(_) | event::Kind::ExecStateChanged(_))
            );
        }
        match &e.kind {
            Some(event::Kind::InputReceived(i)) => {
                self.messages
                    .push(json!({"role": "user", "content": i.text}));
                if mine {
                    self.started_micros = e.time_unix_micros;
                    self.state = Some(ExecState::Pending as i32);
                    self.input = i.text.clone();
                }
            }
            Some(event::Kind::ModelCalled(m)) => {
                self.tokens_used += u64::from(m.prompt_tokens) + u64::from(m.completion_tokens);
                self.last_prompt_tokens = u64::from(m.prompt_tokens);
                let response: Value = serde_json::from_str(&m.response_json).unwrap_or_default();
                let message = &response["choices"][0]["message"];
                let content = message["content"].as_str().unwrap_or_default().to_string();
                if m.compaction {
                    self.messages = vec![json!({
                        "role": "user",
                        "content": format!("Summary of the conversation so far:\n{content}"),
                    })];
                    self.last_prompt_tokens = 0;
                    if mine {
                        self.model_calls += 1;
                    }
                    return;
                }
                let step = if mine {
                    self.model_calls += 1;
                    self.steps += 1;
                    self.model_calls
                } else {
                    0
                };
                let wire_calls = message["tool_calls"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut assistant = json!({"role": "assistant", "content": message["content"]});
                if !wire_calls.is_empty() {
                    assistant["tool_calls"] = Value::Array(wire_calls.clone());
                }
                self.messages.push(assistant);
                let calls: Vec<PlannedCall> = wire_calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let wire_name = c["function"]["name"].as_str().unwrap_or_default();
                        PlannedCall {
                            call_id: format!("{step}.{}", i + 1),
                            model_id: c["id"].as_str().unwrap_or_default().to_string(),
                            wire_name: wire_name.to_string(),
                            tool: registry_name(tools, wire_name),
                            arguments: match &c["function"]["arguments"] {
                                Value::String(s) => s.clone(),
                                Value::Null => "{}".into(),
                                other => other.to_string(),
                            },
                        }
                    })
                    .collect();
                self.open_exec = Some(e.exec_id.clone());
                self.open_calls = calls
                    .iter()
                    .map(|c| (c.call_id.clone(), c.model_id.clone()))
                    .collect();
                for c in &calls {
                    self.model_ids
                        .insert(format!("{}/{}", e.exec_id, c.call_id), c.model_id.clone());
                }
                if mine {
                    self.final_text = calls.is_empty().then_some(content);
                    self.calls = calls;
                }
            }
            Some(event::Kind::ToolCalled(c)) if mine => {
                self.called
                    .insert(c.call_id.clone(), c.idempotency_key.clone());
                *self
                    .repeats
                    .entry(format!("{} {}", c.tool, canonical(&c.arguments_json)))
                    .or_default() += 1;
            }
            Some(event::Kind::ToolReturned(r)) => {
                let content = match &r.outcome {
                    Some(tool_returned::Outcome::ResultJson(j)) => tool_text(j),
                    Some(tool_returned::Outcome::Error(err)) => format!("error: {err}"),
                    None => String::new(),
                };
                let model_id = self
                    .model_ids
                    .get(&format!("{}/{}", e.exec_id, r.call_id))
                    .cloned()
                    .unwrap_or_else(|| r.call_id.clone());
                self.open_calls.retain(|(id, _)| id != &r.call_id);
                self.messages.push(json!({
                    "role": "tool",
                    "tool_call_id": model_id,
                    "content": content,
                }));
                if mine {
                    self.returned.insert(r.call_id.clone());
                    let result = match &r.outcome {
                        Some(tool_returned::Outcome::ResultJson(j)) => {
                            Ok(serde_json::from_str(j).unwrap_or(Value::Null))
                        }
                        Some(tool_returned::Outcome::Error(err)) => Err(err.clone()),
                        None => Ok(Value::Null),
                    };
                    self.results.insert(r.call_id.clone(), result);
                }
            }
            Some(event::Kind::ApprovalDecided(d)) if mine => {
                self.decisions
                    .insert(d.call_id.clone(), (d.approved, d.reason.clone()));
            }
            Some(event::Kind::OutputEmitted(o)) => {
                // Agents without model calls (echo) answer with outputs only.
                let said = self.messages.last().is_some_and(|m| {
                    m["role"] == "assistant" && m["content"].as_str() == Some(o.text.as_str())
                });
                if !said {
                    self.messages
                        .push(json!({"role": "assistant", "content": o.text}));
                }
            }
            Some(event::Kind::ExecStateChanged(s)) => {
                if mine {
                    self.state = Some(s.state);
                }
                // A chat API refuses tool calls left unanswered: an exec that ended with some
                // answers them for the history.
                if is_terminal(s.state) && self.open_exec.as_deref() == Some(e.exec_id.as_str()) {
                    for (_, model_id) in std::mem::take(&mut self.open_calls) {
                        self.messages.push(json!({
                            "role": "tool",
                            "tool_call_id": model_id,
                            "content": "error: not run (the exec ended first)",
                        }));
                    }
                }
            }
            Some(event::Kind::Forked(f)) => {
                if let Some(p) = &f.patch {
                    let mut merged = self.patch.clone().unwrap_or_default();
                    merge_patch(&mut merged, p);
                    self.patch = Some(merged);
                }
            }
            _ => {}
        }
    }
}

fn merge_patch(into: &mut AgentPatch, p: &AgentPatch) {
    if p.system_prompt.is_some() {
        into.system_prompt = p.system_prompt.clone();
    }
    if p.model.is_some() {
        into.model = p.model.clone();
    }
    if p.max_iterations.is_some() {
        into.max_iterations = p.max_iterations;
    }
    if p.token_budget.is_some() {
        into.token_budget = p.token_budget;
    }
}

fn is_terminal(state: i32) -> bool {
    matches!(
        ExecState::try_from(state),
        Ok(ExecState::Completed | ExecState::Failed | ExecState::Cancelled)
    )
}

/// Whether `name` matches one of the patterns (`ns.tool`, `ns.*`, `*`).
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == name
            || p.strip_suffix(".*")
                .is_some_and(|ns| name.strip_prefix(ns).is_some_and(|r| r.starts_with('.')))
    })
}

fn wire_name(name: &str) -> String {
    name.replacen('.', "__", 1)
}

fn registry_name(tools: &ToolRegistry, wire: &str) -> Option<String> {
    let name = match wire.split_once("__") {
        Some((ns, tool)) => format!("{ns}.{tool}"),
        None => wire.to_string(),
    };
    tools.contains(&name).then_some(name)
}

/// Arguments with their keys sorted, so equal calls compare equal.
fn canonical(arguments: &str) -> String {
    fn sort(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<String, Value> =
                    m.into_iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sort).collect()),
            other => other,
        }
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v) => sort(v).to_string(),
        Err(_) => arguments.to_string(),
    }
}

/// A tool result as the model reads it: an MCP result's text content, else the JSON.
fn tool_text(result_json: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(result_json) else {
        return result_json.to_string();
    };
    let texts: Vec<&str> = v["content"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["text"].as_str()).collect())
        .unwrap_or_default();
    if texts.is_empty() {
        result_json.to_string()
    } else {
        texts.join("\n")
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches_any(&p(&["*"]), "time.now"));
        assert!(matches_any(&p(&["time.*"]), "time.now"));
        assert!(!matches_any(&p(&["time.*"]), "timer.now"));
        assert!(matches_any(&p(&["workspace.run"]), "workspace.run"));
        assert!(!matches_any(&p(&[]), "workspace.run"));
    }

    #[test]
    fn equal_arguments_compare_equal() {
        assert_eq!(
            canonical(r#"{"b":1,"a":{"d":2,"c":3}}"#),
            canonical(r#"{"a":{"c":3,"d":2},"b":1}"#)
        );
    }

    #[test]
    fn mcp_results_are_read_as_text() {
        assert_eq!(
            tool_text(r#"{"content":[{"type":"text","text":"42"}],"isError":false}"#),
            "42"
        );
        assert_eq!(tool_text(r#"{"x":1}"#), r#"{"x":1}"#);
    }
}
