//! `cadre cluster …`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadre_proto::v1::NodesRequest;
use cadre_proto::v1::cluster_client::ClusterClient;
use clap::Subcommand;
use serde_json::json;

use crate::client::{ServerArgs, connect};
use crate::tree::uptime;
use crate::{Failure, Output};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The cluster's nodes as the node asked sees them (itself first): name, state (`up`,
    /// `suspect`: no heartbeat for half the failure timeout, `down`: none for all of it),
    /// role (`controller` holds the event log; on store.foundationdb, the controller lease,
    /// shown with its epoch), API and cluster addresses, version, uptime, sandboxes running.
    /// Outside a cluster, the node alone.
    Nodes {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn run(command: ClusterCommand) -> Result<(), Failure> {
    let ClusterCommand::Nodes { output, server } = command;
    let nodes = ClusterClient::new(connect(&server).await?)
        .nodes(NodesRequest {})
        .await
        .map_err(|s| crate::conversations::failure("Nodes", s))?
        .into_inner()
        .nodes;
    match output {
        Output::Json | Output::Yaml => {
            for n in &nodes {
                crate::emit(
                    output,
                    &json!({
                        "name": n.name, "cluster": n.cluster, "state": n.state, "role": n.role,
                        "address": n.address, "cluster_address": n.cluster_address,
                        "version": n.version, "started_unix_ms": n.started_unix_ms,
                        "sandboxes": n.sandboxes, "sandbox_provider": n.sandbox_provider,
                        "isolated": n.isolated, "sandbox_status": n.sandbox_status,
                        "last_heard_unix_ms": n.last_heard_unix_ms, "api_tls": n.api_tls,
                        "incarnation": n.incarnation, "controller_epoch": n.controller_epoch,
                    }),
                );
            }
        }
        Output::Text => {
            println!(
                "{:<16}  {:<8}  {:<14}  {:<22}  {:<22}  {:<8}  {:>8}  SANDBOXES",
                "NAME", "STATE", "ROLE", "API", "CLUSTER", "VERSION", "UPTIME"
            );
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for n in &nodes {
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_string()
                    } else {
                        s.to_string()
                    }
                };
                let up = if n.started_unix_ms == 0 {
                    "-".into()
                } else {
                    uptime(Duration::from_millis(now.saturating_sub(n.started_unix_ms)))
                };
                let role = if n.controller_epoch > 0 {
                    format!("{} ({})", n.role, n.controller_epoch)
                } else {
                    dash(&n.role)
                };
                println!(
                    "{:<16}  {:<8}  {:<14}  {:<22}  {:<22}  {:<8}  {:>8}  {}",
                    dash(&n.name),
                    n.state,
                    role,
                    n.address,
                    dash(&n.cluster_address),
                    n.version,
                    up,
                    n.sandboxes
                );
            }
        }
    }
    Ok(())
}
