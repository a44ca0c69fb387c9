//! `cadre serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cadre_actors::access::Role;
use cadre_actors::config::{
    ApiToken, Config, ConsoleConfig, check_listen, check_node_name, check_secret,
};
use cadre_cluster::{DEFAULT_LISTEN, Node, NodeExit, NodeOptions};
use clap::Args;

use crate::Failure;

#[derive(Args)]
pub struct ServeArgs {
    /// Config file (cadre.yaml). Without one the node runs on embedded defaults.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: node.data_dir, else $XDG_DATA_HOME/cadre, else ~/.local/share/cadre].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: node.listen, else 127.0.0.1:7400]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// File of admin bearer tokens the API accepts, one per line, each named FILE:LINE in the
    /// audit log (added to api.tokens, where tokens of other roles are configured). With any
    /// token set, every call needs `authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// This node's name in its cluster [default: cluster.node, else the host name]. Needs a
    /// `cluster` section in the config.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// A node to join the cluster through, HOST:PORT of its cluster port (repeat for more; a
    /// DNS name stands for every address it resolves to). Replaces cluster.seeds.
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Where to take connections from the cluster's other nodes [default: cluster.listen,
    /// else 0.0.0.0:7500].
    #[arg(long, value_name = "IP:PORT")]
    cluster_listen: Option<String>,
    /// The host the other nodes reach this node at [default: cluster.advertise]; on
    /// Kubernetes, the pod's DNS name under the headless Service.
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// Serve `/metrics` for Prometheus on this HTTP address [default:
    /// telemetry.metrics_listen]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Serve the web console (`/ui`) on this HTTP address [default: console.listen]; port 0
    /// picks a free port.
    #[arg(long, value_name = "ADDR")]
    console_listen: Option<String>,
}

/// `--node`, `--seed` and `--cluster-listen` over the config's `cluster` section.
fn cluster_flags(config: &mut Config, args: &ServeArgs) -> Result<(), Failure> {
    let given = args.node.is_some()
        || !args.seeds.is_empty()
        || args.cluster_listen.is_some()
        || args.advertise.is_some();
    let Some(cluster) = config.cluster.as_mut() else {
        if given {
            return Err(Failure::Usage(
                "--node, --seed, --cluster-listen and --advertise need a `cluster` section in \
                 the config (at least its cookie_file)"
                    .into(),
            ));
        }
        return Ok(());
    };
    if let Some(node) = &args.node {
        check_node_name(node).map_err(|why| Failure::Usage(format!("--node: {why}")))?;
        cluster.node = node.clone();
    }
    if !args.seeds.is_empty() {
        for seed in &args.seeds {
            check_listen(seed).map_err(|why| Failure::Usage(format!("--seed: {why}")))?;
        }
        cluster.seeds = args.seeds.clone();
    }
    if let Some(listen) = &args.cluster_listen {
        cluster.listen = listen.parse().map_err(|_| {
            Failure::Usage(format!(
                "--cluster-listen: `{listen}` is not an IP address and port like 0.0.0.0:7500"
            ))
        })?;
    }
    if let Some(host) = &args.advertise {
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            return Err(Failure::Usage(format!(
                "--advertise: `{host}` is not a host name or address"
            )));
        }
        cluster.advertise = Some(host.clone());
    }
    Ok(())
}

/// A listen address: an IP address and port, or a host name (such as `localhost`) and port,
/// resolved to its first address.
fn resolve_listen(listen: &str) -> Result<SocketAddr, String> {
    check_listen(listen)?;
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(listen)
        .map_err(|e| format!("cannot resolve `{listen}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{listen}` resolves to no address"))
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let mut config = match &args.config {
        Some(file) => Config::load(file).map_err(|e| Failure::Usage(e.to_string()))?,
        None => Config::default(),
    };
    let endpoint = config
        .telemetry
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
    let traces = crate::telemetry::init(endpoint, "info,ractor=warn,rmcp=warn")?;
    cluster_flags(&mut config, &args)?;
    if let Some(listen) = &args.metrics_listen {
        check_listen(listen).map_err(|why| Failure::Usage(format!("--metrics-listen: {why}")))?;
        config.telemetry.metrics_listen = Some(listen.clone());
    }
    if let Some(listen) = &args.console_listen {
        check_listen(listen).map_err(|why| Failure::Usage(format!("--console-listen: {why}")))?;
        config.console = Some(ConsoleConfig {
            listen: listen.clone(),
        });
    }
    let (listen, from) = match (args.listen, &config.node.listen) {
        (Some(listen), _) => (listen, "--listen"),
        (None, Some(listen)) => (listen.clone(), "node.listen"),
        (None, None) => (DEFAULT_LISTEN.to_string(), "the default listen address"),
    };
    let listen = resolve_listen(&listen).map_err(|why| Failure::Usage(format!("{from}: {why}")))?;
    let data_dir = args
        .data_dir
        .or_else(|| config.node.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    if let Some(file) = &args.token_file {
        for token in read_tokens(file)? {
            if let Some(same) = config.api.tokens.iter().find(|t| t.secret == token.secret) {
                return Err(Failure::Usage(format!(
                    "{}: the same secret as api token `{}`",
                    token.name, same.name
                )));
            }
            config.api.tokens.push(token);
        }
    }
    let client_certificates = config
        .api
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_file.is_some());
    if let Some(console) = &config.console
        && client_certificates
        && config.api.tokens.is_empty()
    {
        return Err(Failure::Usage(format!(
            "console.listen {}: the API authenticates callers by client certificate \
             (api.tls.client_ca_file), which a browser does not present to the console; set \
             api.tokens (or --token-file) so the console can ask for one",
            console.listen
        )));
    }
    let node = Node::start(NodeOptions {
        config,
        listen,
        data_dir,
    })
    .await
    .context("cannot start the node")?;
    // Scripts read the bound address from this line (useful with --listen 127.0.0.1:0).
    eprintln!("cadre: listening on {}", node.addr);
    if let Some(metrics) = &node.metrics {
        eprintln!("cadre: metrics on http://{}/metrics", metrics.addr);
    }
    if let Some(console) = &node.console {
        eprintln!("cadre: console on http://{}/ui", console.addr);
    }
    let exit = node.run_until(shutdown_signal()).await;
    if let Some(provider) = traces
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "cannot send the last spans");
    }
    match exit {
        NodeExit::Stopped => Ok(()),
        NodeExit::RootExited => {
            Err(anyhow::anyhow!("the root supervisor shut itself down (auto_shutdown)").into())
        }
        NodeExit::SystemExited => {
            Err(anyhow::anyhow!("the node's own supervisor gave up; see the log").into())
        }
        NodeExit::Refused(why) => Err(anyhow::anyhow!(why).into()),
    }
}

/// Admin tokens from a file: one per line, each named `FILE:LINE`; blank lines and `#` comments
/// are skipped.
fn read_tokens(file: &std::path::Path) -> Result<Vec<ApiToken>, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", file.display())))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = format!("{}:{}", file.display(), n + 1);
        if let Err(why) = check_secret(line) {
            return Err(Failure::Usage(format!("{name}: {why}")));
        }
        tokens.push(ApiToken {
            name,
            secret: line.to_string(),
            role: Role::Admin,
            conversation_prefix: None,
        });
    }
    if tokens.is_empty() {
        return Err(Failure::Usage(format!(
            "--token-file {}: no tokens in it",
            file.display()
        )));
    }
    Ok(tokens)
}

pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("cadre");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/cadre"),
        None => PathBuf::from("cadre-data"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
