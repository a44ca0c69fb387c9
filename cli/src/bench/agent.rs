//! `cadre bench agent`: what durable execution costs and how fast it recovers.
//!
//! A zero-latency OpenAI-compatible model server runs in this process. Round one runs execs of
//! a model agent that calls a built-in tool for `--steps` steps, against a node in this
//! process: each step is one model request, a journaled `ModelCalled`, a journaled
//! `ToolCalled`, the call, and a journaled `ToolReturned`. Round two starts `--in-flight`
//! execs on a `cadre serve` process whose model never answers, SIGKILLs it, starts a new one
//! on the same data dir and times until every exec has completed.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cadre_proto::v1::conversations_client::ConversationsClient;
use cadre_proto::v1::{ExecRequest, ExecState, GetConversationRequest, event};
use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{ms, pct, scratch_dir};
use crate::{Failure, Output};

#[derive(Args)]
pub struct AgentBenchArgs {
    /// Execs in the journaling round.
    #[arg(long, default_value_t = 50)]
    execs: usize,
    /// Tool-calling steps per exec.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Execs in flight when the node is killed (the recovery round).
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Where to put scratch data dirs (default: the node's data dir).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(args: AgentBenchArgs) -> Result<(), Failure> {
    if args.execs == 0 || args.steps == 0 || args.in_flight == 0 {
        return Err(Failure::Usage(
            "--execs, --steps and --in-flight must be at least 1".into(),
        ));
    }
    let scratch = scratch_dir(args.data_dir.as_deref(), "agent");
    let result = rounds(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => {
            let f = |k: &str| report[k].as_f64().unwrap_or_default();
            println!(
                "step p50 {:.3} ms, p99 {:.3} ms (model round trip p50 {:.3} ms): journaling \
                 about {:.3} ms per step",
                f("step_p50_ms"),
                f("step_p99_ms"),
                f("model_roundtrip_p50_ms"),
                f("journal_overhead_p50_ms"),
            );
            println!(
                "{} execs in flight at SIGKILL: all completed {:.0} ms after the restart began \
                 (node listening after {:.0} ms)",
                args.in_flight,
                f("recovery_ms"),
                f("recovery_node_start_ms"),
            );
        }
    }
    Ok(())
}

async fn rounds(args: &AgentBenchArgs, dir: &Path) -> anyhow::Result<Value> {
    let hang = Arc::new(AtomicBool::new(false));
    let steps_wanted = Arc::new(AtomicUsize::new(args.steps));
    let model = serve_model(steps_wanted.clone(), hang.clone()).await?;
    let config_text = format!(
        r#"
version: v1
models:
  - id: bench
    openai: {{ base_url: "http://{model}/v1", model: bench }}
supervisor:
  children:
    - id: bench
      agent: {{ model: bench, tools: ["skills.*"], max_iterations: 100000, max_repeats: 100000 }}
"#
    );
    std::fs::create_dir_all(dir)?;
    let config_path = dir.join("cadre.yaml");
    std::fs::write(&config_path, &config_text)?;
    let config = cadre_actors::config::Config::parse("cadre.yaml", &config_text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Round one: journaled steps, in this process.
    let node = cadre_cluster::Node::start(cadre_cluster::NodeOptions {
        config,
        listen: "127.0.0.1:0".parse().expect("loopback"),
        data_dir: dir.join("steps"),
    })
    .await
    .context("start a scratch node")?;
    let url = format!("http://{}", node.addr);
    eprintln!(
        "bench agent: {} execs of {} steps against {url}",
        args.execs, args.steps
    );
    let mut client = ConversationsClient::connect(url).await?;
    let mut steps = Vec::with_capacity(args.execs * args.steps);
    for i in 0..args.execs {
        let mut stream = client
            .exec(ExecRequest {
                agent_id: "bench".into(),
                input: format!("exec {i}"),
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut last_model: Option<i64> = None;
        while let Some(e) = stream.message().await? {
            if let Some(event::Kind::ModelCalled(_)) = e.kind {
                if let Some(prev) = last_model {
                    steps.push(Duration::from_micros((e.time_unix_micros - prev) as u64));
                }
                last_model = Some(e.time_unix_micros);
            }
            if let Some(event::Kind::ExecStateChanged(s)) = &e.kind
                && s.state == ExecState::Failed as i32
            {
                anyhow::bail!("a bench exec failed: {}", s.reason);
            }
        }
    }
    node.run_until(async {}).await;
    steps.sort();
    let roundtrips = model_roundtrips(&model, 500).await?;

    // Round two: recovery after SIGKILL; a recovered exec's model answers at once.
    hang.store(true, Ordering::SeqCst);
    steps_wanted.store(0, Ordering::SeqCst);
    let data = dir.join("recovery");
    let mut serve = Serve::start(&config_path, &data)?;
    eprintln!(
        "bench agent: {} execs in flight, then SIGKILL",
        args.in_flight
    );
    let mut client = ConversationsClient::connect(format!("http://{}", serve.addr)).await?;
    let mut streams = Vec::with_capacity(args.in_flight);
    for i in 0..args.in_flight {
        let mut stream = client
            .exec(ExecRequest {
                conversation_id: format!("r-{i}"),
                agent_id: "bench".into(),
                input: "recover me".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        // Wait until the exec is running (its input and state are committed).
        stream.message().await?;
        stream.message().await?;
        streams.push(stream);
    }
    serve.kill();
    drop(streams);
    hang.store(false, Ordering::SeqCst);
    let restarted = Instant::now();
    let serve = Serve::start(&config_path, &data)?;
    let node_start = restarted.elapsed();
    let mut client = ConversationsClient::connect(format!("http://{}", serve.addr)).await?;
    let mut pending: Vec<usize> = (0..args.in_flight).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} execs not recovered",
            pending.len()
        );
        let mut still = Vec::new();
        for i in pending {
            let c = client
                .get(GetConversationRequest {
                    conversation_id: format!("r-{i}"),
                })
                .await?
                .into_inner();
            match ExecState::try_from(c.exec_state) {
                Ok(ExecState::Completed) => {}
                Ok(ExecState::Failed | ExecState::Cancelled) => {
                    anyhow::bail!("recovered exec r-{i} did not complete")
                }
                _ => still.push(i),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let recovery = restarted.elapsed();
    drop(serve);
    let step_p50 = pct(&steps, 0.50);
    let model_p50 = pct(&roundtrips, 0.50);
    Ok(json!({
        "execs": args.execs,
        "steps_per_exec": args.steps,
        "step_p50_ms": step_p50,
        "step_p99_ms": pct(&steps, 0.99),
        "model_roundtrip_p50_ms": model_p50,
        "journal_overhead_p50_ms": ((step_p50 - model_p50).max(0.0) * 1e3).round() / 1e3,
        "in_flight": args.in_flight,
        "recovery_node_start_ms": ms(node_start),
        "recovery_ms": ms(recovery),
    }))
}

/// A `cadre serve` child process, killed when dropped.
pub(super) struct Serve {
    child: std::process::Child,
    pub(super) addr: String,
}

impl Serve {
    pub(super) fn start(config: &Path, data: &Path) -> anyhow::Result<Self> {
        Self::start_with(config, data, &[])
    }

    /// With more `cadre serve` arguments.
    pub(super) fn start_with(config: &Path, data: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("CADRE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("start cadre serve")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("cadre: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .context("cadre serve did not start")?;
        Ok(Self { child, addr })
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Round trips of a bare HTTP client to the model server, for comparison.
async fn model_roundtrips(addr: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::new();
    let body = json!({"model": "bench", "messages": [{"role": "user", "content": "x"}]});
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        http.post(format!("http://{addr}/v1/chat/completions"))
            .json(&body)
            .send()
            .await?
            .bytes()
            .await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// A zero-latency Chat Completions server: it asks for `skills.list_skills` until the exec
/// has `steps` tool results, then answers. With `hang` set it never answers.
pub(super) async fn serve_model(
    steps: Arc<AtomicUsize>,
    hang: Arc<AtomicBool>,
) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (hang, steps) = (hang.clone(), steps.clone());
            tokio::spawn(async move {
                let _ = serve_connection(conn, &steps, &hang).await;
            });
        }
    });
    Ok(addr)
}

async fn serve_connection(
    mut conn: tokio::net::TcpStream,
    steps: &AtomicUsize,
    hang: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Value =
            serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
        buf.drain(..head_end + length);
        if hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let results = body["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "tool").count())
            .unwrap_or(0);
        let message = if results < steps.load(Ordering::SeqCst) {
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("c{results}"), "type": "function",
                "function": {"name": "skills__list_skills", "arguments": "{}"}}]})
        } else {
            json!({"role": "assistant", "content": "done"})
        };
        let reply = json!({
            "id": "bench", "object": "chat.completion", "model": "bench",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        conn.write_all(response.as_bytes()).await?;
    }
}
