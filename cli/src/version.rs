//! `cadre version`: this client's version and the node's, like `kubectl version`.

use cadre_proto::v1::NodesRequest;
use cadre_proto::v1::cluster_client::ClusterClient;
use clap::Args;
use serde_json::json;

use crate::client::{ServerArgs, connect};
use crate::{Failure, Output};

/// This binary's version.
const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Args)]
pub struct VersionArgs {
    /// Only this client's version; do not ask the node.
    #[arg(long)]
    client: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: VersionArgs) -> Result<(), Failure> {
    let server = if args.client {
        None
    } else {
        let nodes = ClusterClient::new(connect(&args.server).await?)
            .nodes(NodesRequest {})
            .await
            .map_err(|s| crate::conversations::failure("Nodes", s))?
            .into_inner()
            .nodes;
        Some(
            nodes
                .into_iter()
                .next()
                .map(|n| n.version)
                .unwrap_or_default(),
        )
    };
    match args.output {
        Output::Json | Output::Yaml => {
            let mut out = json!({ "client": { "version": CLIENT_VERSION } });
            if let Some(version) = &server {
                out["server"] = json!({ "version": version, "address": args.server.server });
            }
            crate::emit(args.output, &out);
        }
        Output::Text => {
            println!("client: {CLIENT_VERSION}");
            if let Some(version) = &server {
                println!("server: {version} ({})", args.server.server);
            }
        }
    }
    Ok(())
}
