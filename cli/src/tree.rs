//! `cadre tree`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::cluster_client::ClusterClient;
use cadre_proto::v1::{
    ActorNode, NodeTree, SandboxesRequest, TreeEvent, TreeRequest, WatchTreeRequest,
};
use clap::Args;
use serde_json::json;

use crate::client::{Api, ServerArgs, connect};
use crate::conversations::failure;
use crate::{Failure, Output};

#[derive(Args)]
pub struct TreeArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    /// Keep watching: after the tree (text only), print every lifecycle change as it happens
    /// (JSON lines with -o json) until interrupted.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Only this member's trees (in a cluster; by default every member's, the node called
    /// first, and a member that is down with the last trees known of it).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: TreeArgs) -> Result<(), Failure> {
    let channel = connect(&args.server).await?;
    let node = args.node.clone().unwrap_or_default();
    let mut client = ActorsClient::new(channel.clone());
    // Subscribe before reading the tree so that no change falls between the two.
    let mut changes = if args.watch {
        Some(
            client
                .watch_tree(WatchTreeRequest { node: node.clone() })
                .await
                .map_err(|s| failure("WatchTree", s))?
                .into_inner(),
        )
    } else {
        None
    };
    let response = client
        .tree(TreeRequest { node })
        .await
        .map_err(|s| failure("Tree", s))?;
    let trees = response.into_inner();
    // Outside a cluster the one entry is unnamed.
    let clustered = trees.nodes.iter().any(|t| !t.node.is_empty());
    match (args.output, &changes) {
        (Output::Json | Output::Yaml, None) if clustered => crate::emit(
            args.output,
            &json!({"nodes": trees.nodes.iter().map(cadre_proto::json::node_trees).collect::<Vec<_>>()}),
        ),
        (Output::Json | Output::Yaml, None) => {
            let (Some(root), Some(system)) = (&trees.root, &trees.system) else {
                return Err(anyhow::anyhow!("the node returned no tree").into());
            };
            crate::emit(
                args.output,
                &json!({"root": cadre_proto::json::actor_node(root), "system": cadre_proto::json::actor_node(system)}),
            )
        }
        (Output::Json | Output::Yaml, Some(_)) => {}
        (Output::Text, _) => {
            if let Some(root) = &trees.root
                && let Some(warning) = not_isolated(channel, root).await
            {
                println!("{warning}");
            }
            for t in &trees.nodes {
                if clustered {
                    println!("{}", node_heading(t));
                }
                for tree in [&t.root, &t.system].into_iter().flatten() {
                    print!("{}", render(tree));
                }
            }
        }
    }
    if let Some(changes) = &mut changes {
        use std::io::Write;
        while let Some(change) = changes
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("watch ended: {:?}: {}", s.code(), s.message()))?
        {
            match args.output {
                Output::Json | Output::Yaml => {
                    crate::emit(args.output, &cadre_proto::json::tree_event(&change))
                }
                Output::Text => println!("{}", event_line(&change)),
            }
            let _ = std::io::stdout().flush();
        }
        // A watch ends by itself only when the node stops.
        eprintln!(
            "cadre: the node at {} stopped; the watch ended",
            args.server.server
        );
    }
    Ok(())
}

/// `NODE (STATE)` above a member's trees, and why they are not current.
fn node_heading(t: &NodeTree) -> String {
    let mut heading = format!("{} ({})", t.node, t.state);
    if !t.error.is_empty() {
        heading.push_str(&format!(": {}", t.error));
        if t.read_at_unix_ms > 0 {
            heading.push_str(&format!(
                ", read at {}",
                cadre_proto::json::rfc3339(t.read_at_unix_ms * 1000)
            ));
        }
    }
    heading
}

fn event_line(e: &TreeEvent) -> String {
    let time = cadre_proto::json::rfc3339(e.time_unix_micros);
    if e.kind == "node" {
        return format!("{time}  node {}  {}", e.node, e.change);
    }
    let path = match e.node.as_str() {
        "" => e.path.clone(),
        node => format!("{node}:{}", e.path),
    };
    let mut line = format!("{time}  {path}  {}", e.change);
    if !e.reason.is_empty() {
        line.push_str(&format!("  reason={}", e.reason));
    }
    if let Some(pid) = e.pid {
        line.push_str(&format!("  pid={pid}"));
    }
    if e.change == "started" && e.restarts > 0 {
        line.push_str(&format!("  restarts={}", e.restarts));
    }
    line
}

/// A plain warning when the tree has placed actors and the node's sandboxes isolate nothing.
async fn not_isolated(channel: Api, root: &ActorNode) -> Option<String> {
    fn placed(n: &ActorNode) -> bool {
        n.placement.is_some() || n.children.iter().any(placed)
    }
    if !placed(root) {
        return None;
    }
    let list = ClusterClient::new(channel)
        .sandboxes(SandboxesRequest {})
        .await
        .ok()?
        .into_inner();
    (!list.isolated).then(|| {
        format!(
            "NOT ISOLATED: sandbox provider `{}`: placed actors run directly on the host",
            list.provider
        )
    })
}

/// A pstree-like drawing: name, kind (and strategy), status, restarts, uptime, pid, placement.
pub fn render(root: &ActorNode) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut out = String::new();
    line(&mut out, root, "", "", now);
    out
}

fn line(out: &mut String, node: &ActorNode, lead: &str, child_lead: &str, now: i64) {
    let name = node.path.rsplit('/').next().unwrap_or(&node.path);
    let kind = match &node.strategy {
        Some(s) => format!("{} {s}", node.kind),
        None => node.kind.clone(),
    };
    let mut fields = vec![
        format!("{lead}{name}"),
        format!("[{kind}]"),
        node.status.clone(),
        format!("restarts={}", node.restarts),
    ];
    if let Some(t) = node.started_at_unix_ms {
        fields.push(format!(
            "up={}",
            uptime(Duration::from_millis((now - t).max(0) as u64))
        ));
    }
    if let Some(pid) = node.pid {
        fields.push(format!("pid={pid}"));
    }
    if let Some(p) = &node.placement {
        fields.push(format!("placement={p}"));
    }
    out.push_str(&fields.join("  "));
    out.push('\n');
    let n = node.children.len();
    for (i, child) in node.children.iter().enumerate() {
        let last = i + 1 == n;
        let branch = if last { "└─ " } else { "├─ " };
        let cont = if last { "   " } else { "│  " };
        line(
            out,
            child,
            &format!("{child_lead}{branch}"),
            &format!("{child_lead}{cont}"),
            now,
        );
    }
}

pub fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}
