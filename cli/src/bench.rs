//! `cadre bench …`: measurements that print one JSON object with `-o json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cadre_actors::controller::{AppendRequest, Controller, HistoryLimits, NewEvent};
use cadre_actors::store::Store;
use cadre_cluster::store::SqliteStore;
use cadre_proto::v1::{Event, OutputEmitted, event};
use clap::{Args, Subcommand};
use prost::Message;
use serde_json::json;

use crate::{Failure, Output};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable append throughput and latency of the event log (group commit through the
    /// controller), against a naive baseline that commits one transaction per event.
    Eventlog(EventlogArgs),
    /// Exec round trips with the `echo` agent against a node started in this process (real
    /// gRPC over loopback, durable log in a scratch data dir), from concurrent conversations.
    Exec(ExecBenchArgs),
}

#[derive(Args)]
pub struct ExecBenchArgs {
    /// Execs in all.
    #[arg(long, default_value_t = 20_000)]
    execs: usize,
    /// Concurrent conversations, each running one exec at a time.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// Where the scratch node keeps its data [default: the node's default data dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
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
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(command: BenchCommand) -> Result<(), Failure> {
    let args = match command {
        BenchCommand::Eventlog(args) => args,
        BenchCommand::Exec(args) => return exec(args).await,
    };
    if args.events == 0 || args.writers == 0 {
        return Err(Failure::Usage(
            "--events and --writers must be at least 1".into(),
        ));
    }
    let base = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::serve::default_data_dir);
    let scratch = base.join(format!("bench-eventlog-{}", std::process::id()));
    let result = eventlog(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json => println!("{report}"),
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

fn sample_event(writer: usize, i: usize) -> NewEvent {
    NewEvent {
        exec_id: format!("exec-{writer}"),
        kind: event::Kind::OutputEmitted(OutputEmitted {
            text: format!("writer {writer} event {i}: {}", "x".repeat(64)),
        }),
    }
}

async fn eventlog(args: &EventlogArgs, dir: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let (store, log) = cadre_cluster::store::open_embedded(dir).context("open a scratch store")?;
    let store = Arc::new(store);
    let controller = Controller::with_log(
        store.clone(),
        Arc::new(log),
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
        "bench eventlog: {} events, {} writers, in {}",
        args.events,
        args.writers,
        dir.display()
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
    let pct =
        |q: f64| ms(latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]);
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
        "append_p50_ms": pct(0.50),
        "append_p99_ms": pct(0.99),
        "append_max_ms": ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        "baseline_events": args.baseline_events,
        "baseline_events_per_sec": baseline.round(),
        "speedup": (events_per_sec / baseline * 10.0).round() / 10.0,
        "data_dir": dir.display().to_string(),
    }))
}

/// How a naive log writes: every event its own durable transaction, writers taking turns.
async fn baseline(store: Arc<SqliteStore>, writers: usize, events: usize) -> anyhow::Result<f64> {
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
    if args.execs == 0 || args.conversations == 0 {
        return Err(Failure::Usage(
            "--execs and --conversations must be at least 1".into(),
        ));
    }
    let base = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::serve::default_data_dir);
    let scratch = base.join(format!("bench-exec-{}", std::process::id()));
    let result = exec_rounds(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json => println!("{report}"),
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
    use cadre_proto::v1::ExecRequest;
    use cadre_proto::v1::conversations_client::ConversationsClient;

    let node = cadre_cluster::Node::start(cadre_cluster::NodeOptions {
        config: cadre_actors::config::Config::default(),
        extra_tokens: Vec::new(),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        data_dir: dir.to_path_buf(),
    })
    .await
    .context("start a scratch node")?;
    let url = format!("http://{}", node.addr);
    eprintln!(
        "bench exec: {} execs over {} conversations against {url}",
        args.execs, args.conversations
    );
    let per = args.execs.div_ceil(args.conversations);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.conversations {
        let url = url.clone();
        let count = per.min(args.execs.saturating_sub(c * per));
        tasks.push(tokio::spawn(async move {
            let mut client = ConversationsClient::connect(url).await?;
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                let mut stream = client
                    .exec(ExecRequest {
                        conversation_id: format!("bench-{c}"),
                        agent_id: "echo".into(),
                        input: format!("message {i}"),
                        last_seq: 0,
                        resume: false,
                    })
                    .await?
                    .into_inner();
                while stream.message().await?.is_some() {}
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.execs);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    node.run_until(async {}).await;
    latencies.sort();
    let pct =
        |q: f64| ms(latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]);
    Ok(json!({
        "execs": latencies.len(),
        "conversations": args.conversations,
        "execs_per_sec": (latencies.len() as f64 / elapsed.as_secs_f64()).round(),
        "exec_p50_ms": pct(0.50),
        "exec_p99_ms": pct(0.99),
        "exec_max_ms": ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        "data_dir": dir.display().to_string(),
    }))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
