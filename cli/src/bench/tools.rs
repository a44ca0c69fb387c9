//! `cadre bench tools`: tool calls through the registry to a warm stdio MCP server in a gVisor
//! sandbox (the `mcp` actor, placement's process bridge, the worker's `Run` stream), against
//! the same server driven directly on the host over its pipes: the difference is what cadre
//! and the sandbox add.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cadre_actors::mcp::{McpServer, McpSpec, mcp_child};
use cadre_actors::tools::{CallContext, ToolRegistry};
use cadre_actors::{Services, SupervisorFlags, SupervisorRef, Tree};
use clap::Args;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use serde_json::{Map, Value, json};

use super::pct;
use crate::{Failure, Output};

#[derive(Args)]
pub struct ToolsBenchArgs {
    /// Calls timed one at a time, on each path (after a warm-up of 200).
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
    /// Calls in the throughput round, on each path.
    #[arg(long, default_value_t = 10_000)]
    throughput_calls: usize,
    /// Calls in flight at once in the throughput round.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The stdio MCP server to run [default: server-everything from scripts/setup.sh].
    #[arg(long, value_name = "ARGV", num_args = 1.., allow_hyphen_values = true)]
    server: Vec<String>,
    /// The tool to call.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// Its arguments, a JSON object.
    #[arg(long, default_value = r#"{"message":"ping"}"#)]
    args: String,
    /// Where the scratch sandboxes keep their state [default: the node's default data dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

const WARMUP: usize = 200;

pub async fn run(args: ToolsBenchArgs) -> Result<(), Failure> {
    if args.calls == 0 || args.throughput_calls == 0 || args.concurrency == 0 {
        return Err(Failure::Usage(
            "--calls, --throughput-calls and --concurrency must be at least 1".into(),
        ));
    }
    let arguments = match serde_json::from_str(&args.args) {
        Ok(Value::Object(map)) => map,
        _ => return Err(Failure::Usage("--args must be a JSON object".into())),
    };
    let server = if args.server.is_empty() {
        let dir = std::env::var_os("CADRE_MCP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/local/lib/cadre-mcp"));
        let index =
            dir.join("npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        vec!["node".into(), index.display().to_string(), "stdio".into()]
    } else {
        args.server.clone()
    };
    let scratch = super::scratch_dir(args.data_dir.as_deref(), "tools");
    let result = rounds(&args, &server, arguments, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => {
            let f = |k: &str| report[k].as_f64().unwrap_or_default();
            println!(
                "through cadre (registry → mcp actor → gVisor sandbox): p50 {:.3} ms, p99 {:.3} ms, {:.0} calls/s",
                f("call_p50_ms"),
                f("call_p99_ms"),
                f("calls_per_sec")
            );
            println!(
                "the server on the host, direct:                        p50 {:.3} ms, p99 {:.3} ms, {:.0} calls/s",
                f("server_p50_ms"),
                f("server_p99_ms"),
                f("server_calls_per_sec")
            );
            println!(
                "added by cadre: p50 {:.3} ms, p99 {:.3} ms",
                f("added_p50_ms"),
                f("added_p99_ms")
            );
        }
    }
    Ok(())
}

/// Calls one tool: `Ok` once it answered without an error.
type Call = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync,
>;

async fn rounds(
    args: &ToolsBenchArgs,
    server: &[String],
    arguments: Map<String, Value>,
    dir: &std::path::Path,
) -> anyhow::Result<Value> {
    eprintln!("bench tools: `{}` on the host", server.join(" "));
    let mut child = tokio::process::Command::new(&server[0])
        .args(&server[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("run `{}`", server[0]))?;
    let pipes = (
        child.stdout.take().context("stdout")?,
        child.stdin.take().context("stdin")?,
    );
    let session = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("cadre-bench", env!("CARGO_PKG_VERSION")),
    )
    .serve(pipes)
    .await
    .context("MCP handshake with the host server")?;
    let peer = session.peer().clone();
    let (tool, host_args) = (args.tool.clone(), arguments.clone());
    let direct: Call = Arc::new(move || {
        let params = CallToolRequestParams::new(tool.clone()).with_arguments(host_args.clone());
        let peer = peer.clone();
        Box::pin(async move {
            let r = peer.call_tool(params).await?;
            anyhow::ensure!(!r.is_error.unwrap_or(false), "the tool reported an error");
            Ok(())
        })
    });
    let host = measure(args, &direct).await?;
    drop(session);
    let _ = child.kill().await;

    eprintln!("bench tools: the same server as an mcp actor in a gVisor sandbox");
    use cadre_actors::placement::PlacementConfig;
    use cadre_sandbox::{GvisorProvider, Placement, PoolConfig, WarmPool};
    let worker_bin = std::env::current_exe().context("find the cadre binary")?;
    let provider = Arc::new(GvisorProvider::new(dir.join("state"), worker_bin)?);
    let pool = WarmPool::start(
        provider,
        PoolConfig {
            min: 1,
            max: 2,
            workspaces: dir.join("workspaces"),
            images: dir.join("images"),
            owners: dir.join("owners"),
            memory_bytes: Some(1 << 30),
            cpus: Some(1.0),
            pids: Some(512),
            workspace_quota: None,
            min_free_disk: 0,
            name: format!("bench-{}", std::process::id()),
        },
    );
    let placement = Placement::start(pool.clone(), PlacementConfig::default());
    let tools = ToolRegistry::new();
    let services = Services {
        host: Some(Arc::new(placement.clone())),
        tools: tools.clone(),
        ..Default::default()
    };
    let spec = McpSpec {
        server: McpServer::Stdio {
            command: server.to_vec(),
            env: Vec::new(),
        },
        ..McpSpec::default()
    };
    let started = SupervisorRef::start_root(
        "root",
        SupervisorFlags::default(),
        vec![mcp_child("bench", spec, services)],
        Tree::new(),
    )
    .await;
    let result = match started {
        Ok((root, _exit)) => {
            let name = format!("bench.{}", args.tool);
            let (registry, call_args) = (tools.clone(), Value::Object(arguments));
            let through: Call = Arc::new(move || {
                let prepared = registry.prepare(&name, &call_args);
                Box::pin(async move {
                    let ctx = CallContext {
                        conversation: "bench".into(),
                        idempotency_key: "bench/call/1".into(),
                        traceparent: None,
                    };
                    let outcome = prepared?.call(&ctx).await?;
                    anyhow::ensure!(!outcome.is_error, "the tool reported an error");
                    Ok(())
                })
            });
            let measured = measure(args, &through).await;
            root.shutdown().await;
            measured
        }
        Err(e) => Err(anyhow::anyhow!("the mcp actor did not start: {e}")),
    };
    placement.shutdown();
    pool.shutdown().await;
    let cadre = result?;
    Ok(json!({
        "tool": args.tool,
        "calls": args.calls,
        "concurrency": args.concurrency,
        "call_p50_ms": cadre.p50,
        "call_p99_ms": cadre.p99,
        "calls_per_sec": cadre.per_sec,
        "server_p50_ms": host.p50,
        "server_p99_ms": host.p99,
        "server_calls_per_sec": host.per_sec,
        "added_p50_ms": ((cadre.p50 - host.p50) * 1e3).round() / 1e3,
        "added_p99_ms": ((cadre.p99 - host.p99) * 1e3).round() / 1e3,
    }))
}

struct Figures {
    p50: f64,
    p99: f64,
    per_sec: f64,
}

/// Warm-up, `calls` one at a time, then `throughput_calls` with `concurrency` in flight.
async fn measure(args: &ToolsBenchArgs, call: &Call) -> anyhow::Result<Figures> {
    for _ in 0..WARMUP {
        call().await?;
    }
    let mut latencies = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let t = Instant::now();
        call().await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (call, next, total) = (call.clone(), next.clone(), args.throughput_calls);
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    call().await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let elapsed: Duration = t.elapsed();
    Ok(Figures {
        p50: pct(&latencies, 0.50),
        p99: pct(&latencies, 0.99),
        per_sec: (args.throughput_calls as f64 / elapsed.as_secs_f64()).round(),
    })
}
