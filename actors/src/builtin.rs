//! Built-in tools, registered by the node beside its MCP servers' tools:
//!
//! - `workspace.*`: the caller's workspace — `read_file`, `write_file`, `list_files`, and `run`
//!   (a shell command with a timeout and an output cap, which needs approval). Each
//!   conversation's workspace is a sandbox of its own (the logical actor `ws.CONVERSATION`,
//!   exclusive), so conversations never see each other's files; when idle it is suspended with
//!   its files where the provider can checkpoint.
//! - `skills.*`: `list_skills` and `activate_skill`, which returns a skill's instructions and
//!   copies its folder into the caller's workspace under `skills/NAME/`.
//!
//! Results have the shape of an MCP `CallToolResult` (`content` with one text block, and
//! `structuredContent`), so agents and the CLI read them like any tool's.

use std::sync::Arc;
use std::time::Duration;

use cadre_proto::v1::{
    ListFilesRequest, ProcessStart, ReadFileRequest, RunInput, WriteFileRequest, run_input,
    run_output,
};
use serde_json::{Map, Value, json};

use crate::sandbox::{HostedActor, PinnedWorker, SandboxHost};
use crate::skills::SkillRegistry;
use crate::tools::{CallContext, CallFuture, ToolDef, ToolError, ToolOutcome, ToolServer};

/// The namespace of the workspace tools.
pub const WORKSPACE: &str = "workspace";
/// The namespace of the skill tools.
pub const SKILLS: &str = "skills";
/// What `cadre tools ls` names as the server of built-in tools.
pub const BUILTIN_SERVER: &str = "builtin";

/// Bytes of stdout (and of stderr) `workspace.run` returns; the rest is cut.
pub const RUN_OUTPUT_CAP: usize = 64 * 1024;
const DEFAULT_RUN_TIMEOUT_MS: u64 = 30_000;
const MAX_RUN_TIMEOUT_MS: u64 = 600_000;

/// The workspace tools' definitions.
pub fn workspace_tools() -> Vec<ToolDef> {
    let path = json!({"type": "string", "description": "relative to the workspace"});
    vec![
        def(
            "read_file",
            "Reads a file of the workspace (as UTF-8 text).",
            json!({"type": "object", "properties": {"path": path}, "required": ["path"],
                   "additionalProperties": false}),
            false,
        ),
        def(
            "write_file",
            "Writes a file of the workspace, making its folders.",
            json!({"type": "object",
                   "properties": {"path": path, "content": {"type": "string"}},
                   "required": ["path", "content"], "additionalProperties": false}),
            false,
        ),
        def(
            "list_files",
            "Lists a folder of the workspace (the workspace itself by default).",
            json!({"type": "object", "properties": {"path": path},
                   "additionalProperties": false}),
            false,
        ),
        def(
            "run",
            "Runs a shell command in the workspace's sandbox: exit code, stdout and stderr \
             (each cut at 64 KiB). Needs approval.",
            json!({"type": "object",
                   "properties": {
                       "command": {"type": "string", "description": "run with /bin/sh -c"},
                       "timeout_ms": {"type": "integer", "minimum": 1,
                                      "maximum": MAX_RUN_TIMEOUT_MS,
                                      "default": DEFAULT_RUN_TIMEOUT_MS}},
                   "required": ["command"], "additionalProperties": false}),
            true,
        ),
    ]
}

/// The skill tools' definitions.
pub fn skill_tools() -> Vec<ToolDef> {
    vec![
        def(
            "list_skills",
            "Lists the skills this node has: name and description.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
            false,
        ),
        def(
            "activate_skill",
            "Loads a skill: returns its instructions and copies its files into the workspace \
             under skills/NAME/.",
            json!({"type": "object", "properties": {"name": {"type": "string"}},
                   "required": ["name"], "additionalProperties": false}),
            false,
        ),
    ]
}

fn def(name: &str, description: &str, input_schema: Value, requires_approval: bool) -> ToolDef {
    ToolDef {
        name: name.into(),
        description: description.into(),
        input_schema,
        requires_approval,
    }
}

/// The conversations' workspaces, in sandboxes.
pub struct WorkspaceTools {
    host: Arc<dyn SandboxHost>,
}

/// The skills, and the workspaces they are copied into.
pub struct SkillTools {
    skills: SkillRegistry,
    host: Option<Arc<dyn SandboxHost>>,
}

impl WorkspaceTools {
    /// Workspace tools whose workspaces are sandboxes of `host`.
    pub fn new(host: Arc<dyn SandboxHost>) -> Self {
        Self { host }
    }
}

impl SkillTools {
    /// Skill tools over `skills`, copying files into workspaces on `host` (`None`: no sandboxes).
    pub fn new(skills: SkillRegistry, host: Option<Arc<dyn SandboxHost>>) -> Self {
        Self { skills, host }
    }
}

/// The logical actor that holds a conversation's workspace: a sandbox of its own. Its id is
/// `ws.` and the conversation id with `_` and `:` escaped as `_5f` and `_3a`, so that no two
/// conversations share one.
pub fn workspace_actor(conversation: &str) -> HostedActor {
    let mut safe = String::with_capacity(conversation.len());
    for c in conversation.chars() {
        if c.is_ascii_alphanumeric() || "-.".contains(c) {
            safe.push(c);
        } else {
            safe.push_str(&format!("_{:02x}", u32::from(c)));
        }
    }
    HostedActor {
        id: format!("ws.{safe}"),
        tenant: format!("conversation.{safe}"),
        exclusive: true,
        egress: false,
    }
}

async fn pin(
    host: &dyn SandboxHost,
    ctx: &CallContext,
    tool: &str,
) -> Result<PinnedWorker, ToolError> {
    host.pin(workspace_actor(&ctx.conversation))
        .await
        .map_err(|e| ToolError::Unavailable {
            tool: tool.to_string(),
            reason: e.to_string(),
        })
}

impl ToolServer for WorkspaceTools {
    fn call(&self, tool: &str, arguments: Map<String, Value>, ctx: &CallContext) -> CallFuture {
        let (host, ctx, tool) = (self.host.clone(), ctx.clone(), tool.to_string());
        Box::pin(async move {
            let name = format!("{WORKSPACE}.{tool}");
            let pinned = pin(host.as_ref(), &ctx, &name).await?;
            let mut worker = pinned.worker.clone();
            let path = arguments
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let outcome = match tool.as_str() {
                "read_file" => match worker
                    .read_file(ReadFileRequest { path: path.clone() })
                    .await
                {
                    Ok(r) => {
                        let text = String::from_utf8_lossy(&r.into_inner().content).into_owned();
                        result(text.clone(), json!({"path": path, "content": text}))
                    }
                    Err(s) => worker_error(host.as_ref(), &pinned.sandbox, &s).await,
                },
                "write_file" => {
                    let content = arguments
                        .get("content")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .as_bytes()
                        .to_vec();
                    let bytes = content.len();
                    match worker
                        .write_file(WriteFileRequest {
                            path: path.clone(),
                            content,
                        })
                        .await
                    {
                        Ok(_) => result(
                            format!("wrote {bytes} bytes to {path}"),
                            json!({"path": path, "bytes": bytes}),
                        ),
                        Err(s) => worker_error(host.as_ref(), &pinned.sandbox, &s).await,
                    }
                }
                "list_files" => match worker
                    .list_files(ListFilesRequest { path: path.clone() })
                    .await
                {
                    Ok(r) => {
                        let entries: Vec<Value> = r
                            .into_inner()
                            .entries
                            .into_iter()
                            .map(|e| json!({"name": e.name, "dir": e.dir, "size": e.size}))
                            .collect();
                        let text = entries
                            .iter()
                            .map(|e| {
                                let slash = if e["dir"] == true { "/" } else { "" };
                                format!("{}{slash}", e["name"].as_str().unwrap_or_default())
                            })
                            .collect::<Vec<_>>()
                            .join("\n");
                        result(text, json!({"path": path, "entries": entries}))
                    }
                    Err(s) => worker_error(host.as_ref(), &pinned.sandbox, &s).await,
                },
                "run" => {
                    let command = arguments
                        .get("command")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let timeout = arguments
                        .get("timeout_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(DEFAULT_RUN_TIMEOUT_MS);
                    run(
                        host.as_ref(),
                        &pinned,
                        &command,
                        Duration::from_millis(timeout),
                    )
                    .await
                }
                other => return Err(ToolError::NotFound(format!("{WORKSPACE}.{other}"))),
            };
            Ok(outcome)
        })
    }
}

/// Runs `command` with `/bin/sh -c` in the workspace; the process is killed at `timeout`.
async fn run(
    host: &dyn SandboxHost,
    pinned: &PinnedWorker,
    command: &str,
    timeout: Duration,
) -> ToolOutcome {
    let start = RunInput {
        input: Some(run_input::Input::Start(ProcessStart {
            argv: vec!["/bin/sh".into(), "-c".into(), command.into()],
            ..Default::default()
        })),
    };
    let mut outputs = match pinned
        .worker
        .clone()
        .run(tokio_stream::iter(vec![start]))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return worker_error(host, &pinned.sandbox, &s).await,
    };
    let (mut stdout, mut stderr, mut truncated) = (Vec::new(), Vec::new(), false);
    let mut keep = |buf: &mut Vec<u8>, bytes: Vec<u8>| {
        let room = RUN_OUTPUT_CAP.saturating_sub(buf.len());
        truncated |= bytes.len() > room;
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    let collected = tokio::time::timeout(timeout, async {
        loop {
            match outputs.message().await {
                Ok(Some(out)) => match out.output {
                    Some(run_output::Output::Stdout(b)) => keep(&mut stdout, b),
                    Some(run_output::Output::Stderr(b)) => keep(&mut stderr, b),
                    Some(run_output::Output::Exit(e)) => return Ok(e),
                    _ => {}
                },
                Ok(None) => return Err(None),
                Err(s) => return Err(Some(s)),
            }
        }
    })
    .await;
    // Dropping the call kills the process if it still runs.
    drop(outputs);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    match collected {
        Err(_) => ToolOutcome {
            result: json!({
                "content": [{"type": "text", "text": format!(
                    "timed out after {} ms (killed)\n{stdout}{stderr}", timeout.as_millis())}],
                "structuredContent": {"timed_out": true, "stdout": stdout, "stderr": stderr,
                                      "truncated": truncated},
            }),
            is_error: true,
        },
        Ok(Err(Some(status))) => worker_error(host, &pinned.sandbox, &status).await,
        Ok(Err(None)) => match host.end_of(&pinned.sandbox).await {
            Some(end) => error(&format!("sandbox {} {end}", pinned.sandbox)),
            None => error("the worker ended the call without an exit"),
        },
        Ok(Ok(exit)) if !exit.limit.is_empty() => ToolOutcome {
            result: json!({
                "content": [{"type": "text", "text": format!("{}\n{stdout}{stderr}", exit.limit)}],
                "structuredContent": {"exit_code": exit.code, "signal": exit.signal,
                                      "limit": exit.limit, "stdout": stdout, "stderr": stderr,
                                      "truncated": truncated, "timed_out": false},
            }),
            is_error: true,
        },
        Ok(Ok(exit)) => result(
            format!("{stdout}{stderr}"),
            json!({"exit_code": exit.code, "signal": exit.signal, "stdout": stdout,
                   "stderr": stderr, "truncated": truncated, "timed_out": false}),
        ),
    }
}

impl ToolServer for SkillTools {
    fn call(&self, tool: &str, arguments: Map<String, Value>, ctx: &CallContext) -> CallFuture {
        let (skills, host, ctx, tool) = (
            self.skills.clone(),
            self.host.clone(),
            ctx.clone(),
            tool.to_string(),
        );
        Box::pin(async move {
            let name = format!("{SKILLS}.{tool}");
            match tool.as_str() {
                "list_skills" => {
                    let list: Vec<Value> = skills
                        .list()
                        .into_iter()
                        .map(|s| json!({"name": s.name, "description": s.description}))
                        .collect();
                    let text = list
                        .iter()
                        .map(|s| {
                            format!(
                                "{}: {}",
                                s["name"].as_str().unwrap_or_default(),
                                s["description"].as_str().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    Ok(result(text, json!({"skills": list})))
                }
                "activate_skill" => {
                    let wanted = arguments
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let Some(skill) = skills.get(wanted) else {
                        return Ok(error(&format!(
                            "no skill `{wanted}` (skills.list_skills lists them)"
                        )));
                    };
                    let host = host.ok_or_else(|| ToolError::Unavailable {
                        tool: name.clone(),
                        reason: "this node has no sandboxes, so no workspace to copy the \
                                 skill into"
                            .into(),
                    })?;
                    let pinned = pin(host.as_ref(), &ctx, &name).await?;
                    let mut copied = Vec::new();
                    for rel in &skill.files {
                        let content = match tokio::fs::read(skill.dir.join(rel)).await {
                            Ok(c) => c,
                            Err(e) => {
                                return Ok(error(&format!("cannot read {}: {e}", rel.display())));
                            }
                        };
                        let path = format!("skills/{}/{}", skill.name, rel.display());
                        if let Err(s) = pinned
                            .worker
                            .clone()
                            .write_file(WriteFileRequest {
                                path: path.clone(),
                                content,
                            })
                            .await
                        {
                            return Ok(error(s.message()));
                        }
                        copied.push(path);
                    }
                    Ok(result(
                        skill.instructions.clone(),
                        json!({"name": skill.name, "instructions": skill.instructions,
                               "files": copied}),
                    ))
                }
                other => Err(ToolError::NotFound(format!("{SKILLS}.{other}"))),
            }
        })
    }
}

/// The outcome of a call to a workspace's worker that failed: if the call broke because its
/// sandbox ended (killed at a limit), the error says so and names the limit.
async fn worker_error(
    host: &dyn SandboxHost,
    sandbox: &str,
    status: &tonic::Status,
) -> ToolOutcome {
    use tonic::Code;
    if matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    ) && let Some(end) = host.end_of(sandbox).await
    {
        return error(&format!("sandbox {sandbox} {end}"));
    }
    error(status.message())
}

fn result(text: String, structured: Value) -> ToolOutcome {
    ToolOutcome {
        result: json!({"content": [{"type": "text", "text": text}],
                       "structuredContent": structured}),
        is_error: false,
    }
}

fn error(message: &str) -> ToolOutcome {
    ToolOutcome {
        result: json!({"content": [{"type": "text", "text": message}]}),
        is_error: true,
    }
}
