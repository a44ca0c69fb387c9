//! `cadre tree`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::{ActorNode, TreeRequest};
use clap::Args;
use serde_json::{Map, Value, json};

use crate::client::{ServerArgs, connect};
use crate::{Failure, Output};

#[derive(Args)]
pub struct TreeArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: TreeArgs) -> Result<(), Failure> {
    let channel = connect(&args.server).await?;
    let response = ActorsClient::new(channel)
        .tree(TreeRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("Tree failed: {}: {}", s.code(), s.message()))?;
    let root = response
        .into_inner()
        .root
        .ok_or_else(|| anyhow::anyhow!("the node returned no tree"))?;
    match args.output {
        Output::Json => println!("{}", to_json(&root)),
        Output::Text => print!("{}", render(&root)),
    }
    Ok(())
}

/// `{"path","kind","status","restarts","pid"?,"strategy"?,"placement"?,"children"}`
pub fn to_json(node: &ActorNode) -> Value {
    let mut obj = Map::new();
    obj.insert("path".into(), json!(node.path));
    obj.insert("kind".into(), json!(node.kind));
    obj.insert("status".into(), json!(node.status));
    obj.insert("restarts".into(), json!(node.restarts));
    if let Some(pid) = node.pid {
        obj.insert("pid".into(), json!(pid));
    }
    if let Some(s) = &node.strategy {
        obj.insert("strategy".into(), json!(s));
    }
    if let Some(p) = &node.placement {
        obj.insert("placement".into(), json!(p));
    }
    obj.insert(
        "children".into(),
        Value::Array(node.children.iter().map(to_json).collect()),
    );
    Value::Object(obj)
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

fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}
