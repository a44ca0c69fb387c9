//! `cadre`: run a node, and inspect and drive it over gRPC.

mod actors;
mod bench;
mod certs;
mod client;
mod cluster;
mod config_cmd;
mod conversations;
mod debug;
mod health;
mod progress;
mod sandboxes;
mod serve;
mod store;
mod telemetry;
mod tools;
mod tree;
mod version;
mod yaml;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// cadre: a durable, supervised runtime for long-running AI agents.
#[derive(Parser)]
#[command(name = "cadre", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: load the config, start the supervision tree, serve the gRPC API.
    ///
    /// With no config file the node runs on embedded defaults with an empty root supervisor.
    /// SIGTERM or Ctrl-C shuts the tree down in reverse start order, honouring each child's
    /// shutdown timeout.
    Serve(serve::ServeArgs),
    /// Run one exec (turn): send an input to an agent and print its outputs as they stream.
    /// Ends with `conversation=<id> seq=<n>` on stderr, so you can reconnect with --last-seq.
    Exec(conversations::ExecArgs),
    /// Branch a conversation at a seq into a new one.
    Fork(conversations::ForkArgs),
    /// Cancel a conversation's unfinished exec: it ends CANCELLED and its agent is stopped.
    Cancel(conversations::CancelArgs),
    /// Approve (or --decline) the tool call a WAITING_APPROVAL exec waits on; the exec runs on.
    Approve(conversations::ApproveArgs),
    /// List, show and read conversations.
    Conversations {
        #[command(subcommand)]
        command: conversations::ConversationsCommand,
    },
    /// Show the live supervision tree of a node (like pstree).
    Tree(tree::TreeArgs),
    /// List, spawn, stop and restart actors.
    Actors {
        #[command(subcommand)]
        command: actors::ActorsCommand,
    },
    /// The node's tools (of its MCP servers) and calls to them.
    Tools {
        #[command(subcommand)]
        command: tools::ToolsCommand,
    },
    /// The cluster: its nodes and their states.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Work with event log stores offline: copy a node's log into FoundationDB.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// The node's sandboxes (gVisor or plain processes) and its warm pool.
    Sandboxes {
        #[command(subcommand)]
        command: sandboxes::SandboxesCommand,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make the certificates of a TLS node and its clients, or look inside one.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// The versions of this client and of the node it talks to.
    Version(version::VersionArgs),
    /// Whether a node is started, live or ready for work (what Kubernetes' probes run); exits
    /// 1 when it is not.
    Health(health::HealthArgs),
    /// Print a shell completion script: `source <(cadre completion bash)`, or write it where
    /// your shell loads completions from.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Measure this machine: prints figures (one JSON object with -o json).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Helpers for tests.
    /// Serve the worker protocol on stdin/stdout, inside a sandbox (the node starts it).
    #[command(hide = true)]
    Worker {
        /// The directory the protocol's file paths are relative to.
        #[arg(long)]
        workspace: std::path::PathBuf,
        /// Where hosted actors' workspaces go [default: WORKSPACE/actors].
        #[arg(long, value_name = "DIR")]
        actors: Option<std::path::PathBuf>,
        /// The size of the workspace's filesystem, in bytes, when the node bounds it: errors
        /// of a full workspace name it.
        #[arg(long, value_name = "BYTES")]
        workspace_quota: Option<u64>,
        /// Serve on TCP at this address instead of stdio, always with mutual TLS (a worker
        /// pod); prints `cadre: worker listening on ADDR`.
        #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key", "client_ca"])]
        listen: Option<std::net::SocketAddr>,
        /// The worker's certificate (PEM), with --listen.
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<std::path::PathBuf>,
        /// The key of --tls-cert.
        #[arg(long, value_name = "FILE")]
        tls_key: Option<std::path::PathBuf>,
        /// The CA (PEM) the node's client certificate must chain to.
        #[arg(long, value_name = "FILE")]
        client_ca: Option<std::path::PathBuf>,
    },
    /// Wait for the node to end (end of stdin), then kill what its process ledger holds (the
    /// node starts it).
    #[command(hide = true)]
    Guard {
        /// The node's process ledger.
        #[arg(long)]
        ledger: std::path::PathBuf,
        /// Unmount everything mounted below this folder too (the node's workspaces).
        #[arg(long, value_name = "DIR")]
        unmount: Option<std::path::PathBuf>,
    },
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: debug::DebugCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file; errors are printed as FILE:LINE:COL: field.path: message (exit 2).
    Check {
        /// The config file, e.g. examples/cadre.yaml.
        file: PathBuf,
    },
    /// Print the config reference (Markdown): every field with its type, default and meaning.
    Schema,
    /// Print the worker pod a node with this config makes for each sandbox
    /// (`sandbox.provider: kubernetes`), as YAML (or JSON with -o json), for review and policy
    /// checks.
    WorkerPod {
        /// The config file.
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Yaml)]
        output: Output,
    },
}

/// `cadre worker --listen`: the worker protocol on TCP, mutual TLS only.
fn serve_worker_tcp(
    service: cadre_sandbox::worker::WorkerService,
    listen: std::net::SocketAddr,
    tls: cadre_actors::config::ApiTls,
) -> anyhow::Result<()> {
    use cadre_cluster::grpc::tls::{ReloadingTls, incoming};
    let tls = std::sync::Arc::new(ReloadingTls::load(tls)?);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("cadre: worker listening on {}", listener.local_addr()?);
        service.serve_incoming(incoming(listener, tls)).await?;
        Ok(())
    })
}

/// Output format of read commands.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    /// Human-readable.
    #[default]
    Text,
    /// JSON (JSON lines for streams).
    Json,
    /// YAML (one document per item, each starting with `---`, for streams).
    Yaml,
}

/// Prints one item of a read command's output as JSON (one line) or YAML (one document).
pub fn emit(output: Output, value: &serde_json::Value) {
    match output {
        Output::Yaml => print!("---\n{}", yaml::to_yaml(value)),
        _ => println!("{value}"),
    }
}

/// A failure with the exit code it maps to: 1 at run time, 2 for usage and validation.
pub enum Failure {
    Runtime(anyhow::Error),
    Usage(String),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Guard { ledger, unmount } = &cli.command {
        for pid in cadre_cluster::guardian::guard(ledger, unmount.as_deref()) {
            eprintln!("cadre guard: killed process {pid}, left running by its node");
        }
        return ExitCode::SUCCESS;
    }
    if let Command::Worker {
        workspace,
        actors,
        workspace_quota,
        listen,
        tls_cert,
        tls_key,
        client_ca,
    } = cli.command
    {
        let actors = actors.unwrap_or_else(|| workspace.join("actors"));
        let service = cadre_sandbox::worker::WorkerService::new(workspace, actors)
            .with_workspace_quota(workspace_quota);
        if let (Some(listen), Some(cert_file), Some(key_file), Some(ca)) =
            (listen, tls_cert, tls_key, client_ca)
        {
            let tls = cadre_actors::config::ApiTls {
                cert_file,
                key_file,
                client_ca_file: Some(ca),
            };
            return match serve_worker_tcp(service, listen, tls) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cadre: worker: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        // Runs its own single-threaded runtimes (see `serve_stdio`).
        return match service.serve_stdio() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cadre: worker: {e}");
                ExitCode::from(1)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cadre: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Tree(args) => tree::run(args).await,
            Command::Actors { command } => actors::run(command).await,
            Command::Cluster { command } => cluster::run(command).await,
            Command::Sandboxes { command } => sandboxes::run(command).await,
            Command::Tools { command } => tools::run(command).await,
            Command::Exec(args) => conversations::exec(args).await,
            Command::Fork(args) => conversations::fork(args).await,
            Command::Cancel(args) => conversations::cancel(args).await,
            Command::Approve(args) => conversations::approve(args).await,
            Command::Conversations { command } => conversations::run(command).await,
            Command::Config {
                command: ConfigCommand::Check { file },
            } => config_cmd::check(&file),
            Command::Config {
                command: ConfigCommand::Schema,
            } => {
                print!("{}", cadre_actors::config::schema::reference());
                Ok(())
            }
            Command::Config {
                command: ConfigCommand::WorkerPod { file, output },
            } => config_cmd::worker_pod(&file, output),
            Command::Worker { .. } | Command::Guard { .. } => unreachable!("served above"),
            Command::Debug { command } => debug::run(command).await,
            Command::Bench { command } => bench::run(command).await,
            Command::Version(args) => version::run(args).await,
            Command::Health(args) => health::run(args).await,
            Command::Certs { command } => certs::run(command),
            Command::Store { command } => store::run(command).await,
            Command::Completion { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "cadre",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("cadre: {e:#}");
            ExitCode::from(1)
        }
    }
}
