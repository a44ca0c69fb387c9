//! Connecting to a node, with errors a person can act on.

use anyhow::anyhow;
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
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
    /// Bearer token, for nodes started with api.tokens or --token-file.
    #[arg(long, env = "CADRE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every call, when a token is given.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A connection to a node's API.
pub type Api = InterceptedService<Channel, Bearer>;

pub async fn connect(args: &ServerArgs) -> anyhow::Result<Api> {
    let bearer = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| anyhow!("--token: not a valid header value"))?,
        ),
        None => None,
    };
    let channel = connect_channel(args).await?;
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

async fn connect_channel(args: &ServerArgs) -> anyhow::Result<Channel> {
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
