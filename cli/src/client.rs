//! Connecting to a node, with errors a person can act on.

use std::time::Duration;

use anyhow::anyhow;
use cadre_actors::config::DEFAULT_MAX_MESSAGE_BYTES;
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Failure;

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
    /// Seconds to wait for the node to answer when connecting (streams then run as long as
    /// they last).
    #[arg(
        long,
        env = "CADRE_TIMEOUT",
        default_value = "5",
        value_name = "SECONDS",
        value_parser = parse_timeout,
        global = true
    )]
    pub timeout: Duration,
    /// The largest gRPC message this client sends or takes, in bytes (the node's limit is
    /// api.max_message_bytes; raise both together).
    #[arg(
        long,
        env = "CADRE_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_MAX_MESSAGE_BYTES,
        value_name = "BYTES",
        global = true
    )]
    pub max_message_bytes: usize,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("`{s}` is not a number of seconds > 0")),
    }
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

/// Connects to the node and checks, within `--timeout`, that it answers as a cadre node (its
/// health service). A malformed `--server` or `--token` is a usage error.
pub async fn connect(args: &ServerArgs) -> Result<Api, Failure> {
    let bearer = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Failure::Usage("cadre: --token: not a valid header value".into()))?,
        ),
        None => None,
    };
    let url = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .ok()
        .filter(|e| e.uri().host().is_some())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "cadre: --server: `{}` is not an address (expected HOST:PORT or \
                 http://HOST:PORT)",
                args.server
            ))
        })?
        .connect_timeout(args.timeout);
    let channel = tokio::time::timeout(args.timeout, connect_channel(&url, endpoint))
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from {url} within {:.1} s: is a cadre node listening there? (raise \
                 --timeout for a slow link)",
                args.timeout.as_secs_f64()
            )
        })??;
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

async fn connect_channel(url: &str, endpoint: Endpoint) -> anyhow::Result<Channel> {
    let channel = endpoint.connect().await.map_err(|e| {
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
    })?;
    // Every node serves gRPC health without a token: an answer means a cadre node is there.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    match health {
        Ok(_) => Ok(channel),
        Err(status) if status.code() == tonic::Code::Unimplemented => Err(anyhow!(
            "{url} answers gRPC but is not a cadre node (it has no health service)"
        )),
        Err(status) => Err(anyhow!(
            "{url} does not speak cadre's API (gRPC over HTTP/2): {}",
            status.message()
        )),
    }
}
