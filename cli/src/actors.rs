//! `cadre actors …`.

use std::path::PathBuf;

use cadre_proto::v1::actors_client::ActorsClient;
use cadre_proto::v1::{ActorNode, ActorRequest, ListActorsRequest, SpawnRequest};
use clap::Subcommand;

use crate::client::{ServerArgs, connect};
use crate::tree::to_json;
use crate::{Failure, Output};

#[derive(Subcommand)]
pub enum ActorsCommand {
    /// Every actor, one per line: path, kind, status, restarts, pid.
    Ls {
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
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Terminate an actor per its shutdown spec (its spec stays; restart brings it back).
    Stop {
        path: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Terminate an actor if it runs, then start it again.
    Restart {
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
        code => Failure::Runtime(anyhow::anyhow!("{call} failed: {code:?}: {}", s.message())),
    }
}

fn print(node: &ActorNode, output: Output) {
    match output {
        Output::Json => println!("{}", to_json(node)),
        Output::Text => println!("{}", row(node)),
    }
}

fn row(n: &ActorNode) -> String {
    format!(
        "{:<40}  {:<10}  {:<10}  {:>8}  {}",
        n.path,
        n.kind,
        n.status,
        n.restarts,
        n.pid.map(|p| p.to_string()).unwrap_or_default()
    )
}

pub async fn run(command: ActorsCommand) -> Result<(), Failure> {
    match command {
        ActorsCommand::Ls { output, server } => {
            let list = ActorsClient::new(connect(&server).await?)
                .list(ListActorsRequest {})
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
            output,
            server,
        } => {
            let spec_yaml = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
            let node = ActorsClient::new(connect(&server).await?)
                .spawn(SpawnRequest { parent, spec_yaml })
                .await
                .map_err(|s| failure("Spawn", s, Some(&file)))?
                .into_inner();
            print(&node, output);
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
