//! `cadre bench cluster`: what a cluster costs.
//!
//! A controller node runs in this process, in cluster `bench`. Round one appends through its
//! own log (the controller) and then through a `RemoteLog` to it, as a node without the log
//! does: the same writers, events and disk, so the difference is the gRPC hop. Round two
//! starts two `cadre serve` processes that join it (`store.cluster`) and times echo execs sent
//! to the controller node alone, then spread over the three. Round three starts a model agent
//! (whose model never answers) on a member, SIGKILLs the member and times until the log gives
//! the exec to a live node, `--takeovers` times, restarting the member in between.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::Context;
use cadre_actors::config::Config;
use cadre_actors::event_log::{AppendRequest, EventLog};
use cadre_cluster::peers::Peers;
use cadre_cluster::remote_log::RemoteLog;
use cadre_proto::v1::ExecRequest;
use cadre_proto::v1::conversations_client::ConversationsClient;
use clap::Args;
use serde_json::{Value, json};

use super::agent::{Serve, serve_model};
use super::{echo_execs, ms, pct, sample_event, scratch_dir};
use crate::{Failure, Output};

#[derive(Args)]
pub struct ClusterBenchArgs {
    /// Appends in each append round (on the controller node, then from another node).
    #[arg(long, default_value_t = 20_000)]
    appends: usize,
    /// Concurrent writers, each appending one event at a time and waiting for its ack.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Execs in each exec round (one node, then three).
    #[arg(long, default_value_t = 6_000)]
    execs: usize,
    /// Concurrent conversations, each running one exec at a time.
    #[arg(long, default_value_t = 48)]
    conversations: usize,
    /// Members SIGKILLed with an exec running, one at a time (0: no takeover round).
    #[arg(long, default_value_t = 20)]
    takeovers: usize,
    /// Where to put scratch data dirs [default: the node's default data dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(args: ClusterBenchArgs) -> Result<(), Failure> {
    if args.appends == 0 || args.writers == 0 || args.execs == 0 || args.conversations == 0 {
        return Err(Failure::Usage(
            "--appends, --writers, --execs and --conversations must be at least 1".into(),
        ));
    }
    let scratch = scratch_dir(args.data_dir.as_deref(), "cluster");
    let result = rounds(&args, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    match args.output {
        Output::Json | Output::Yaml => crate::emit(args.output, &report),
        Output::Text => {
            let f = |k: &str| report[k].as_f64().unwrap_or_default();
            println!(
                "append on the controller node: p50 {:.3} ms, p99 {:.3} ms, {:.0}/s",
                f("append_local_p50_ms"),
                f("append_local_p99_ms"),
                f("appends_local_per_sec")
            );
            println!(
                "append from another node:      p50 {:.3} ms, p99 {:.3} ms, {:.0}/s",
                f("append_remote_p50_ms"),
                f("append_remote_p99_ms"),
                f("appends_remote_per_sec")
            );
            println!(
                "echo execs: one node {:.0}/s (p50 {:.3} ms), three nodes {:.0}/s (p50 {:.3} ms)",
                f("execs_one_node_per_sec"),
                f("exec_one_node_p50_ms"),
                f("execs_three_nodes_per_sec"),
                f("exec_three_nodes_p50_ms")
            );
            if report["takeovers"] != 0 {
                println!(
                    "takeover (SIGKILL to the exec given to a live node): p50 {:.0} ms, p99 \
                     {:.0} ms over {} trials (failure timeout {} ms)",
                    f("takeover_p50_ms"),
                    f("takeover_p99_ms"),
                    report["takeovers"],
                    report["failure_timeout_ms"]
                );
            }
        }
    }
    Ok(())
}

async fn rounds(args: &ClusterBenchArgs, dir: &Path) -> anyhow::Result<Value> {
    std::fs::create_dir_all(dir)?;
    let cookie_file = dir.join("cookie");
    std::fs::write(&cookie_file, "a-cookie-for-this-bench-run\n")?;
    let ports = [free_port()?, free_port()?, free_port()?];
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    // A model that never answers: an exec of agent `wait` runs until its node dies.
    let model = serve_model(
        Arc::new(AtomicUsize::new(1)),
        Arc::new(AtomicBool::new(true)),
    )
    .await?;
    let agent = format!(
        "models:\n  - id: never\n    openai: {{ base_url: \"http://{model}/v1\", model: never }}\n\
         supervisor:\n  children:\n    - id: wait\n      agent: {{ model: never }}\n"
    );
    let cluster = |store: &str| {
        format!(
            "version: v1\nstore: {{{store}: {{}}}}\ncluster:\n  name: bench\n  cookie_file: {}\n{agent}",
            cookie_file.display()
        )
    };
    let mut config =
        Config::parse("cadre.yaml", &cluster("embedded")).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(c) = config.cluster.as_mut() {
        c.node = "bench-0".into();
        c.listen = format!("127.0.0.1:{}", ports[0]).parse()?;
        c.seeds = seeds.clone();
    }
    let node = cadre_cluster::Node::start(cadre_cluster::NodeOptions {
        config,
        listen: "127.0.0.1:0".parse().expect("loopback"),
        data_dir: dir.join("node-0"),
    })
    .await
    .context("start the controller node")?;
    let membership = node
        .membership()
        .cloned()
        .context("the node is in a cluster")?;
    eprintln!(
        "bench cluster: {} appends by {} writers on the controller node, then from another",
        args.appends, args.writers
    );
    let local = append_round(node.event_log.clone(), args, "local").await?;
    let cookie = std::fs::read_to_string(&cookie_file)?.trim().to_string();
    let peers = Peers::new(cookie, None, membership.failure_timeout());
    let remote: Arc<dyn EventLog> = Arc::new(RemoteLog::new(&membership, peers));
    let remote = append_round(remote, args, "remote").await?;

    let member_config = dir.join("member.yaml");
    std::fs::write(&member_config, cluster("cluster"))?;
    let start_member = |i: usize| -> anyhow::Result<Serve> {
        let name = format!("bench-{i}");
        let listen = format!("127.0.0.1:{}", ports[i]);
        let mut flags = vec!["--node", &name, "--cluster-listen", &listen];
        for seed in &seeds {
            flags.extend(["--seed", seed]);
        }
        Serve::start_with(&member_config, &dir.join(&name), &flags)
    };
    let mut members = vec![start_member(1)?, start_member(2)?];
    all_up(&membership).await?;
    eprintln!(
        "bench cluster: {} echo execs over {} conversations on one node, then on three",
        args.execs, args.conversations
    );
    let one = exec_round(&[node.addr.to_string()], args, "one").await?;
    let mut all = vec![node.addr.to_string()];
    all.extend(members.iter().map(|m| m.addr.clone()));
    let three = exec_round(&all, args, "three").await?;
    if args.takeovers > 0 {
        eprintln!(
            "bench cluster: {} takeovers (failure timeout {} ms)",
            args.takeovers,
            membership.failure_timeout().as_millis()
        );
    }
    let mut takeovers = Vec::with_capacity(args.takeovers);
    for t in 0..args.takeovers {
        let i = t % members.len();
        let victim = format!("bench-{}", i + 1);
        let conversation = format!("takeover-{t}");
        let mut client =
            ConversationsClient::connect(format!("http://{}", members[i].addr)).await?;
        let mut stream = client
            .exec(ExecRequest {
                conversation_id: conversation.clone(),
                agent_id: "wait".into(),
                input: "wait for a model that never answers".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        // Its input and RUNNING are committed: the exec runs on the victim.
        stream.message().await?;
        stream.message().await?;
        members[i].kill();
        let killed = Instant::now();
        loop {
            let open = node.event_log.open_execs().await?;
            let moved = open
                .iter()
                .any(|o| o.conversation_id == conversation && o.node != victim);
            if moved {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "the exec of {victim} was not taken over"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        takeovers.push(killed.elapsed());
        drop(stream);
        members[i] = start_member(i + 1)?;
        all_up(&membership).await?;
    }
    takeovers.sort();
    for mut m in members {
        m.kill();
    }
    node.run_until(async {}).await;
    Ok(json!({
        "writers": args.writers,
        "appends": args.appends,
        "append_local_p50_ms": pct(&local.0, 0.50),
        "append_local_p99_ms": pct(&local.0, 0.99),
        "appends_local_per_sec": local.1.round(),
        "append_remote_p50_ms": pct(&remote.0, 0.50),
        "append_remote_p99_ms": pct(&remote.0, 0.99),
        "appends_remote_per_sec": remote.1.round(),
        "execs": args.execs,
        "conversations": args.conversations,
        "execs_one_node_per_sec": one.1.round(),
        "exec_one_node_p50_ms": pct(&one.0, 0.50),
        "exec_one_node_p99_ms": pct(&one.0, 0.99),
        "execs_three_nodes_per_sec": three.1.round(),
        "exec_three_nodes_p50_ms": pct(&three.0, 0.50),
        "exec_three_nodes_p99_ms": pct(&three.0, 0.99),
        "exec_three_nodes_max_ms": ms(*three.0.last().unwrap_or(&Duration::ZERO)),
        "failure_timeout_ms": membership.failure_timeout().as_millis() as u64,
        "takeovers": takeovers.len(),
        // Null without a takeover round (`--takeovers 0`).
        "takeover_p50_ms": (!takeovers.is_empty()).then(|| pct(&takeovers, 0.50)),
        "takeover_p99_ms": (!takeovers.is_empty()).then(|| pct(&takeovers, 0.99)),
        "takeover_max_ms": takeovers.last().map(|t| ms(*t)),
    }))
}

/// Waits until the three nodes are up.
async fn all_up(membership: &cadre_cluster::membership::Membership) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while membership
        .nodes()
        .iter()
        .filter(|n| n.state == "up")
        .count()
        < 3
    {
        anyhow::ensure!(Instant::now() < deadline, "the members did not join");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `args.appends` single-event appends by `args.writers` writers, each to a conversation of
/// its own: the sorted latencies and appends per second.
async fn append_round(
    log: Arc<dyn EventLog>,
    args: &ClusterBenchArgs,
    round: &str,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let per = args.appends.div_ceil(args.writers);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let log = log.clone();
        let count = per.min(args.appends.saturating_sub(w * per));
        let conversation = format!("append-{round}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                log.append(AppendRequest {
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
    let mut latencies = Vec::with_capacity(args.appends);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    Ok((latencies, rate))
}

/// Echo execs over `args.conversations` conversations, conversation c sent to node c mod N.
async fn exec_round(
    nodes: &[String],
    args: &ClusterBenchArgs,
    round: &str,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let mut channels = Vec::new();
    for addr in nodes {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    echo_execs(
        &channels,
        args.execs,
        args.conversations,
        &format!("exec-{round}"),
    )
    .await
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
