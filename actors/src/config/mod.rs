//! The `cadre.yaml` schema (`version: v1`).
//!
//! Every section is optional. Errors name the file, line and column of the offending value:
//! `cadre.yaml:12:17: unknown strategy `one_for_none` (expected one_for_one, one_for_all or
//! rest_for_one)`.
//!
//! - this file: the validated config (what the rest of the node reads);
//! - [`raw`]: the YAML shape as written, every value with its place in the file;
//! - [`validate`]: raw → validated, collecting `FILE:LINE:COL` errors;
//! - [`build`]: validated children → the runtime's child specs.

mod build;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::Spanned;

use crate::agent::AgentSpec;
use crate::controller::HistoryLimits;
use crate::mcp::McpSpec;
use crate::model::ModelSpec;
use crate::process::ProcessSpec;
use crate::skills::SkillSpec;
use crate::spec::{Restart, Shutdown, SupervisorFlags};

use raw::{RawChild, RawConfig};
use validate::parse_with;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub store: StoreConfig,
    pub sandbox: SandboxConfig,
    /// The models agents can call (`models:`).
    pub models: Vec<ModelSpec>,
    /// The root supervisor (path `root`).
    pub supervisor: SupervisorConfig,
}

/// The `node` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// The `api` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiConfig {
    /// Bearer tokens; when any is set, every API call must carry one.
    pub tokens: Vec<String>,
}

/// The `store` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreConfig {
    /// Where the event log lives.
    pub kind: StoreKind,
    /// What the log accepts.
    pub limits: HistoryLimits,
}

/// Where the event log lives (`store.embedded`, `store.foundationdb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// SQLite and segment files in the node's data dir (`store.embedded`, the default).
    #[default]
    Embedded,
}

/// The `sandbox` section: where untrusted work runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    pub provider: SandboxKind,
    /// Whether the section was given (else the defaults apply and a missing `runsc` only
    /// disables sandboxes instead of stopping the node).
    pub configured: bool,
    /// Warm sandboxes kept ready.
    pub min: usize,
    /// Most sandboxes in all.
    pub max: usize,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    /// Logical actors one shared sandbox hosts at once.
    pub slots_per_sandbox: usize,
    /// How long a placed actor may be idle before it is passivated (an exclusive one's
    /// sandbox suspended).
    pub idle_timeout: Duration,
}

/// `sandbox.provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxKind {
    /// gVisor (`runsc`).
    Gvisor,
    /// Plain host processes: nothing isolated (requires `allow_unsandboxed: true`).
    Process,
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
            slots_per_sandbox: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A supervisor's flags and children.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    pub flags: SupervisorFlags,
    pub children: Vec<ChildConfig>,
}

/// One child entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildConfig {
    pub id: String,
    pub restart: Restart,
    pub shutdown: Shutdown,
    pub significant: bool,
    pub actor: ActorConfig,
}

/// What the child is.
#[derive(Debug, Clone, PartialEq)]
pub enum ActorConfig {
    Process(ProcessSpec),
    Mcp(McpSpec),
    Skill(SkillSpec),
    Agent(AgentSpec),
    Supervisor(SupervisorConfig),
}

/// A configuration error at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            sandbox: SandboxConfig::default(),
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
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Validates config text; `file` is used in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        parse_with(file, text, |check, raw: RawConfig| check.config(raw))
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
        parse_with(file, text, |check, raw: Spanned<RawChild>| {
            check.child(&raw, parent)
        })
    }
}
