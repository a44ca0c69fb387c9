//! `cadre actors …`.

use std::path::PathBuf;

use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::{ActorNode, ActorRequest, ListActorsRequest, LogsRequest, SpawnRequest};
use clap::Subcommand;
use serde_json::json;

use crate::client::{ServerArgs, connect};
use crate::{Failure, Output};
use cadre_proto::json::{actor_node, rfc3339};

#[derive(Subcommand)]
pub enum ActorsCommand {
    /// Every actor, one per line: path, kind, status, restarts, pid. In a cluster, every
    /// member's, each path qualified by its node (`NODE:PATH`, as the other commands take it).
    Ls {
        /// Only this member's actors (in a cluster).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Add a child to a running supervisor. The file holds one child entry in cadre.yaml's
    /// schema, e.g. `id: web` and `process: { command: [python3, -m, http.server] }`.
    Spawn {
        /// The child spec (YAML).
        #[arg(short = 'f', long = "file", value_name = "SPEC.yaml")]
        file: PathBuf,
        /// The supervisor to add it to.
        #[arg(long, default_value = "root")]
        parent: String,
        /// The member to start it on (in a cluster; default: the node called). It is recorded
        /// there and started again when that node restarts.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One actor in detail: kind, status, restarts, pid, placement, its supervision (restart,
    /// shutdown, significant), how and when its last instance ended, and its children.
    Get {
        /// The actor's path (`root/tools/time`); in a cluster `NODE:PATH` for another member's.
        #[arg(value_name = "[NODE:]PATH")]
        path: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// An actor's output: a `process` child's stdout and stderr, an `mcp` server's stderr (the
    /// node keeps the last 1000 lines of each actor).
    Logs {
        /// The actor's path; in a cluster `NODE:PATH` for another member's.
        #[arg(value_name = "[NODE:]PATH")]
        path: String,
        /// Keep streaming new lines until interrupted (ends when the node stops).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines kept.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// Output format (JSON lines with -o json).
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Terminate an actor per its shutdown spec. A configured child's spec stays (restart
    /// brings it back); a spawned one is removed for good.
    Stop {
        /// The actor's path; in a cluster `NODE:PATH` for another member's.
        #[arg(value_name = "[NODE:]PATH")]
        path: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Terminate an actor if it runs, then start it again.
    Restart {
        /// The actor's path; in a cluster `NODE:PATH` for another member's.
        #[arg(value_name = "[NODE:]PATH")]
        path: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn failure(call: &str, s: tonic::Status, file: Option<&PathBuf>) -> Failure {
    match s.code() {
        tonic::Code::InvalidArgument => {
            // Spec errors come back as `spec_yaml:LINE:COL: …`; name the user's file.
            let message = match file {
                Some(f) => s
                    .message()
                    .replacen("spec_yaml", &f.display().to_string(), 1),
                None => s.message().to_string(),
            };
            Failure::Usage(message)
        }
        _ => crate::conversations::failure(call, s),
    }
}

fn print(node: &ActorNode, output: Output) {
    match output {
        Output::Text => println!("{}", row(node)),
        _ => crate::emit(output, &actor_node(node)),
    }
}

/// `cadre actors get`, like `kubectl describe`: one field a line.
fn describe(n: &ActorNode) -> String {
    let time = |ms: i64| rfc3339(ms * 1000);
    let mut fields = vec![("Path", n.path.clone())];
    if !n.node.is_empty() {
        fields.push(("Node", n.node.clone()));
    }
    fields.extend([
        ("Kind", n.kind.clone()),
        ("Status", n.status.clone()),
        ("Restarts", n.restarts.to_string()),
    ]);
    if let Some(pid) = n.pid {
        fields.push(("Pid", pid.to_string()));
    }
    if let Some(p) = &n.placement {
        fields.push(("Placement", p.clone()));
    }
    if let Some(t) = n.started_at_unix_ms {
        fields.push(("Started", time(t)));
    }
    if let Some(s) = &n.strategy {
        fields.push(("Strategy", s.clone()));
    }
    if !n.restart.is_empty() {
        fields.push(("Restart", n.restart.clone()));
        fields.push(("Shutdown", n.shutdown.clone()));
        fields.push(("Significant", n.significant.to_string()));
    }
    if let (Some(reason), Some(at)) = (&n.last_exit_reason, n.last_exit_unix_ms) {
        fields.push(("Last exit", format!("{reason} at {}", time(at))));
    }
    let children: Vec<&str> = n
        .children
        .iter()
        .map(|c| c.path.rsplit('/').next().unwrap_or(&c.path))
        .collect();
    fields.push((
        "Children",
        if children.is_empty() {
            "none".into()
        } else {
            children.join(", ")
        },
    ));
    fields
        .iter()
        .map(|(k, v)| format!("{:<13}{v}\n", format!("{k}:")))
        .collect()
}

/// `NODE:PATH` in a cluster, `PATH` outside one: what the commands take.
fn qualified(n: &ActorNode) -> String {
    match n.node.as_str() {
        "" => n.path.clone(),
        node => format!("{node}:{}", n.path),
    }
}

fn row(n: &ActorNode) -> String {
    format!(
        "{:<40}  {:<10}  {:<10}  {:>8}  {}",
        qualified(n),
        n.kind,
        n.status,
        n.restarts,
        n.pid.map(|p| p.to_string()).unwrap_or_default()
    )
}

pub async fn run(command: ActorsCommand) -> Result<(), Failure> {
    match command {
        ActorsCommand::Ls {
            node,
            output,
            server,
        } => {
            let list = ActorsClient::new(connect(&server).await?)
                .list(ListActorsRequest {
                    node: node.unwrap_or_default(),
                })
                .await
                .map_err(|s| failure("List", s, None))?
                .into_inner();
            if let Output::Text = output {
                println!(
                    "{:<40}  {:<10}  {:<10}  {:>8}  PID",
                    "PATH", "KIND", "STATUS", "RESTARTS"
                );
            }
            for a in &list.actors {
                print(a, output);
            }
        }
        ActorsCommand::Spawn {
            file,
            parent,
            node,
            output,
            server,
        } => {
            let spec_yaml = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
            let node = ActorsClient::new(connect(&server).await?)
                .spawn(SpawnRequest {
                    parent,
                    spec_yaml,
                    spec: None,
                    node: node.unwrap_or_default(),
                })
                .await
                .map_err(|s| failure("Spawn", s, Some(&file)))?
                .into_inner();
            print(&node, output);
        }
        ActorsCommand::Get {
            path,
            output,
            server,
        } => {
            let node = ActorsClient::new(connect(&server).await?)
                .get(ActorRequest { path })
                .await
                .map_err(|s| failure("Get", s, None))?
                .into_inner();
            match output {
                Output::Text => print!("{}", describe(&node)),
                _ => print(&node, output),
            }
        }
        ActorsCommand::Logs {
            path,
            follow,
            tail,
            output,
            server,
        } => {
            let display = server.server.clone();
            let mut lines = ActorsClient::new(connect(&server).await?)
                .logs(LogsRequest { path, tail, follow })
                .await
                .map_err(|s| failure("Logs", s, None))?
                .into_inner();
            while let Some(line) = lines
                .message()
                .await
                .map_err(|s| failure("Logs", s, None))?
            {
                use std::io::Write;
                match output {
                    Output::Text => println!("{}", line.line),
                    _ => crate::emit(
                        output,
                        &json!({
                            "time": rfc3339(line.time_unix_micros),
                            "path": line.path,
                            "stream": line.stream,
                            "line": line.line,
                        }),
                    ),
                }
                let _ = std::io::stdout().flush();
            }
            if follow {
                eprintln!("cadre: the node at {display} stopped; the logs ended");
            }
        }
        ActorsCommand::Stop {
            path,
            output,
            server,
        } => {
            let node = ActorsClient::new(connect(&server).await?)
                .stop(ActorRequest { path })
                .await
                .map_err(|s| failure("Stop", s, None))?
                .into_inner();
            print(&node, output);
        }
        ActorsCommand::Restart {
            path,
            output,
            server,
        } => {
            let node = ActorsClient::new(connect(&server).await?)
                .restart(ActorRequest { path })
                .await
                .map_err(|s| failure("Restart", s, None))?
                .into_inner();
            print(&node, output);
        }
    }
    Ok(())
}
