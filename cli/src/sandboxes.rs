//! `cadre sandboxes …`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadre_proto::v1::SandboxesRequest;
use cadre_proto::v1::cluster_client::ClusterClient;
use clap::Subcommand;

use crate::client::{ServerArgs, connect};
use crate::tree::uptime;
use crate::{Failure, Output};

#[derive(Subcommand)]
pub enum SandboxesCommand {
    /// The node's sandboxes: id, state (warm, leased, suspended, stopped, or ended with how it
    /// ended: `killed: memory limit 512 MiB`), tenant, pid, the logical actors placed in it of
    /// its slots, age; the provider and whether it isolates anything.
    Ls {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(command: SandboxesCommand) -> Result<(), Failure> {
    let SandboxesCommand::Ls { output, server } = command;
    let list = ClusterClient::new(connect(&server).await?)
        .sandboxes(SandboxesRequest {})
        .await
        .map_err(|s| crate::conversations::failure("Sandboxes", s))?
        .into_inner();
    match output {
        Output::Json | Output::Yaml => {
            for s in &list.sandboxes {
                crate::emit(output, &cadre_proto::json::sandbox(&list, s));
            }
        }
        Output::Text => {
            let isolation = if list.isolated {
                "isolated"
            } else {
                "NOT ISOLATED: sandboxed work runs directly on the host"
            };
            println!(
                "provider {} ({isolation}); warm pool min {} max {}",
                list.provider, list.min, list.max
            );
            println!(
                "{:<24}  {:<9}  {:<20}  {:>8}  {:>9}  AGE",
                "SANDBOX", "STATE", "TENANT", "PID", "ACTORS"
            );
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for s in &list.sandboxes {
                let tenant = if s.tenant.is_empty() { "-" } else { &s.tenant };
                let pid = if s.pid == 0 {
                    "-".into()
                } else {
                    s.pid.to_string()
                };
                // Actors placed in it, of its slots.
                let actors = if s.slots == 0 {
                    "-".into()
                } else {
                    format!("{}/{}", s.actors.len(), s.slots)
                };
                let age = if s.started_unix_ms == 0 {
                    "-".into()
                } else {
                    uptime(Duration::from_millis(now.saturating_sub(s.started_unix_ms)))
                };
                let ended = if s.ended.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", s.ended)
                };
                println!(
                    "{:<24}  {:<9}  {:<20}  {:>8}  {:>9}  {age}{ended}",
                    s.id, s.state, tenant, pid, actors
                );
            }
        }
    }
    Ok(())
}
