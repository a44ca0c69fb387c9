//! The `cadre.yaml` schema (`version: v1`).
//!
//! Every section is optional. Errors name the file, line and column of the offending value:
//! `cadre.yaml:12:17: supervisor.strategy: unknown strategy `one_for_none` (expected one_for_one, one_for_all or
//! rest_for_one)`.
//!
//! - this file: the validated config (what the rest of the node reads);
//! - `raw.rs`: the YAML shape as written, every value with its place in the file;
//! - `validate.rs`: raw → validated, collecting `FILE:LINE:COL` errors;
//! - `build.rs`: validated children → the runtime's child specs;
//! - `schema.rs` and `schema_table.rs`: the reference of every field (`cadre config schema`),
//!   held to the parser by a test.

mod build;
mod raw;
pub mod schema;
mod schema_table;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::Spanned;

use crate::access::{Caller, Role};
use crate::agent::AgentSpec;
use crate::controller::HistoryLimits;
use crate::mcp::McpSpec;
use crate::model::ModelSpec;
use crate::process::ProcessSpec;
use crate::skills::SkillSpec;
use crate::spec::{Restart, Shutdown, SupervisorFlags};

use raw::{RawChild, RawConfig};
use validate::parse_with;
pub use validate::{check_listen, check_secret};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `node` section.
    pub node: NodeConfig,
    /// The `api` section.
    pub api: ApiConfig,
    /// The `store` section.
    pub store: StoreConfig,
    /// The `cluster` section: `None` for a node on its own.
    pub cluster: Option<ClusterConfig>,
    /// The `sandbox` section.
    pub sandbox: SandboxConfig,
    /// The `telemetry` section.
    pub telemetry: TelemetryConfig,
    /// The `console` section: `None` serves no web console.
    pub console: Option<ConsoleConfig>,
    /// The models agents can call (`models:`).
    pub models: Vec<ModelSpec>,
    /// The root supervisor (path `root`).
    pub supervisor: SupervisorConfig,
}

/// The `node` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeConfig {
    /// The gRPC listen address (`node.listen`); the CLI defaults to 127.0.0.1:7400.
    pub listen: Option<String>,
    /// Where the node keeps its data (`node.data_dir`).
    pub data_dir: Option<PathBuf>,
}

/// The `telemetry` section: where metrics are served and traces sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetryConfig {
    /// `HOST:PORT` of the HTTP listener serving `/metrics` (`telemetry.metrics_listen`).
    pub metrics_listen: Option<String>,
    /// The OTLP/gRPC endpoint traces are sent to (`telemetry.otlp_endpoint`); the environment's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` when unset.
    pub otlp_endpoint: Option<String>,
}

/// The `console` section: the web console's listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleConfig {
    /// `HOST:PORT` of the HTTP listener serving `/ui` and its API (`console.listen`).
    pub listen: String,
}

/// The `api` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Bearer tokens and their roles; when any is set, every API call must carry one.
    pub tokens: Vec<ApiToken>,
    /// The largest gRPC message the API takes or sends (`api.max_message_bytes`, default
    /// 4 MiB): a larger request is refused with RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// TLS for the API (`api.tls`); `None` serves plaintext.
    pub tls: Option<ApiTls>,
}

/// A bearer token the API accepts (`api.tokens[]`): its name, secret and role.
#[derive(Clone, PartialEq)]
pub struct ApiToken {
    /// Names the token in the audit log and in refusals.
    pub name: String,
    /// What the caller sends as `authorization: Bearer SECRET`.
    pub secret: String,
    /// What the token may do.
    pub role: Role,
    /// For an agent-user: the conversations it may use are those whose id starts with this.
    pub conversation_prefix: Option<String>,
}

impl ApiToken {
    /// Who calls with this token.
    pub fn caller(&self) -> Caller {
        Caller {
            name: self.name.clone(),
            role: self.role,
            conversation_prefix: self.conversation_prefix.clone(),
        }
    }
}

impl fmt::Debug for ApiToken {
    // The secret stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("conversation_prefix", &self.conversation_prefix)
            .finish_non_exhaustive()
    }
}

/// The API's certificate, its key, and (for mutual TLS) the CA its clients' certificates must
/// chain to. The files are read again when they change, and on SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiTls {
    /// PEM certificate chain, the node's first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates; when given, a client must present a certificate from one of them.
    pub client_ca_file: Option<PathBuf>,
}

/// The default of `api.max_message_bytes` (gRPC's usual 4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            tls: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The `store` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreConfig {
    /// Where the event log lives.
    pub kind: StoreKind,
    /// What the log accepts.
    pub limits: HistoryLimits,
}

/// Where the event log lives (`store.embedded`, `store.cluster`, `store.foundationdb`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// SQLite and segment files in the node's data dir (`store.embedded`, the default): in a
    /// cluster, this node is the controller node and serves the log to the others.
    #[default]
    Embedded,
    /// The log of the cluster's controller node, reached through the cluster
    /// (`store.cluster`).
    Cluster,
    /// A FoundationDB cluster that every node reaches (`store.foundationdb`, in builds with the
    /// `foundationdb` feature): any node can be the controller, under a lease.
    Foundationdb(FoundationdbStore),
    /// One SQLite file that the nodes of one machine share (`store.shared_sqlite`): any node
    /// can be the controller, under the same lease as on FoundationDB. For running a cluster's
    /// failover on one machine (which is still its single point of failure).
    SharedSqlite(SharedSqliteStore),
}

/// `store.shared_sqlite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSqliteStore {
    /// The file (`path`, required; relative to the config's directory).
    pub path: std::path::PathBuf,
    /// As [`FoundationdbStore::lease_ttl`] (`lease_ttl_ms`).
    pub lease_ttl: std::time::Duration,
}

/// `store.foundationdb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundationdbStore {
    /// FoundationDB's cluster file (`cluster_file`, default `/etc/foundationdb/fdb.cluster`).
    pub cluster_file: std::path::PathBuf,
    /// The first element of the directory the keys live under (`prefix`, default `cadre`); the
    /// second is the cluster's name.
    pub prefix: String,
    /// How long the controller's lease lasts unless renewed (`lease_ttl_ms`, default 5000): a
    /// failover takes about this long.
    pub lease_ttl: std::time::Duration,
}

/// Where FoundationDB's packages put the cluster file.
pub const DEFAULT_FDB_CLUSTER_FILE: &str = "/etc/foundationdb/fdb.cluster";

/// The controller lease's TTL unless `store.foundationdb.lease_ttl_ms` says otherwise.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The `cluster` section: this node as a member of a cluster of nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster's name (`cluster.name`, default `cadre`): nodes of another cluster are
    /// refused.
    pub name: String,
    /// This node's name in the cluster (`cluster.node`, default the host name); unique.
    pub node: String,
    /// Where the node takes connections from the other nodes (`cluster.listen`).
    pub listen: std::net::SocketAddr,
    /// The host the other nodes reach this node at (`cluster.advertise`; default the listen
    /// address, or the host name when that is unspecified, as `0.0.0.0`).
    pub advertise: Option<String>,
    /// Nodes to join through (`host:port`; a DNS name stands for every address it resolves to).
    pub seeds: Vec<String>,
    /// The file holding the cluster's shared secret (`cluster.cookie_file`).
    pub cookie_file: PathBuf,
    /// A member not heard from for this long is `down`; half of it, `suspect`.
    pub failure_timeout: Duration,
    /// Mutual TLS between the nodes (`cluster.tls`); `None` is plaintext.
    pub tls: Option<ClusterTls>,
}

/// The certificate, key and CA of a node's cluster connections: each node presents its
/// certificate and accepts only peers whose certificate the CA signed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTls {
    /// PEM certificate chain, the node's first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates the peers' certificates must come from.
    pub ca_file: PathBuf,
}

/// The default of `cluster.failure_timeout_ms`.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(2);

/// The default of `cluster.listen`.
pub const DEFAULT_CLUSTER_LISTEN: &str = "0.0.0.0:7500";

/// Whether `name` may name a cluster or a node: 1 to 63 letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit (a DNS label, or a Kubernetes pod name).
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a name of 1 to 63 letters, digits, `-`, `_` and `.` starting \
             with a letter or digit"
        ))
    }
}

/// This machine's host name (a node's default name in its cluster).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| check_node_name(h).is_ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The cluster's shared secret from `cluster.cookie_file`: its content without surrounding
/// whitespace, at least 16 bytes.
pub fn read_cookie(path: &Path) -> Result<String, String> {
    let cookie = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cookie = cookie.trim();
    if cookie.len() < 16 {
        return Err(format!(
            "{} holds {} bytes; a cookie must be at least 16 (e.g. `head -c 32 /dev/urandom | \
             base64 > {}`)",
            path.display(),
            cookie.len(),
            path.display()
        ));
    }
    Ok(cookie.to_string())
}

/// The `sandbox` section: where untrusted work runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// What sandboxes run on (`sandbox.provider`, default gVisor).
    pub provider: SandboxKind,
    /// Whether the section was given (else the defaults apply and a missing `runsc` only
    /// disables sandboxes instead of stopping the node).
    pub configured: bool,
    /// Warm sandboxes kept ready.
    pub min: usize,
    /// Most sandboxes in all.
    pub max: usize,
    /// Memory limit per sandbox, in bytes (`sandbox.memory_mib`, default 512 MiB).
    pub memory_bytes: Option<u64>,
    /// CPU limit per sandbox (`sandbox.cpus`, default 1).
    pub cpus: Option<f64>,
    /// Most processes and threads in a sandbox (`sandbox.pids`, default 512).
    pub pids: Option<u64>,
    /// Most bytes a sandbox's workspace holds (`sandbox.workspace_mib`, default 1 GiB).
    pub workspace_bytes: Option<u64>,
    /// New workspaces are refused while the data dir's disk has less free than this
    /// (`sandbox.min_free_disk_mib`, default 1 GiB).
    pub min_free_disk_bytes: u64,
    /// Logical actors one shared sandbox hosts at once.
    pub slots_per_sandbox: usize,
    /// How long a placed actor may be idle before it is passivated (an exclusive one's
    /// sandbox suspended).
    pub idle_timeout: Duration,
    /// Worker pods (`sandbox.kubernetes`): given exactly when the provider is `kubernetes`.
    pub kubernetes: Option<KubernetesSandbox>,
}

/// `sandbox.kubernetes`: where and how the `kubernetes` provider runs its worker pods.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesSandbox {
    /// The image of the worker pods (it holds `cadre` on its `PATH`).
    pub image: String,
    /// The namespace of the worker pods; `None` for the node's own (`$POD_NAMESPACE`, the
    /// service account's namespace, else the kubeconfig's).
    pub namespace: Option<String>,
    /// The pods' `runtimeClassName`; `None` for the cluster's default runtime.
    pub runtime_class: Option<String>,
    /// The Secret mounted in every worker pod: `tls.crt` and `tls.key` (the worker's
    /// certificate, for the name `cadre-worker`) and `ca.crt` (the CA of the node's client
    /// certificate).
    pub worker_secret: String,
    /// The node's client certificate for its workers, and the CA of the workers' certificates.
    pub tls: ClusterTls,
    /// A kubeconfig file; `None` for the in-cluster service account (or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// How long a worker pod may take from creation to ready.
    pub start_timeout: Duration,
}

/// The default of `sandbox.kubernetes.runtime_class`.
pub const DEFAULT_RUNTIME_CLASS: &str = "gvisor";
/// The default of `sandbox.kubernetes.worker_secret`.
pub const DEFAULT_WORKER_SECRET: &str = "cadre-worker-tls";
/// The default of `sandbox.kubernetes.start_timeout_ms`.
pub const DEFAULT_POD_START_TIMEOUT: Duration = Duration::from_secs(120);

/// `sandbox.provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxKind {
    /// gVisor (`runsc`).
    Gvisor,
    /// Plain host processes: nothing isolated (requires `allow_unsandboxed: true`).
    Process,
    /// Worker pods on Kubernetes (`sandbox.kubernetes`).
    Kubernetes,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            provider: SandboxKind::Gvisor,
            configured: false,
            min: 0,
            max: 8,
            memory_bytes: Some(512 << 20),
            cpus: Some(1.0),
            pids: Some(512),
            workspace_bytes: Some(1 << 30),
            min_free_disk_bytes: 1 << 30,
            slots_per_sandbox: 64,
            idle_timeout: Duration::from_secs(60),
            kubernetes: None,
        }
    }
}

/// A supervisor's flags and children.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// Strategy, restart intensity, auto-shutdown and the like.
    pub flags: SupervisorFlags,
    /// The children, in start order.
    pub children: Vec<ChildConfig>,
}

/// One child entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildConfig {
    /// The child's id, unique among its siblings.
    pub id: String,
    /// When the child is restarted (`restart`, default permanent).
    pub restart: Restart,
    /// How the child is stopped (`shutdown`: brutal_kill, infinity or milliseconds; default
    /// 5000 ms for workers, infinity for supervisors).
    pub shutdown: Shutdown,
    /// Whether the child's exit may shut its supervisor down (`significant`, see `auto_shutdown`).
    pub significant: bool,
    /// What the child runs.
    pub actor: ActorConfig,
}

/// What the child is.
#[derive(Debug, Clone, PartialEq)]
pub enum ActorConfig {
    /// A `process` child: a command run as an OS process.
    Process(ProcessSpec),
    /// An `mcp` child: an MCP server whose tools the node serves.
    Mcp(McpSpec),
    /// A `skill` child: a skill folder to load.
    Skill(SkillSpec),
    /// An `agent` child: a model, process or remote agent.
    Agent(AgentSpec),
    /// A nested `supervisor`.
    Supervisor(SupervisorConfig),
}

/// A configuration error at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file's name.
    pub file: String,
    /// Line, from 1 (0 when the file cannot be read).
    pub line: usize,
    /// Column, from 1 (0 when the file cannot be read).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE:COL: message`, or `FILE: message` when the file could not be read.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Default shutdown for workers (ms), as in OTP.
const DEFAULT_WORKER_SHUTDOWN_MS: u64 = 5000;

impl Default for Config {
    fn default() -> Self {
        Self {
            node: NodeConfig::default(),
            api: ApiConfig::default(),
            store: StoreConfig::default(),
            cluster: None,
            sandbox: SandboxConfig::default(),
            telemetry: TelemetryConfig::default(),
            console: None,
            models: Vec::new(),
            supervisor: SupervisorConfig {
                flags: SupervisorFlags::default(),
                children: Vec::new(),
            },
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: match e.kind() {
                std::io::ErrorKind::NotFound => "not found".into(),
                _ => format!("cannot read: {e}"),
            },
        })?;
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Self::parse_in(&file, &text, base.as_deref())
    }

    /// Validates config text; `file` is used in error messages. Relative paths stay as they
    /// are written (relative to the node's working directory); [`Config::load`] resolves them
    /// against the file's directory instead.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        Self::parse_in(file, text, None)
    }

    /// Validates config text, with relative paths resolved against `base` (and the files
    /// they name read) if given.
    fn parse_in(file: &str, text: &str, base: Option<&Path>) -> Result<Self, ConfigError> {
        // Editors on some systems start UTF-8 files with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim().is_empty() {
            return Err(ConfigError {
                file: file.to_string(),
                line: 1,
                column: 1,
                message: "the file is empty; a config starts with `version: v1` (run \
                          `cadre serve` without --config for the defaults)"
                    .into(),
            });
        }
        parse_with(file, text, base, |check, raw: RawConfig| check.config(raw))
    }
}

impl ChildConfig {
    /// Validates one child entry (as under `children:`), for a supervisor with `parent` flags.
    pub fn parse(file: &str, text: &str, parent: &SupervisorFlags) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError {
                file: file.to_string(),
                line: 1,
                column: 1,
                message: "empty child spec: give at least `id` and an actor kind".into(),
            });
        }
        parse_with(file, text, None, |check, raw: Spanned<RawChild>| {
            check.child(&raw, parent)
        })
    }
}
