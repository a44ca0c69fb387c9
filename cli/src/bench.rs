//! `cadre bench …`: measurements that print one JSON object with `-o json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cadre_actors::controller::{AppendRequest, Controller, HistoryLimits, NewEvent};
use cadre_actors::store::Store;
use cadre_cluster::store::{SqliteStore, Storage};
use cadre_proto::v1::{Event, OutputEmitted, event};
use clap::{Args, Subcommand};
use prost::Message;
use serde_json::json;

use crate::{Failure, Output};

mod agent;
mod cluster;
mod telemetry;
mod tools;
mod workspace;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable append throughput and latency of the event log (group commit through the
    /// controller), against a naive baseline that commits one transaction per event.
    Eventlog(EventlogArgs),
    /// Exec round trips with the `echo` agent against a node started in this process (real
    /// gRPC over loopback, durable log in a scratch data dir), from concurrent conversations.
    Exec(ExecBenchArgs),
    /// Placement on a warm pool of real gVisor sandboxes: activations (placement decision,
    /// slot claim and the worker's acknowledgement), memory per passivated actor, cold sandbox
    /// start, and process start inside a warm sandbox. Needs runsc (run as root).
    Placement(PlacementBenchArgs),
    /// Tool calls through the registry to a warm stdio MCP server in a gVisor sandbox, against
    /// the same server driven directly on the host: latency p50/p99, calls/s, and what cadre
    /// adds. Needs runsc (run as root) and the server (scripts/setup.sh installs it).
    Tools(tools::ToolsBenchArgs),
    /// Durable execution of a model agent against a zero-latency model server in this
    /// process: time per journaled step (model call, tool call, their events) against the
    /// bare model round trip, and recovery after SIGKILL with execs in flight (a `cadre
    /// serve` process is killed and restarted on its data dir).
    Agent(agent::AgentBenchArgs),
    /// An agent's work in a workspace (a virtualenv and a package from a local wheel, a git
    /// repository of a few hundred files, a C compile, a walk over a library tree) inside a
    /// gVisor sandbox, against the same work on the host. Needs runsc (run as root).
    Workspace(workspace::WorkspaceBenchArgs),
    /// A cluster on loopback: append latency through another node (the controller's
    /// `cadre.v1.Log` over gRPC) against appends on the controller node, same run; and echo
    /// execs sent to one node against execs spread over three (two `cadre serve` processes
    /// join a node in this process).
    Cluster(cluster::ClusterBenchArgs),
    /// What observability costs: `bench exec` with metrics on, and with metrics and tracing
    /// on (spans sent over OTLP to a receiver in this process), against both off, in
    /// alternating rounds of one run: throughput and round-trip p50/p99, and the overhead.
    Telemetry(telemetry::TelemetryBenchArgs),
}

#[derive(Args)]
pub struct PlacementBenchArgs {
    /// Sandboxes the actors are placed on (one tenant each).
    #[arg(long, default_value_t = 8)]
    sandboxes: usize,
    /// Logical actors to activate, spread over the tenants.
    #[arg(long, default_value_t = 20_000)]
    actors: usize,
    /// Activations in flight at once.
    #[arg(long, default_value_t = 24)]
    concurrency: usize,
    /// More actors activated after the timed round (each passivating the least recently used
    /// one once the slots are full), to measure the memory a passivated actor holds: the
    /// growth of this process's resident memory, divided.
    #[arg(long, default_value_t = 50_000)]
    memory_actors: usize,
    /// Processes started (one at a time) inside a warm sandbox.
    #[arg(long, default_value_t = 200)]
    process_starts: usize,
    /// Cold sandbox starts to time.
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
    /// Checkpoints and restores of a sandbox to time.
    #[arg(long, default_value_t = 5)]
    suspensions: usize,
    /// Where the scratch sandboxes keep their state [default: the node's default data dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct ExecBenchArgs {
    /// Execs in all.
    #[arg(long, default_value_t = 20_000)]
    execs: usize,
    /// Concurrent conversations, each running one exec at a time.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// HTTP/2 connections the conversations share (conversation i uses connection
    /// i mod N) [default: one per conversation]
    #[arg(long)]
    connections: Option<usize>,
    /// Where the scratch node keeps its data [default: the node's default data dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve the API over TLS (certificates made for the run) and connect with https.
    #[arg(long)]
    tls: bool,
    /// Count the Prometheus metrics, as a node with `telemetry.metrics_listen` does.
    #[arg(long)]
    metrics: bool,
    /// Trace every exec and send the spans over OTLP/gRPC to this endpoint
    /// (`http://HOST:PORT`), as a node with `telemetry.otlp_endpoint` does.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Args)]
pub struct EventlogArgs {
    /// Events to append in all (enough to reach a steady state with the materializer).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Concurrent writers, each appending one event at a time and waiting for its ack.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Events for the one-transaction-per-event baseline (it is slow).
    #[arg(long, default_value_t = 3_000)]
    baseline_events: usize,
    /// The disk to measure: a scratch store is made in a new folder inside DIR and removed
    /// afterwards [default: the node's default data dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The store to measure: `embedded` (SQLite and commit-log segment files in a scratch
    /// data dir), `foundationdb:CLUSTER_FILE` (builds with the `foundationdb` feature; a
    /// scratch directory of its own, cleared afterwards) or `sqlite:PATH` (a shared SQLite
    /// file, removed afterwards). The commit log is in the store itself but for `embedded`.
    #[arg(long, value_name = "STORE", default_value = "embedded")]
    store: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(command: BenchCommand) -> Result<(), Failure> {
    let args = match command {
        BenchCommand::Eventlog(args) => args,
        BenchCommand::Exec(args) => return exec(args).await,
        BenchCommand::Placement(args) => return placement(args).await,
        BenchCommand::Tools(args) => return tools::run(args).await,
        BenchCommand::Agent(args) => return agent::run(args).await,
        BenchCommand::Workspace(args) => return workspace::run(args).await,
        BenchCommand::Cluster(args) => return cluster::run(args).await,
        BenchCommand::Telemetry(args) => return telemetry::run(args).await,
    };
    if args.events == 0 || args.writers == 0 {
        return Err(Failure::Usage(
            "--events and --writers must be at least 1".into(),
        ));
    }
    let scratch = scratch_dir(args.data_dir.as_deref(), "eventlog");
    let result = eventlog(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => {
            println!(
                "group commit: {:.0} events/s, append p50 {:.3} ms, p99 {:.3} ms ({} events, {} writers)",
                report["events_per_sec"].as_f64().unwrap_or_default(),
                report["append_p50_ms"].as_f64().unwrap_or_default(),
                report["append_p99_ms"].as_f64().unwrap_or_default(),
                args.events,
                args.writers
            );
            println!(
                "baseline (one transaction per event): {:.0} events/s; group commit is {:.1}x faster",
                report["baseline_events_per_sec"]
                    .as_f64()
                    .unwrap_or_default(),
                report["speedup"].as_f64().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `execs` echo execs over `conversations` conversations (`PREFIX-C`), each running one at a
/// time, conversation c on channel c mod N: the sorted round trips and execs per second.
async fn echo_execs(
    channels: &[tonic::transport::Channel],
    execs: usize,
    conversations: usize,
    prefix: &str,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    use cadre_proto::v1::ExecRequest;
    use cadre_proto::v1::conversations_client::ConversationsClient;

    let per = execs.div_ceil(conversations);
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let shown = done.clone();
    let ticker = tokio::spawn(async move {
        let mut progress =
            crate::progress::Progress::new("bench exec", "execs", Some(execs as u64));
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let n = shown.load(std::sync::atomic::Ordering::Relaxed);
            progress.set(n);
            if n >= execs as u64 {
                break progress.finish();
            }
        }
    });
    let mut tasks = Vec::new();
    for c in 0..conversations {
        let mut client = ConversationsClient::new(channels[c % channels.len()].clone());
        let done = done.clone();
        let count = per.min(execs.saturating_sub(c * per));
        let conversation = format!("{prefix}-{c}");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                let mut stream = client
                    .exec(ExecRequest {
                        conversation_id: conversation.clone(),
                        agent_id: "echo".into(),
                        input: format!("message {i}"),
                        last_seq: 0,
                        resume: false,
                    })
                    .await?
                    .into_inner();
                while stream.message().await?.is_some() {}
                latencies.push(t.elapsed());
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(execs);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    let _ = ticker.await;
    latencies.sort();
    Ok((latencies, rate))
}

fn sample_event(writer: usize, i: usize) -> NewEvent {
    NewEvent {
        exec_id: format!("exec-{writer}"),
        kind: event::Kind::OutputEmitted(OutputEmitted {
            text: format!("writer {writer} event {i}: {}", "x".repeat(64)),
        }),
    }
}

/// The store `bench eventlog --store` names, with its commit log, in or under `dir`.
fn bench_store(spec: &str, dir: &std::path::Path) -> Result<Storage, Failure> {
    let usage = |why: String| Failure::Usage(format!("cadre: --store {spec}: {why}"));
    let runtime = |e: cadre_actors::store::StoreError| {
        Failure::Runtime(anyhow::anyhow!("--store {spec}: {e}"))
    };
    let in_store = |store: Arc<dyn Store>| Storage {
        log: Arc::new(cadre_actors::controller::StoreLog(store.clone())),
        store,
    };
    match spec.split_once(':') {
        None if spec == "embedded" => {
            let (store, log) = cadre_cluster::store::open_embedded(dir).map_err(runtime)?;
            Ok(Storage {
                store: Arc::new(store),
                log: Arc::new(log),
            })
        }
        Some(("foundationdb", file)) if !file.is_empty() => {
            let config = cadre_actors::config::FoundationdbStore {
                cluster_file: PathBuf::from(file),
                prefix: "cadre-bench".into(),
                lease_ttl: cadre_actors::config::DEFAULT_LEASE_TTL,
            };
            let scratch = dir
                .file_name()
                .map_or("scratch".into(), |n| n.to_string_lossy().into_owned());
            let store = cadre_cluster::store::open_foundationdb(&config, &scratch)
                .map_err(|e| usage(e.to_string()))?;
            Ok(in_store(store))
        }
        Some(("sqlite", path)) if !path.is_empty() => {
            let store =
                SqliteStore::open_shared(std::path::Path::new(path), None).map_err(runtime)?;
            Ok(in_store(Arc::new(store)))
        }
        _ => Err(usage(
            "give embedded, foundationdb:CLUSTER_FILE or sqlite:PATH".into(),
        )),
    }
}

/// Removes what the bench wrote to a store that outlives it.
fn clear_bench_store(spec: &str, store: &dyn Store) {
    if let Some(("sqlite", path)) = spec.split_once(':') {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    } else if spec != "embedded"
        && let Err(e) = store.transact(&mut |t| t.clear_range(&[0x00], &[0xff]))
    {
        eprintln!("cadre: cannot clear the bench's keys from {spec}: {e}");
    }
}

async fn eventlog(
    args: &EventlogArgs,
    dir: &std::path::Path,
) -> Result<serde_json::Value, Failure> {
    let Storage { store, log } = bench_store(&args.store, dir)?;
    let result = eventlog_on(args, dir, store.clone(), log).await;
    clear_bench_store(&args.store, store.as_ref());
    Ok(result?)
}

async fn eventlog_on(
    args: &EventlogArgs,
    dir: &std::path::Path,
    store: Arc<dyn Store>,
    log: Arc<dyn cadre_actors::controller::CommitLog>,
) -> anyhow::Result<serde_json::Value> {
    let controller = Controller::with_log(
        store.clone(),
        log,
        HistoryLimits {
            max_events_per_conversation: u64::MAX,
            warn_percent: 100,
        },
    );
    let actor = controller
        .start_detached()
        .await
        .context("start the controller")?;

    eprintln!(
        "bench eventlog: {} events, {} writers, in {} ({})",
        args.events,
        args.writers,
        dir.display(),
        args.store
    );
    let per_writer = args.events.div_ceil(args.writers);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.writers);
    for w in 0..args.writers {
        let controller = controller.clone();
        let count = per_writer.min(args.events.saturating_sub(w * per_writer));
        tasks.push(tokio::spawn(async move {
            let conversation = format!("bench-{w}");
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                controller
                    .append(AppendRequest {
                        conversation_id: conversation.clone(),
                        events: vec![sample_event(w, i)],
                        idempotency_key: None,
                        open_exec: None,
                        owner: None,
                    })
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.events);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    actor.stop_and_wait(None, None).await.ok();
    latencies.sort();
    let events_per_sec = latencies.len() as f64 / elapsed.as_secs_f64();

    eprintln!(
        "bench eventlog: baseline, {} events, one transaction each",
        args.baseline_events
    );
    let baseline = baseline(store, args.writers, args.baseline_events).await?;
    Ok(json!({
        "events": latencies.len(),
        "writers": args.writers,
        "events_per_sec": events_per_sec.round(),
        "append_p50_ms": pct(&latencies, 0.50),
        "append_p99_ms": pct(&latencies, 0.99),
        "append_max_ms": ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        "baseline_events": args.baseline_events,
        "baseline_events_per_sec": baseline.round(),
        "speedup": (events_per_sec / baseline * 10.0).round() / 10.0,
        "data_dir": dir.display().to_string(),
        "store": args.store,
    }))
}

/// How a naive log writes: every event its own durable transaction, writers taking turns.
async fn baseline(store: Arc<dyn Store>, writers: usize, events: usize) -> anyhow::Result<f64> {
    let per_writer = events.div_ceil(writers).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let count = per_writer.min(events.saturating_sub(w * per_writer));
        tasks.push(tokio::task::spawn_blocking(move || {
            let conversation = format!("baseline-{w}");
            for i in 0..count {
                let new = sample_event(w, i);
                let event = Event {
                    conversation_id: conversation.clone(),
                    seq: i as u64 + 1,
                    exec_id: new.exec_id,
                    time_unix_micros: 0,
                    kind: Some(new.kind),
                };
                let key = cadre_actors::store::tuple::pack(&[
                    cadre_actors::store::tuple::Elem::Str("baseline"),
                    cadre_actors::store::tuple::Elem::Str(&conversation),
                    cadre_actors::store::tuple::Elem::Int(event.seq),
                ]);
                let bytes = event.encode_to_vec();
                store.transact(&mut |t| t.set(&key, &bytes))?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

async fn exec(args: ExecBenchArgs) -> Result<(), Failure> {
    if args.execs == 0 || args.conversations == 0 || args.connections == Some(0) {
        return Err(Failure::Usage(
            "--execs, --conversations and --connections must be at least 1".into(),
        ));
    }
    if args.metrics {
        cadre_actors::metrics::enable();
    }
    let traces = match &args.otlp_endpoint {
        Some(endpoint) => crate::telemetry::init(Some(endpoint.clone()), "warn")?,
        None => None,
    };
    let scratch = scratch_dir(args.data_dir.as_deref(), "exec");
    let result = exec_rounds(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let mut report = result?;
    if let Some(provider) = traces {
        // Every span of the run is sent before the figures are (the receiver counts them).
        provider
            .shutdown()
            .map_err(|e| anyhow::anyhow!("cannot send the last spans: {e}"))?;
    }
    report["metrics"] = json!(args.metrics);
    report["tracing"] = json!(args.otlp_endpoint.is_some());
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => println!(
            "{:.0} execs/s, round trip p50 {:.3} ms, p99 {:.3} ms ({} execs over {} conversations)",
            report["execs_per_sec"].as_f64().unwrap_or_default(),
            report["exec_p50_ms"].as_f64().unwrap_or_default(),
            report["exec_p99_ms"].as_f64().unwrap_or_default(),
            args.execs,
            args.conversations
        ),
    }
    Ok(())
}

async fn exec_rounds(
    args: &ExecBenchArgs,
    dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    let mut config = cadre_actors::config::Config::default();
    let ca = match args.tls {
        true => {
            let (tls, ca) = crate::certs::for_loopback(&dir.join("certs"))?;
            config.api.tls = Some(tls);
            Some(tonic::transport::Certificate::from_pem(ca))
        }
        false => None,
    };
    let node = cadre_cluster::Node::start(cadre_cluster::NodeOptions {
        config,
        listen: "127.0.0.1:0".parse().expect("loopback"),
        data_dir: dir.to_path_buf(),
    })
    .await
    .context("start a scratch node")?;
    let scheme = if ca.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", node.addr);
    eprintln!(
        "bench exec: {} execs over {} conversations against {url}",
        args.execs, args.conversations
    );
    let connections = args.connections.unwrap_or(args.conversations);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
        if let Some(ca) = &ca {
            endpoint = endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca.clone()))?;
        }
        channels.push(endpoint.connect().await?);
    }
    let (latencies, rate) = echo_execs(&channels, args.execs, args.conversations, "bench").await?;
    node.run_until(async {}).await;
    Ok(json!({
        "execs": latencies.len(),
        "conversations": args.conversations,
        "connections": connections,
        "tls": args.tls,
        "execs_per_sec": rate.round(),
        "exec_p50_ms": pct(&latencies, 0.50),
        "exec_p99_ms": pct(&latencies, 0.99),
        "exec_max_ms": ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        "data_dir": dir.display().to_string(),
    }))
}

async fn placement(args: PlacementBenchArgs) -> Result<(), Failure> {
    if args.sandboxes == 0 || args.actors == 0 || args.concurrency == 0 || args.memory_actors == 0 {
        return Err(Failure::Usage(
            "--sandboxes, --actors, --concurrency and --memory-actors must be at least 1".into(),
        ));
    }
    let scratch = scratch_dir(args.data_dir.as_deref(), "placement");
    let result = placement_rounds(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => {
            let f = |k: &str| report[k].as_f64().unwrap_or_default();
            println!(
                "activations: {:.0}/s, p50 {:.3} ms, p99 {:.3} ms ({} actors on {} sandboxes)",
                f("activations_per_sec"),
                f("activation_p50_ms"),
                f("activation_p99_ms"),
                args.actors,
                args.sandboxes
            );
            println!(
                "{:.0} bytes per passivated actor; cold sandbox start {:.1} ms; process start p50 {:.2} ms, p99 {:.2} ms",
                f("bytes_per_passivated_actor"),
                f("cold_start_ms"),
                f("process_start_p50_ms"),
                f("process_start_p99_ms"),
            );
            println!(
                "checkpoint {:.1} ms ({:.0} KiB image), restore p50 {:.1} ms",
                f("checkpoint_ms"),
                f("checkpoint_image_bytes") / 1024.0,
                f("restore_p50_ms"),
            );
        }
    }
    Ok(())
}

async fn placement_rounds(
    args: &PlacementBenchArgs,
    dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    use cadre_actors::placement::{Isolation, LogicalActor, PlacementConfig};
    use cadre_actors::sandbox::SandboxSpec;
    use cadre_sandbox::{GvisorProvider, Placement, PoolConfig, Suspended, WarmPool};

    let worker_bin = std::env::current_exe().context("find the cadre binary")?;
    let provider = Arc::new(GvisorProvider::new(dir.join("state"), worker_bin)?);
    let name = format!("bench-{}", std::process::id());

    eprintln!("bench placement: {} cold sandbox starts", args.cold_starts);
    let mut cold = Vec::new();
    for i in 0..args.cold_starts {
        let (sandbox, took) = cold_start(
            provider.as_ref(),
            SandboxSpec {
                id: format!("{name}-cold-{i}"),
                tenant: "cold".into(),
                workspace: dir.join(format!("cold-{i}")),
                egress: false,
                memory_bytes: Some(512 << 20),
                cpus: Some(1.0),
                pids: Some(512),
                workspace_quota: None,
            },
        )
        .await?;
        cold.push(took);
        sandbox.kill().await;
    }
    cold.sort();

    // A sandbox per tenant, one for the process starts, and one kept warm: room for a
    // restore without evicting anything, as in a pool sized with headroom.
    let pool = WarmPool::start(
        provider,
        PoolConfig {
            min: 1,
            max: args.sandboxes + 2,
            workspaces: dir.join("workspaces"),
            images: dir.join("images"),
            owners: dir.join("owners"),
            memory_bytes: Some(512 << 20),
            cpus: Some(1.0),
            pids: Some(512),
            workspace_quota: None,
            min_free_disk: 0,
            name,
        },
    );
    eprintln!("bench placement: starting {} sandboxes", args.sandboxes + 2);
    let lease = pool.acquire("processes").await?;
    let tenants = args.sandboxes;
    let placement = Placement::start(
        pool.clone(),
        PlacementConfig {
            slots_per_sandbox: args.actors.div_ceil(tenants) + 1,
            idle_timeout: Duration::from_secs(3600),
            queue_limit: args.concurrency.max(1024),
        },
    );
    let actor = |i: usize| LogicalActor {
        id: format!("actor-{i}"),
        tenant: format!("tenant-{}", i % tenants),
        isolation: Isolation::Shared,
    };
    // Each tenant leases its sandbox before timing starts: activations are from warm.
    for t in 0..tenants {
        placement.send(&actor(args.actors + t), Vec::new()).await?;
    }
    placement.passivate_idle(Duration::ZERO).await;
    // Nothing starts in the background from here on: the pool is full with its warm one.
    while pool.list().len() < args.sandboxes + 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And every sandbox is warm in gVisor's sense too: for about its first second, until the
    // sentry has calibrated its clock, every clock read in the sandbox traps into the sentry.
    let youngest = pool.list().iter().map(|s| s.started).max();
    let warm_at = youngest.map_or(std::time::SystemTime::now(), |t| t + SANDBOX_WARMUP);
    if let Ok(wait) = warm_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }

    eprintln!(
        "bench placement: {} activations, {} in flight",
        args.actors, args.concurrency
    );
    let started = Instant::now();
    let mut latencies =
        activate_all(&placement, (0..args.actors).map(actor), args.concurrency).await?;
    let elapsed = started.elapsed();
    placement.passivate_idle(Duration::ZERO).await;
    // Memory: what as many more passivated actors add, once buffers and tables are warm.
    let rss_before = rss_bytes();
    eprintln!(
        "bench placement: {} more actors, for memory",
        args.memory_actors
    );
    let more = (0..args.memory_actors).map(|i| LogicalActor {
        id: format!("more-{i}"),
        ..actor(i)
    });
    activate_all(&placement, more, args.concurrency).await?;
    placement.passivate_idle(Duration::ZERO).await;
    let rss_after = rss_bytes();
    let (known, passive) = placement.counts();
    anyhow::ensure!(passive == known, "{passive} of {known} actors passivated");
    latencies.sort();

    eprintln!("bench placement: {} process starts", args.process_starts);
    let mut starts = Vec::with_capacity(args.process_starts);
    for _ in 0..args.process_starts {
        starts.push(process_start(lease.worker.clone()).await?);
    }
    starts.sort();

    eprintln!(
        "bench placement: {} checkpoints and restores",
        args.suspensions
    );
    let (mut checkpoints, mut restores, mut image_bytes) = (Vec::new(), Vec::new(), 0);
    let mut id = lease.id.clone();
    for _ in 0..args.suspensions {
        let t = Instant::now();
        if let Suspended::Stopped { why } = pool.suspend(&id).await? {
            anyhow::bail!("sandbox {id} was stopped, not checkpointed: {why}");
        }
        checkpoints.push(t.elapsed());
        image_bytes = dir_bytes(&dir.join("images").join(&id));
        pool.removed(&id).await;
        let t = Instant::now();
        let resumed = pool.resume(&id, "processes").await?;
        restores.push(t.elapsed());
        anyhow::ensure!(
            resumed.restored,
            "sandbox {id} was not restored from its image"
        );
        id = resumed.lease.id;
    }
    checkpoints.sort();
    restores.sort();
    placement.shutdown();
    pool.shutdown().await;

    let p50 = |v: &[Duration]| {
        if v.is_empty() {
            serde_json::Value::Null
        } else {
            json!(pct(v, 0.5))
        }
    };
    Ok(json!({
        "sandboxes": args.sandboxes,
        "actors": latencies.len(),
        "concurrency": args.concurrency,
        "activations_per_sec": (latencies.len() as f64 / elapsed.as_secs_f64()).round(),
        "activation_p50_ms": pct(&latencies, 0.50),
        "activation_p99_ms": pct(&latencies, 0.99),
        "activation_max_ms": ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        "bytes_per_passivated_actor": (rss_after.saturating_sub(rss_before) as f64 / args.memory_actors as f64).round(),
        "cold_start_ms": p50(&cold),
        "checkpoint_ms": p50(&checkpoints),
        "restore_p50_ms": p50(&restores),
        "checkpoint_image_bytes": image_bytes,
        "process_start_p50_ms": pct(&starts, 0.50),
        "process_start_p99_ms": pct(&starts, 0.99),
    }))
}

/// Starts a sandbox: it, and the time until its worker first answered.
async fn cold_start(
    provider: &dyn cadre_actors::sandbox::SandboxProvider,
    spec: cadre_actors::sandbox::SandboxSpec,
) -> anyhow::Result<(cadre_actors::sandbox::Sandbox, Duration)> {
    let t = Instant::now();
    let sandbox = provider.start(spec).await?;
    sandbox
        .worker()
        .stats(cadre_proto::v1::WorkerStatsRequest {})
        .await?;
    Ok((sandbox, t.elapsed()))
}

/// How long a new gVisor sandbox takes to calibrate its clock (its vDSO answers once it has).
const SANDBOX_WARMUP: Duration = Duration::from_secs(2);

/// Activates every actor (none may be active already), `concurrency` at a time; the latency
/// of each activation.
async fn activate_all(
    placement: &cadre_sandbox::Placement,
    actors: impl Iterator<Item = cadre_actors::placement::LogicalActor>,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut inflight = tokio::task::JoinSet::new();
    for a in actors {
        if inflight.len() >= concurrency
            && let Some(done) = inflight.join_next().await
        {
            latencies.push(done??);
        }
        let placement = placement.clone();
        inflight.spawn(async move {
            let t = Instant::now();
            let pinned = placement.pin(&a).await?;
            let elapsed = t.elapsed();
            anyhow::ensure!(pinned.activated, "actor {} was already active", a.id);
            anyhow::Ok(elapsed)
        });
    }
    while let Some(done) = inflight.join_next().await {
        latencies.push(done??);
    }
    Ok(latencies)
}

/// Starts `/bin/true` in a sandbox: the time until the worker reports its pid.
async fn process_start(
    mut worker: cadre_proto::v1::worker_client::WorkerClient<tonic::transport::Channel>,
) -> anyhow::Result<Duration> {
    use cadre_proto::v1::{ProcessStart, RunInput, run_input, run_output};
    let start = RunInput {
        input: Some(run_input::Input::Start(ProcessStart {
            argv: vec!["/bin/true".into()],
            ..Default::default()
        })),
    };
    let t = Instant::now();
    let mut outputs = worker
        .run(tokio_stream::iter(vec![start]))
        .await?
        .into_inner();
    let mut started = None;
    while let Some(out) = outputs.message().await? {
        match out.output {
            Some(run_output::Output::Pid(_)) => started = Some(t.elapsed()),
            Some(run_output::Output::Exit(_)) => break,
            _ => {}
        }
    }
    started.context("the worker reported no pid")
}

/// Bytes of the files in a directory.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Resident memory of this process.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// A new scratch folder for bench `what` inside `data_dir` (default: the node's data dir).
fn scratch_dir(data_dir: Option<&std::path::Path>, what: &str) -> PathBuf {
    let base = data_dir.map_or_else(crate::serve::default_data_dir, |d| d.to_path_buf());
    base.join(format!("bench-{what}-{}", std::process::id()))
}

/// The `q` quantile of sorted latencies, in ms.
fn pct(sorted: &[Duration], q: f64) -> f64 {
    ms(sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)])
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
