//! Connecting to a node, with errors a person can act on.

use anyhow::anyhow;
use clap::Args;
use tonic::transport::{Channel, Endpoint};

/// Where the node is.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Node address.
    #[arg(
        long,
        env = "CADRE_SERVER",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    pub server: String,
}

pub async fn connect(args: &ServerArgs) -> anyhow::Result<Channel> {
    let url = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow!("--server: `{}` is not a valid address: {e}", args.server))?;
    endpoint.connect().await.map_err(|e| {
        let mut cause: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                return anyhow!(
                    "no cadre node at {url}: {}; start one with `cadre serve`",
                    io.to_string().to_lowercase()
                );
            }
            cause = c.source();
        }
        anyhow!("no cadre node at {url}: {e}; start one with `cadre serve`")
    })
}
