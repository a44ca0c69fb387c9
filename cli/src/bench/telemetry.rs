//! `cadre bench telemetry`: what metrics and tracing cost an exec, measured side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::Args;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::{Value, json};

use crate::progress::Progress;
use crate::{Failure, Output};

#[derive(Args)]
pub struct TelemetryBenchArgs {
    /// Execs per round.
    #[arg(long, default_value_t = 20_000)]
    execs: usize,
    /// Concurrent conversations, each running one exec at a time.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// Rounds of each setting (off, metrics, metrics and tracing), alternating; medians are
    /// reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

/// The settings compared, as `bench exec` flags.
const SETTINGS: [(&str, &[&str]); 3] = [
    ("off", &[]),
    ("metrics", &["--metrics"]),
    ("metrics_and_tracing", &["--metrics", "--otlp-endpoint"]),
];

/// An OTLP trace receiver that counts the spans it is sent.
#[derive(Default)]
struct SpanCounter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for SpanCounter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub async fn run(args: TelemetryBenchArgs) -> Result<(), Failure> {
    if args.execs == 0 || args.conversations == 0 || args.rounds == 0 {
        return Err(Failure::Usage(
            "--execs, --conversations and --rounds must be at least 1".into(),
        ));
    }
    let spans = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the OTLP receiver")?;
    let endpoint = format!(
        "http://{}",
        listener
            .local_addr()
            .context("the OTLP receiver's address")?
    );
    let receiver = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(SpanCounter(spans.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut results: Vec<Vec<Value>> = vec![Vec::new(); SETTINGS.len()];
    let runs = (args.rounds * SETTINGS.len()) as u64;
    let mut progress = Progress::new("bench telemetry", "runs", Some(runs));
    for round in 1..=args.rounds {
        for (i, (name, flags)) in SETTINGS.iter().enumerate() {
            progress.phase(format!(
                "bench telemetry: round {round}/{}: {name}",
                args.rounds
            ));
            let before = spans.load(Ordering::Relaxed);
            let mut report = exec_round(&args, flags, &endpoint).await?;
            report["spans_received"] = json!(spans.load(Ordering::Relaxed) - before);
            results[i].push(report);
            progress.set(((round - 1) * SETTINGS.len() + i + 1) as u64);
        }
    }
    progress.finish();
    receiver.abort();
    let median = |i: usize, field: &str| -> f64 {
        let mut values: Vec<f64> = results[i]
            .iter()
            .filter_map(|r| r[field].as_f64())
            .collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut report = json!({
        "execs": args.execs,
        "conversations": args.conversations,
        "rounds": args.rounds,
    });
    let base = (
        median(0, "execs_per_sec"),
        median(0, "exec_p50_ms"),
        median(0, "exec_p99_ms"),
    );
    for (i, (name, _)) in SETTINGS.iter().enumerate() {
        let (rate, p50, p99) = (
            median(i, "execs_per_sec"),
            median(i, "exec_p50_ms"),
            median(i, "exec_p99_ms"),
        );
        report[*name] = json!({
            "execs_per_sec": rate,
            "exec_p50_ms": p50,
            "exec_p99_ms": p99,
            "throughput_loss_pct": round1((1.0 - rate / base.0) * 100.0),
            "p50_overhead_pct": round1((p50 / base.1 - 1.0) * 100.0),
            "p99_overhead_pct": round1((p99 / base.2 - 1.0) * 100.0),
            "spans_received": results[i].iter().filter_map(|r| r["spans_received"].as_u64()).min(),
            "rounds": results[i],
        });
    }
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => {
            println!(
                "{:<22} {:>10} {:>9} {:>9} {:>16} {:>9} {:>9}",
                "setting", "execs/s", "p50 ms", "p99 ms", "throughput loss", "p50 +", "p99 +"
            );
            for (name, _) in SETTINGS {
                let r = &report[name];
                println!(
                    "{:<22} {:>10.0} {:>9.3} {:>9.3} {:>15.1}% {:>8.1}% {:>8.1}%",
                    name,
                    r["execs_per_sec"].as_f64().unwrap_or_default(),
                    r["exec_p50_ms"].as_f64().unwrap_or_default(),
                    r["exec_p99_ms"].as_f64().unwrap_or_default(),
                    r["throughput_loss_pct"].as_f64().unwrap_or_default(),
                    r["p50_overhead_pct"].as_f64().unwrap_or_default(),
                    r["p99_overhead_pct"].as_f64().unwrap_or_default(),
                );
            }
        }
    }
    Ok(())
}

/// One `cadre bench exec` in a process of its own (each setting is process-wide).
async fn exec_round(
    args: &TelemetryBenchArgs,
    flags: &[&str],
    endpoint: &str,
) -> anyhow::Result<Value> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["bench", "exec", "-o", "json"])
        .args(["--execs", &args.execs.to_string()])
        .args(["--conversations", &args.conversations.to_string()])
        .args(flags)
        // The exporter's queue holds a whole round, so that every span is sent.
        .env("OTEL_BSP_MAX_QUEUE_SIZE", (args.execs * 2).to_string())
        .kill_on_drop(true);
    if flags.contains(&"--otlp-endpoint") {
        command.arg(endpoint);
    }
    let out = command.output().await.context("run `cadre bench exec`")?;
    anyhow::ensure!(
        out.status.success(),
        "`cadre bench exec {}` failed: {}",
        flags.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("read `cadre bench exec -o json`")
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
