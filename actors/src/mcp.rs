//! MCP servers as supervised actors (kind `mcp`).
//!
//! A stdio server runs as a process in a sandbox (placed by the node's placement through
//! [`SandboxHost`](crate::sandbox::SandboxHost)) and is spoken to over the process's stdio; a
//! streamable HTTP server is reached at its URL. Either way the actor speaks MCP with the
//! official Rust SDK (`rmcp`: the protocol version is negotiated in its handshake), lists the
//! tools (every page) and registers them in the [`ToolRegistry`] under the child's id; a
//! `tools/list_changed` notification lists them again. If the process exits or the session
//! breaks (for HTTP: the server stops answering), the actor exits with that reason, its tools
//! are removed, calls in flight fail, and its supervisor restarts it per policy.

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

use crate::child::{ChildSpec, StartContext, StartError, StartFuture, Started};
use crate::sandbox::{HostedActor, HostedExit, HostedProcess, HostedSpec};
use crate::services::Services;
use crate::spec::{ActorKind, ChildExit, ExitReason, Hosted};
use crate::tools::{
    CallContext, CallFuture, Registration, ToolDef, ToolError, ToolOutcome, ToolRegistry,
    ToolServer,
};

/// What an `mcp` child runs.
#[derive(Debug, Clone, PartialEq)]
pub struct McpSpec {
    /// Where the server is, and how to reach it.
    pub server: McpServer,
    /// Whose sandbox a stdio server may share.
    pub tenant: String,
    /// A sandbox of its own.
    pub exclusive: bool,
    /// Network access for a stdio server (a sandbox of its own that may connect out).
    pub egress: bool,
    /// How long one tool call may take.
    pub call_timeout: Duration,
    /// How long the server may take to start and answer the handshake and the tool list.
    pub start_timeout: Duration,
}

/// Where the server is.
#[derive(Debug, Clone, PartialEq)]
pub enum McpServer {
    /// A program and its arguments, run in a sandbox and spoken to on its stdio.
    Stdio {
        /// The program and its arguments.
        command: Vec<String>,
        /// Environment variables set for it.
        env: Vec<(String, String)>,
    },
    /// A streamable HTTP endpoint, e.g. `http://127.0.0.1:3001/mcp` or `https://…`.
    Http {
        /// The endpoint's URL.
        url: String,
        /// CAs trusted for an `https://` URL besides the system's.
        ca_file: Option<std::path::PathBuf>,
    },
}

/// The `_meta` key that carries a call's idempotency key to an MCP server.
pub const IDEMPOTENCY_META_KEY: &str = "cadre/idempotency-key";

impl Default for McpSpec {
    fn default() -> Self {
        Self {
            server: McpServer::Stdio {
                command: Vec::new(),
                env: Vec::new(),
            },
            tenant: "system".into(),
            exclusive: false,
            egress: false,
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
    let (broken, broken_rx) = mpsc::unbounded_channel();
    let registration = Arc::new(Mutex::new(Listing::default()));
    let client = Client {
        namespace: namespace.clone(),
        tools: services.tools.clone(),
        registration: registration.clone(),
    };
    let start_ms = spec.start_timeout.as_millis();
    let (session, process, hosted) = match &spec.server {
        McpServer::Stdio { command, env } => {
            let (session, process) =
                start_stdio(&ctx, &spec, command, env, client, &services).await?;
            let hosted = Hosted {
                sandbox: process.sandbox.clone(),
                pid: Some(process.pid),
            };
            (session, Some(process), Some(hosted))
        }
        McpServer::Http { url, ca_file } => (
            connect_http(url, ca_file.as_deref(), spec.start_timeout, client).await?,
            None,
            None,
        ),
    };
    let ended = |what: String| match &process {
        Some(p) => p.explain(what),
        None => what,
    };
    let peer = session.peer().clone();
    let tools = match tokio::time::timeout(spec.start_timeout, peer.list_all_tools()).await {
        Err(_) => return Err(ended(format!("tools/list took over {start_ms} ms"))),
        Ok(Err(e)) => return Err(ended(format!("tools/list failed: {e}"))),
        Ok(Ok(tools)) => tools,
    };
    let caller = Caller {
        peer: peer.clone(),
        timeout: spec.call_timeout,
        namespace: namespace.clone(),
        broken,
    };
    let reg = services
        .tools
        .register(&namespace, &ctx.path, defs(tools), Arc::new(caller))
        .map_err(|e| e.to_string())?;
    let stale = {
        let mut listing = registration.lock().expect("registration");
        listing.registration = Some(reg);
        std::mem::take(&mut listing.stale)
    };
    // The list changed while it was first read: read it again.
    if stale
        && let Ok(Ok(tools)) = tokio::time::timeout(spec.call_timeout, peer.list_all_tools()).await
    {
        services.tools.update(&namespace, reg, defs(tools));
    }
    tracing::info!(
        actor = %ctx.path,
        sandbox = hosted.as_ref().map(|h| h.sandbox.as_str()).unwrap_or("-"),
        protocol = session.peer_info().map(|i| i.protocol_version.to_string()).unwrap_or_default(),
        "mcp server ready"
    );
    let state = McpState {
        namespace,
        tools: services.tools.clone(),
        registration: reg,
        process,
        cancel: None,
    };
    let (actor, _) =
        Actor::spawn_linked(None, McpActor, (state, session, broken_rx), ctx.supervisor)
            .await
            .map_err(|e| e.to_string())?;
    Ok(Started {
        cell: actor.get_cell(),
        os_process: None,
        hosted,
    })
}

type Session = RunningService<RoleClient, Client>;

/// Runs a stdio server in a sandbox and completes the handshake on its stdio.
async fn start_stdio(
    ctx: &StartContext,
    spec: &McpSpec,
    command: &[String],
    env: &[(String, String)],
    client: Client,
    services: &Services,
) -> Result<(Session, Process), String> {
    let host = services.host.clone().ok_or_else(|| {
        "this node has no sandboxes and a stdio mcp server runs only in one: install runsc \
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
            actor: HostedActor {
                id: ctx.path.clone(),
                tenant: spec.tenant.clone(),
                exclusive: spec.exclusive,
                egress: spec.egress,
            },
            argv: command.to_vec(),
            env: env.to_vec(),
            log: Some(ctx.tree.log(&ctx.path)),
        })
        .await
        .map_err(|e| e.to_string())?;
    let process = Process {
        sandbox,
        pid,
        exit,
        signals,
        _hold: hold,
    };
    let ended = |what: String| process.explain(what);
    let start_ms = spec.start_timeout.as_millis();
    match tokio::time::timeout(spec.start_timeout, client.serve((stdout, stdin))).await {
        Err(_) => Err(ended(format!("no MCP handshake within {start_ms} ms"))),
        Ok(Err(e)) => Err(ended(format!("MCP handshake failed: {e}"))),
        Ok(Ok(session)) => Ok((session, process)),
    }
}

/// Connects to a streamable HTTP server, trying again until `within` has passed: a server
/// started beside it (say, a sibling `process` child) may not listen yet. An `https://` one
/// is trusted by the system's roots and `ca_file`; its redirects are not followed.
async fn connect_http(
    url: &str,
    ca_file: Option<&std::path::Path>,
    within: Duration,
    client: Client,
) -> Result<Session, String> {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    crate::tls::install_provider();
    let https = match url.starts_with("https://") {
        true => {
            let tls = crate::tls::client_config(ca_file).map_err(|e| e.to_string())?;
            // No idle pooling, as rmcp's own client (a pooled connection stalls ~40 ms on a
            // delayed ACK).
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e| format!("{url}: {e}"))?;
            Some(http)
        }
        false => None,
    };
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let transport = match &https {
            Some(http) => StreamableHttpClientTransport::with_client(
                http.clone(),
                StreamableHttpClientTransportConfig::with_uri(url.to_string()),
            ),
            None => StreamableHttpClientTransport::from_uri(url.to_string()),
        };
        // One attempt may hang on a server that is not up yet: bound it and try again.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = left.min(CONNECT_ATTEMPT);
        let why = match tokio::time::timeout(attempt, client.clone().serve(transport)).await {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err(e)) => format!("MCP handshake with {url} failed: {e}"),
            Err(_) => format!(
                "no MCP handshake with {url} within {} ms",
                within.as_millis()
            ),
        };
        if tokio::time::Instant::now() + CONNECT_RETRY >= deadline {
            return Err(why);
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

impl Process {
    /// `what` went wrong, and how the server ended if that is why.
    fn explain(&self, what: String) -> String {
        match self.exit.borrow().as_ref() {
            Some(e) => format!("{what}: the server ended ({})", e.reason()),
            None => what,
        }
    }
}

/// How often an HTTP server is tried again while it starts.
const CONNECT_RETRY: Duration = Duration::from_millis(200);
/// How long one handshake with an HTTP server may take before it is tried again.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);

/// A stdio server's process in its sandbox.
struct Process {
    sandbox: String,
    pid: u32,
    exit: watch::Receiver<Option<HostedExit>>,
    signals: mpsc::UnboundedSender<i32>,
    /// The process's call and slot: dropping it kills the process if it still runs.
    _hold: Box<dyn Send + Sync>,
}

fn defs(tools: Vec<rmcp::model::Tool>) -> Vec<ToolDef> {
    tools
        .into_iter()
        .map(|t| ToolDef {
            name: t.name.to_string(),
            description: t.description.map(|d| d.to_string()).unwrap_or_default(),
            input_schema: Value::Object((*t.input_schema).clone()),
            requires_approval: false,
        })
        .collect()
}

/// The MCP client side of one session: follows `tools/list_changed`.
#[derive(Clone)]
struct Client {
    namespace: String,
    tools: ToolRegistry,
    registration: Arc<Mutex<Listing>>,
}

/// The session's tools in the registry, once registered.
#[derive(Default)]
struct Listing {
    registration: Option<Registration>,
    /// A change was announced before the first list was registered.
    stale: bool,
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
                let mut listing = self.registration.lock().expect("registration");
                match listing.registration {
                    Some(reg) => self.tools.update(&self.namespace, reg, defs(tools)),
                    None => listing.stale = true,
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
    /// Tells the actor that the session is broken (the transport failed under a call).
    broken: mpsc::UnboundedSender<String>,
}

impl ToolServer for Caller {
    fn call(&self, tool: &str, arguments: Map<String, Value>, ctx: &CallContext) -> CallFuture {
        let (peer, timeout, broken) = (self.peer.clone(), self.timeout, self.broken.clone());
        let name = format!("{}.{tool}", self.namespace);
        let mut meta = MetaObject::new();
        meta.0.insert(
            IDEMPOTENCY_META_KEY.into(),
            ctx.idempotency_key.clone().into(),
        );
        if let Some(traceparent) = &ctx.traceparent {
            meta.0
                .insert("traceparent".into(), traceparent.clone().into());
        }
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
                Ok(Err(e)) => {
                    if matches!(
                        e,
                        rmcp::ServiceError::TransportSend(_) | rmcp::ServiceError::TransportClosed
                    ) {
                        let _ = broken.send(e.to_string());
                    }
                    Err(ToolError::Unavailable {
                        tool: name,
                        reason: e.to_string(),
                    })
                }
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
    /// Ends the session (and the task that watches it) with the actor.
    cancel: Option<RunningServiceCancellationToken>,
    /// A stdio server's process; dropped last, which kills it if it still runs.
    process: Option<Process>,
}

enum McpMsg {
    Ended(ExitReason),
}

// Never sent to another node (ractor's `cluster` feature asks each message type).
impl ractor::Message for McpMsg {}

/// How long a broken session waits for the process's exit, to report the better reason.
const EXIT_GRACE: Duration = Duration::from_secs(2);

impl Actor for McpActor {
    type Msg = McpMsg;
    type State = McpState;
    type Arguments = (McpState, Session, mpsc::UnboundedReceiver<String>);

    async fn pre_start(
        &self,
        myself: ActorRef<McpMsg>,
        (mut state, session, mut broken): (McpState, Session, mpsc::UnboundedReceiver<String>),
    ) -> Result<McpState, ActorProcessingErr> {
        state.cancel = Some(session.cancellation_token());
        let mut exit = state.process.as_ref().map(|p| p.exit.clone());
        tokio::spawn(async move {
            let broke = tokio::select! {
                e = ended(exit.as_mut()) => {
                    let _ = myself.cast(McpMsg::Ended(exit_reason(e)));
                    return;
                }
                Some(why) = broken.recv() => format!("the MCP session broke: {why}"),
                quit = session.waiting() => format!("the MCP session closed ({quit:?})"),
            };
            // A session usually breaks because its process ended: say how, if it did.
            let reason = match exit.as_mut() {
                Some(exit) => match tokio::time::timeout(EXIT_GRACE, ended(Some(exit))).await {
                    Ok(Some(e)) => e.reason(),
                    _ => ExitReason::Error(broke),
                },
                None => ExitReason::Error(broke),
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
        if let Some(p) = &mut state.process
            && p.exit.borrow().is_none()
        {
            let _ = p.signals.send(libc::SIGTERM);
            let _ = p.exit.wait_for(Option::is_some).await;
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

/// Waits for the process's end (forever for a server without one); `None` if its watch is
/// gone without an end.
async fn ended(exit: Option<&mut watch::Receiver<Option<HostedExit>>>) -> Option<HostedExit> {
    match exit {
        Some(exit) => exit
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|e| e.clone()),
        None => std::future::pending().await,
    }
}

fn exit_reason(exit: Option<HostedExit>) -> ExitReason {
    exit.map(|e| e.reason())
        .unwrap_or_else(|| ExitReason::Error("the server's process was lost".into()))
}
