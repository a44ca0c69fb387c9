//! MCP servers as supervised actors (kind `mcp`).
//!
//! Each start runs the server's command as a process in a sandbox (placed by the node's
//! placement through [`ProcessHost`]), speaks MCP to it over the process's stdio with the
//! official Rust SDK (`rmcp`: the protocol version is negotiated in its handshake), lists its
//! tools (every page) and registers them in the [`ToolRegistry`] under the child's id. A
//! `tools/list_changed` notification lists them again. If the process exits or the session
//! breaks, the actor exits with that reason, its tools are removed and calls in flight fail,
//! and its supervisor restarts it per policy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, MetaObject,
    RequestMetaObject,
};
use rmcp::service::{
    NotificationContext, Peer, RoleClient, RunningService, RunningServiceCancellationToken,
};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::sandbox::{HostedExit, HostedProcess, HostedSpec};
use crate::services::Services;
use crate::spec::{
    ActorKind, ChildExit, ChildSpec, ExitReason, Hosted, StartContext, StartError, StartFuture,
    Started,
};
use crate::tools::{
    CallFuture, Registration, ToolDef, ToolError, ToolOutcome, ToolRegistry, ToolServer,
};

/// What an `mcp` child runs.
#[derive(Debug, Clone, PartialEq)]
pub struct McpSpec {
    /// The stdio server's program and arguments, run in a sandbox.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Whose sandbox the server may share.
    pub tenant: String,
    /// A sandbox of its own.
    pub exclusive: bool,
    /// How long one tool call may take.
    pub call_timeout: Duration,
    /// How long the server may take to start and answer the handshake and the tool list.
    pub start_timeout: Duration,
}

/// The `_meta` key that carries a call's idempotency key to an MCP server.
pub const IDEMPOTENCY_META_KEY: &str = "cadre/idempotency-key";

impl Default for McpSpec {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            env: Vec::new(),
            tenant: "system".into(),
            exclusive: false,
            call_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// An `mcp` child: a permanent worker whose tools are `ID.TOOL` in the registry.
pub fn mcp_child(id: impl Into<String>, spec: McpSpec, services: Services) -> ChildSpec {
    let id = id.into();
    let namespace = id.clone();
    let start = move |ctx: StartContext| -> StartFuture {
        let (spec, services, namespace) = (spec.clone(), services.clone(), namespace.clone());
        Box::pin(async move {
            start_server(ctx, namespace, spec, services)
                .await
                .map_err(StartError)
        })
    };
    ChildSpec::worker(id, ActorKind::Mcp, start)
}

async fn start_server(
    ctx: StartContext,
    namespace: String,
    spec: McpSpec,
    services: Services,
) -> Result<Started, String> {
    let host = services.host.clone().ok_or_else(|| {
        "this node has no sandboxes and an mcp server runs only in one: install runsc \
         (gVisor) or configure `sandbox:`"
            .to_string()
    })?;
    let HostedProcess {
        sandbox,
        pid,
        stdin,
        stdout,
        exit,
        signals,
        hold,
    } = host
        .spawn(HostedSpec {
            actor: ctx.path.clone(),
            tenant: spec.tenant.clone(),
            exclusive: spec.exclusive,
            argv: spec.command.clone(),
            env: spec.env.clone(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let ended = |what: String| match exit.borrow().as_ref() {
        Some(e) => format!("{what}: the server ended ({})", e.reason()),
        None => what,
    };
    let registration = Arc::new(Mutex::new(None));
    let client = Client {
        namespace: namespace.clone(),
        tools: services.tools.clone(),
        registration: registration.clone(),
    };
    let start_ms = spec.start_timeout.as_millis();
    let session =
        match tokio::time::timeout(spec.start_timeout, client.serve((stdout, stdin))).await {
            Err(_) => return Err(ended(format!("no MCP handshake within {start_ms} ms"))),
            Ok(Err(e)) => return Err(ended(format!("MCP handshake failed: {e}"))),
            Ok(Ok(session)) => session,
        };
    let peer = session.peer().clone();
    let tools = match tokio::time::timeout(spec.start_timeout, peer.list_all_tools()).await {
        Err(_) => return Err(ended(format!("tools/list took over {start_ms} ms"))),
        Ok(Err(e)) => return Err(ended(format!("tools/list failed: {e}"))),
        Ok(Ok(tools)) => tools,
    };
    let caller = Caller {
        peer,
        timeout: spec.call_timeout,
        namespace: namespace.clone(),
    };
    let reg = services
        .tools
        .register(&namespace, &ctx.path, defs(tools), Arc::new(caller))
        .map_err(|e| e.to_string())?;
    *registration.lock().expect("registration") = Some(reg);
    tracing::info!(
        actor = %ctx.path, %sandbox, pid,
        protocol = session.peer_info().map(|i| i.protocol_version.to_string()).unwrap_or_default(),
        "mcp server ready"
    );
    let state = McpState {
        namespace,
        tools: services.tools.clone(),
        registration: reg,
        exit,
        signals,
        cancel: None,
        _hold: hold,
    };
    let (actor, _) = Actor::spawn_linked(None, McpActor, (state, session), ctx.supervisor)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Started {
        cell: actor.get_cell(),
        os_process: None,
        hosted: Some(Hosted {
            sandbox,
            pid: Some(pid),
        }),
    })
}

fn defs(tools: Vec<rmcp::model::Tool>) -> Vec<ToolDef> {
    tools
        .into_iter()
        .map(|t| ToolDef {
            name: t.name.to_string(),
            description: t.description.map(|d| d.to_string()).unwrap_or_default(),
            input_schema: Value::Object((*t.input_schema).clone()),
        })
        .collect()
}

/// The MCP client side of one session: follows `tools/list_changed`.
#[derive(Clone)]
struct Client {
    namespace: String,
    tools: ToolRegistry,
    registration: Arc<Mutex<Option<Registration>>>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("cadre", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        match context.peer.list_all_tools().await {
            Ok(tools) => {
                let registration = *self.registration.lock().expect("registration");
                if let Some(reg) = registration {
                    self.tools.update(&self.namespace, reg, defs(tools));
                }
            }
            Err(e) => tracing::warn!(namespace = %self.namespace, error = %e,
                "cannot list tools after tools/list_changed"),
        }
    }
}

/// Calls the tools of one session.
struct Caller {
    peer: Peer<RoleClient>,
    timeout: Duration,
    namespace: String,
}

impl ToolServer for Caller {
    fn call(&self, tool: &str, arguments: Map<String, Value>, key: &str) -> CallFuture {
        let (peer, timeout) = (self.peer.clone(), self.timeout);
        let name = format!("{}.{tool}", self.namespace);
        let mut meta = MetaObject::new();
        meta.0.insert(IDEMPOTENCY_META_KEY.into(), key.into());
        let mut params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        params.meta = Some(RequestMetaObject(meta));
        Box::pin(async move {
            match tokio::time::timeout(timeout, peer.call_tool(params)).await {
                Err(_) => Err(ToolError::Timeout {
                    tool: name,
                    ms: timeout.as_millis() as u64,
                }),
                // The server answered with a JSON-RPC error (unknown tool, bad params): the
                // tool's own answer, so a result flagged as an error.
                Ok(Err(rmcp::ServiceError::McpError(e))) => Ok(ToolOutcome {
                    result: serde_json::json!({
                        "error": {"code": e.code.0, "message": e.message, "data": e.data}
                    }),
                    is_error: true,
                }),
                Ok(Err(e)) => Err(ToolError::Unavailable {
                    tool: name,
                    reason: e.to_string(),
                }),
                Ok(Ok(result)) => Ok(ToolOutcome {
                    is_error: result.is_error.unwrap_or(false),
                    result: serde_json::to_value(&result).unwrap_or(Value::Null),
                }),
            }
        })
    }
}

/// The actor that owns one server instance.
struct McpActor;

struct McpState {
    namespace: String,
    tools: ToolRegistry,
    registration: Registration,
    exit: watch::Receiver<Option<HostedExit>>,
    signals: mpsc::UnboundedSender<i32>,
    /// Ends the session (and the task that watches it) with the actor.
    cancel: Option<RunningServiceCancellationToken>,
    /// The process's call and slot: dropped last, which kills the process if it still runs.
    _hold: Box<dyn Send + Sync>,
}

enum McpMsg {
    Ended(ExitReason),
}

/// How long a closed session waits for the process's exit, to report the better reason.
const EXIT_GRACE: Duration = Duration::from_millis(500);

impl Actor for McpActor {
    type Msg = McpMsg;
    type State = McpState;
    type Arguments = (McpState, RunningService<RoleClient, Client>);

    async fn pre_start(
        &self,
        myself: ActorRef<McpMsg>,
        (mut state, session): (McpState, RunningService<RoleClient, Client>),
    ) -> Result<McpState, ActorProcessingErr> {
        state.cancel = Some(session.cancellation_token());
        let mut exit = state.exit.clone();
        tokio::spawn(async move {
            let reason = tokio::select! {
                e = ended(&mut exit) => exit_reason(e),
                quit = session.waiting() => {
                    let closed = format!("the MCP session closed ({quit:?})");
                    match tokio::time::timeout(EXIT_GRACE, ended(&mut exit)).await {
                        Ok(Some(e)) => e.reason(),
                        _ => ExitReason::Error(closed),
                    }
                }
            };
            let _ = myself.cast(McpMsg::Ended(reason));
        });
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<McpMsg>,
        msg: McpMsg,
        _state: &mut McpState,
    ) -> Result<(), ActorProcessingErr> {
        let McpMsg::Ended(reason) = msg;
        match reason {
            ExitReason::Normal => {
                myself.stop(Some("normal".into()));
                Ok(())
            }
            reason => Err(Box::new(ChildExit(reason))),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<McpMsg>,
        state: &mut McpState,
    ) -> Result<(), ActorProcessingErr> {
        state.tools.unregister(&state.namespace, state.registration);
        // Graceful stop: SIGTERM, then wait. The supervisor kills at the shutdown timeout.
        if state.exit.borrow().is_none() {
            let _ = state.signals.send(libc::SIGTERM);
            let _ = state.exit.wait_for(Option::is_some).await;
        }
        Ok(())
    }
}

impl Drop for McpState {
    fn drop(&mut self) {
        self.tools.unregister(&self.namespace, self.registration);
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
        }
    }
}

/// Waits for the process's end; `None` if its watch is gone without one.
async fn ended(exit: &mut watch::Receiver<Option<HostedExit>>) -> Option<HostedExit> {
    exit.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|e| e.clone())
}

fn exit_reason(exit: Option<HostedExit>) -> ExitReason {
    exit.map(|e| e.reason())
        .unwrap_or_else(|| ExitReason::Error("the server's process was lost".into()))
}
