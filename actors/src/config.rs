//! The `cadre.yaml` schema (`version: v1`).
//!
//! Every section is optional. Errors name the file, line and column of the offending value:
//! `cadre.yaml:12:17: unknown strategy `one_for_none` (expected one_for_one, one_for_all or
//! rest_for_one)`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::{Marker, Span, Spanned};
use serde::Deserialize;

use crate::agent::{AgentSpec, agent_child};
use crate::controller::HistoryLimits;
use crate::mcp::{McpServer, McpSpec, mcp_child};
use crate::model::ModelSpec;
use crate::process::{ProcessSpec, process_child};
use crate::services::Services;
use crate::skills::{SkillSpec, skill_child};
use crate::spec::{
    AutoShutdown, Backoff, ChildSpec, ChildType, Restart, Shutdown, Strategy, SupervisorFlags,
};
use crate::supervisor::supervisor_child;

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
    pub limits: HistoryLimits,
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

/// Parses YAML into `R`, then validates it with `check`; the first error wins.
fn parse_with<R: serde::de::DeserializeOwned, T>(
    file: &str,
    text: &str,
    check: impl FnOnce(&mut Checker, R) -> T,
) -> Result<T, ConfigError> {
    let err = |span: Option<&Span>, message: String| {
        let (line, column) = span
            .and_then(|s| s.start())
            .map(|m| (m.line(), m.column()))
            .unwrap_or((1, 1));
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message,
        }
    };
    let node = marked_yaml::parse_yaml_with_options(
        0,
        text,
        marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true),
    )
    .map_err(|e| load_error(file, e))?;
    let raw: R = marked_yaml::from_node(&node).map_err(|e| {
        // Errors raised through `Spanned<…>` wrappers can lose their place; an unknown
        // field can always be found again by its key.
        let mark = match &*e {
            marked_yaml::Error::UnknownFieldError(field, _, span) if span.start().is_none() => {
                find_key(&node, field)
            }
            _ => e.start_mark(),
        };
        let span = mark.map(Span::new_start);
        err(span.as_ref(), clean_serde_message(&e.to_string()))
    })?;
    let mut checker = Checker { errors: Vec::new() };
    let value = check(&mut checker, raw);
    match checker.errors.into_iter().next() {
        Some((span, message)) => Err(err(Some(&span), message)),
        None => Ok(value),
    }
}

impl SupervisorConfig {
    /// The runtime child specs for this supervisor's children, on the node's `services`.
    pub fn child_specs(&self, services: &Services) -> Vec<ChildSpec> {
        self.children
            .iter()
            .map(|c| c.child_spec(services))
            .collect()
    }
}

impl ChildConfig {
    pub fn child_spec(&self, services: &Services) -> ChildSpec {
        let spec = match &self.actor {
            ActorConfig::Process(p) => process_child(&self.id, p.clone()),
            ActorConfig::Mcp(m) => mcp_child(&self.id, m.clone(), services.clone()),
            ActorConfig::Skill(s) => skill_child(&self.id, s.clone(), services.clone()),
            ActorConfig::Agent(a) => agent_child(&self.id, a.clone(), services.clone()),
            ActorConfig::Supervisor(s) => {
                supervisor_child(&self.id, s.flags.clone(), s.child_specs(services))
            }
        };
        spec.restart(self.restart)
            .shutdown(self.shutdown)
            .significant(self.significant)
    }
}

// --- raw, spanned YAML shape -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: Option<Spanned<String>>,
    node: Option<RawNode>,
    api: Option<RawApi>,
    store: Option<RawStore>,
    sandbox: Option<RawSandbox>,
    #[serde(default)]
    models: Vec<Spanned<RawModel>>,
    supervisor: Option<Spanned<RawSupervisor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: Spanned<String>,
    openai: Spanned<RawOpenAi>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenAi {
    base_url: Spanned<String>,
    model: Spanned<String>,
    api_key_env: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    model: Option<Spanned<String>>,
    remote: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    system_prompt: String,
    #[serde(default)]
    tools: Vec<Spanned<String>>,
    #[serde(default)]
    require_approval: Vec<Spanned<String>>,
    max_iterations: Option<Spanned<i64>>,
    token_budget: Option<Spanned<i64>>,
    compact_at_tokens: Option<Spanned<i64>>,
    tool_timeout_ms: Option<Spanned<i64>>,
    exec_timeout_secs: Option<Spanned<i64>>,
    execs_per_minute: Option<Spanned<i64>>,
    max_repeats: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    provider: Option<Spanned<String>>,
    allow_unsandboxed: Option<Spanned<bool>>,
    warm_pool: Option<RawWarmPool>,
    memory_mib: Option<Spanned<i64>>,
    cpus: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmPool {
    min: Option<Spanned<i64>>,
    max: Option<Spanned<i64>>,
    slots_per_sandbox: Option<Spanned<i64>>,
    idle_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    listen: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default)]
    tokens: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    embedded: Option<Spanned<BTreeMap<String, String>>>,
    foundationdb: Option<Spanned<BTreeMap<String, String>>>,
    max_events_per_conversation: Option<Spanned<i64>>,
    warn_percent: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    strategy: Option<Spanned<String>>,
    intensity: Option<Spanned<i64>>,
    period_secs: Option<Spanned<i64>>,
    auto_shutdown: Option<Spanned<String>>,
    max_children: Option<Spanned<i64>>,
    backoff: Option<RawBackoff>,
    #[serde(default)]
    children: Vec<Spanned<RawChild>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial_ms: Spanned<i64>,
    max_ms: Spanned<i64>,
    jitter: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChild {
    id: Spanned<String>,
    restart: Option<Spanned<String>>,
    shutdown: Option<Spanned<String>>,
    #[serde(rename = "type")]
    child_type: Option<Spanned<String>>,
    significant: Option<Spanned<bool>>,
    process: Option<Spanned<RawProcess>>,
    mcp: Option<Spanned<RawMcp>>,
    skill: Option<Spanned<RawSkill>>,
    agent: Option<Spanned<RawAgent>>,
    supervisor: Option<Spanned<RawSupervisor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSkill {
    path: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    command: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    tenant: Option<Spanned<String>>,
    isolation: Option<Spanned<String>>,
    egress: Option<Spanned<bool>>,
    timeout_ms: Option<Spanned<i64>>,
    start_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    command: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

/// Walks the raw config, collecting errors with their spans (the first one is reported).
struct Checker {
    errors: Vec<(Span, String)>,
}

impl Checker {
    fn fail(&mut self, span: &Span, message: String) {
        self.errors.push((*span, message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        match &raw.version {
            None => self.fail(
                &Span::new_start(Marker::new(0, 0, 1, 1)),
                "missing `version: v1`".into(),
            ),
            Some(v) if v.as_str() != "v1" => self.fail(
                v.span(),
                format!("unsupported version `{}` (expected v1)", v.as_str()),
            ),
            Some(_) => {}
        }
        let node = raw
            .node
            .map(|n| NodeConfig {
                listen: n.listen.map(|l| l.as_str().to_string()),
                data_dir: n.data_dir.map(|d| PathBuf::from(d.as_str())),
            })
            .unwrap_or_default();
        let models = self.models(&raw.models);
        let supervisor = match &raw.supervisor {
            Some(s) => {
                let config = self.supervisor(s);
                self.agent_models(s, &models);
                config
            }
            None => Config::default().supervisor,
        };
        let store = raw
            .store
            .as_ref()
            .map(|s| self.store(s))
            .unwrap_or_default();
        let sandbox = raw
            .sandbox
            .as_ref()
            .map(|s| self.sandbox(s))
            .unwrap_or_default();
        let mut api = ApiConfig::default();
        for t in raw.api.iter().flat_map(|a| &a.tokens) {
            if t.trim().is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.fail(
                    t.span(),
                    "api.tokens: a token must be non-empty with no spaces".into(),
                );
            }
            api.tokens.push(t.to_string());
        }
        Config {
            node,
            api,
            store,
            sandbox,
            models,
            supervisor,
        }
    }

    fn models(&mut self, raw: &[Spanned<RawModel>]) -> Vec<ModelSpec> {
        let mut models: Vec<ModelSpec> = Vec::new();
        for m in raw {
            let id = m.id.as_str();
            if models.iter().any(|o| o.id == id) {
                self.fail(m.id.span(), format!("duplicate model id `{id}`"));
            }
            let o = &m.openai;
            if o.base_url.starts_with("https://") {
                self.fail(
                    o.base_url.span(),
                    format!(
                        "model `{id}`: openai.base_url: https is not in this build (no TLS \
                         client); use http:// (e.g. through a local TLS proxy)"
                    ),
                );
            } else if !o.base_url.starts_with("http://") {
                self.fail(
                    o.base_url.span(),
                    format!("model `{id}`: openai.base_url must be an http:// URL"),
                );
            }
            if o.model.trim().is_empty() {
                self.fail(
                    o.model.span(),
                    format!("model `{id}`: openai.model is empty"),
                );
            }
            let timeout = match &o.timeout_ms {
                Some(t) if **t < 1 => {
                    self.fail(
                        t.span(),
                        format!("openai.timeout_ms must be ≥ 1, got {}", **t),
                    );
                    Duration::from_secs(120)
                }
                Some(t) => Duration::from_millis(**t as u64),
                None => Duration::from_secs(120),
            };
            models.push(ModelSpec {
                id: id.to_string(),
                base_url: o.base_url.to_string(),
                model: o.model.to_string(),
                api_key_env: o.api_key_env.as_ref().map(|k| k.to_string()),
                timeout,
            });
        }
        models
    }

    /// Every agent's model is one of `models`.
    fn agent_models(&mut self, raw: &RawSupervisor, models: &[ModelSpec]) {
        for child in &raw.children {
            if let Some(a) = &child.agent
                && let Some(model) = &a.model
                && !models.iter().any(|m| m.id == **model)
            {
                let known: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
                self.fail(
                    model.span(),
                    format!(
                        "child `{}`: unknown model `{}` (models: {})",
                        child.id.as_str(),
                        model.as_str(),
                        if known.is_empty() {
                            "none configured".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            if let Some(s) = &child.supervisor {
                self.agent_models(s, models);
            }
        }
    }

    fn agent(&mut self, id: &str, raw: &Spanned<RawAgent>) -> AgentSpec {
        let backends = [
            raw.model.as_ref().map(|m| m.span()),
            raw.remote.as_ref().map(|r| r.span()),
            raw.command.as_ref().map(|c| c.span()),
        ];
        match backends.iter().flatten().collect::<Vec<_>>().as_slice() {
            [] => self.fail(
                raw.span(),
                format!(
                    "child `{id}`: an agent needs a `model` (an id of `models:`), a `remote` \
                     AgentService address or a `command` (a process agent)"
                ),
            ),
            [_] => {}
            [_, second, ..] => self.fail(
                second,
                format!("child `{id}`: an agent takes one of `model`, `remote` and `command`"),
            ),
        }
        if let Some(r) = &raw.remote
            && !r.starts_with("http://")
        {
            self.fail(
                r.span(),
                format!("child `{id}`: agent.remote must be an http://HOST:PORT address"),
            );
        }
        if let Some(c) = &raw.command
            && (c.is_empty() || c[0].is_empty())
        {
            self.fail(
                c.span(),
                format!("child `{id}`: agent.command must name a program"),
            );
        }
        let mut spec = AgentSpec {
            model: raw
                .model
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
            remote: raw.remote.as_ref().map(|r| r.to_string()),
            command: raw.command.as_ref().map(|c| c.to_vec()),
            system_prompt: raw.system_prompt.clone(),
            tools: raw.tools.iter().map(|t| t.to_string()).collect(),
            require_approval: raw.require_approval.iter().map(|t| t.to_string()).collect(),
            ..AgentSpec::default()
        };
        for t in raw.tools.iter().chain(&raw.require_approval) {
            let ok = !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.*".contains(c))
                && (!t.contains('*') || t.as_str() == "*" || t.ends_with(".*"));
            if !ok {
                self.fail(
                    t.span(),
                    format!(
                        "child `{id}`: tool pattern `{}` must be `ns.tool`, `ns.*` or `*`",
                        t.as_str()
                    ),
                );
            }
        }
        let mut positive = |v: &Option<Spanned<i64>>, name: &str| -> Option<u64> {
            let v = v.as_ref()?;
            if **v < 1 {
                self.fail(v.span(), format!("agent.{name} must be ≥ 1, got {}", **v));
                None
            } else {
                Some(**v as u64)
            }
        };
        if let Some(m) = positive(&raw.max_iterations, "max_iterations") {
            spec.max_iterations = m.min(u64::from(u32::MAX)) as u32;
        }
        spec.token_budget = positive(&raw.token_budget, "token_budget");
        spec.compact_at_tokens = positive(&raw.compact_at_tokens, "compact_at_tokens");
        if let Some(t) = positive(&raw.tool_timeout_ms, "tool_timeout_ms") {
            spec.tool_timeout = Duration::from_millis(t);
        }
        spec.exec_timeout =
            positive(&raw.exec_timeout_secs, "exec_timeout_secs").map(Duration::from_secs);
        spec.execs_per_minute = positive(&raw.execs_per_minute, "execs_per_minute")
            .map(|n| n.min(u64::from(u32::MAX)) as u32);
        if let Some(m) = positive(&raw.max_repeats, "max_repeats") {
            spec.max_repeats = m.min(u64::from(u32::MAX)) as u32;
        }
        spec
    }

    fn sandbox(&mut self, raw: &RawSandbox) -> SandboxConfig {
        let mut config = SandboxConfig {
            configured: true,
            ..SandboxConfig::default()
        };
        if let Some(p) = &raw.provider {
            match p.as_str() {
                "gvisor" => config.provider = SandboxKind::Gvisor,
                "process" => {
                    config.provider = SandboxKind::Process;
                    if !raw.allow_unsandboxed.as_ref().is_some_and(|a| **a) {
                        self.fail(
                            p.span(),
                            "sandbox.provider `process` isolates nothing: untrusted code would \
                             run on the host; add `allow_unsandboxed: true` to accept that"
                                .into(),
                        );
                    }
                }
                "kubernetes" => self.fail(
                    p.span(),
                    "sandbox.provider `kubernetes` is not available in this build (use gvisor)"
                        .into(),
                ),
                other => self.fail(
                    p.span(),
                    format!("unknown sandbox.provider `{other}` (expected gvisor or process)"),
                ),
            }
        }
        if let Some(pool) = &raw.warm_pool {
            let mut count = |v: &Spanned<i64>, what: &str, least: i64| {
                if **v < least {
                    self.fail(
                        v.span(),
                        format!("sandbox.warm_pool.{what} must be ≥ {least}, got {}", **v),
                    );
                    None
                } else {
                    Some(**v as usize)
                }
            };
            let min = pool.min.as_ref().and_then(|m| count(m, "min", 0));
            let max = pool.max.as_ref().and_then(|m| count(m, "max", 1));
            if let Some(slots) = pool.slots_per_sandbox.as_ref() {
                config.slots_per_sandbox =
                    count(slots, "slots_per_sandbox", 1).unwrap_or(config.slots_per_sandbox);
            }
            if let Some(idle) = pool.idle_timeout_ms.as_ref()
                && let Some(ms) = count(idle, "idle_timeout_ms", 1)
            {
                config.idle_timeout = Duration::from_millis(ms as u64);
            }
            config.min = min.unwrap_or(config.min);
            config.max = max.unwrap_or(config.max.max(config.min));
            if config.min > config.max
                && let Some(m) = pool.min.as_ref().or(pool.max.as_ref())
            {
                self.fail(
                    m.span(),
                    format!(
                        "sandbox.warm_pool.min ({}) is more than max ({})",
                        config.min, config.max
                    ),
                );
            }
        }
        if let Some(m) = &raw.memory_mib {
            if **m < 16 {
                self.fail(
                    m.span(),
                    format!("sandbox.memory_mib must be ≥ 16, got {}", **m),
                );
            } else {
                config.memory_bytes = Some((**m as u64) << 20);
            }
        }
        if let Some(c) = &raw.cpus {
            if !(**c > 0.0 && c.is_finite()) {
                self.fail(c.span(), format!("sandbox.cpus must be > 0, got {}", **c));
            } else {
                config.cpus = Some(**c);
            }
        }
        config
    }

    fn store(&mut self, raw: &RawStore) -> StoreConfig {
        let mut limits = HistoryLimits::default();
        if let Some(e) = &raw.embedded
            && !e.is_empty()
        {
            self.fail(e.span(), "store.embedded takes no options (use {})".into());
        }
        if let Some(f) = &raw.foundationdb {
            self.fail(
                f.span(),
                "store.foundationdb is not available in this build; use store.embedded".into(),
            );
        }
        if let Some(m) = &raw.max_events_per_conversation {
            if **m < 1 {
                self.fail(
                    m.span(),
                    format!("store.max_events_per_conversation must be ≥ 1, got {}", **m),
                );
            } else {
                limits.max_events_per_conversation = **m as u64;
            }
        }
        if let Some(w) = &raw.warn_percent {
            match u8::try_from(**w) {
                Ok(p) if p <= 100 => limits.warn_percent = p,
                _ => self.fail(
                    w.span(),
                    format!("store.warn_percent must be 0..100, got {}", **w),
                ),
            }
        }
        StoreConfig { limits }
    }

    fn supervisor(&mut self, raw: &RawSupervisor) -> SupervisorConfig {
        let mut flags = SupervisorFlags::default();
        if let Some(s) = &raw.strategy {
            flags.strategy = match s.as_str() {
                "one_for_one" => Strategy::OneForOne,
                "one_for_all" => Strategy::OneForAll,
                "rest_for_one" => Strategy::RestForOne,
                "simple_one_for_one" => {
                    self.fail(
                        s.span(),
                        "strategy `simple_one_for_one` is not supported: any supervisor takes \
                         children at runtime (start_child), use one_for_one"
                            .into(),
                    );
                    Strategy::OneForOne
                }
                other => {
                    self.fail(
                        s.span(),
                        format!(
                            "unknown strategy `{other}` (expected one_for_one, one_for_all or rest_for_one)"
                        ),
                    );
                    Strategy::OneForOne
                }
            };
        }
        if let Some(i) = &raw.intensity {
            match u32::try_from(**i) {
                Ok(v) => flags.intensity = v,
                Err(_) => self.fail(
                    i.span(),
                    format!("intensity must be a whole number ≥ 0, got {}", **i),
                ),
            }
        }
        if let Some(p) = &raw.period_secs {
            if **p < 1 {
                self.fail(p.span(), format!("period_secs must be ≥ 1, got {}", **p));
            } else {
                flags.period = Duration::from_secs(**p as u64);
            }
        }
        if let Some(a) = &raw.auto_shutdown {
            flags.auto_shutdown = match a.as_str() {
                "never" => AutoShutdown::Never,
                "any_significant" => AutoShutdown::AnySignificant,
                "all_significant" => AutoShutdown::AllSignificant,
                other => {
                    self.fail(
                        a.span(),
                        format!(
                            "unknown auto_shutdown `{other}` (expected never, any_significant or all_significant)"
                        ),
                    );
                    AutoShutdown::Never
                }
            };
        }
        if let Some(m) = &raw.max_children {
            if **m < 1 {
                self.fail(m.span(), format!("max_children must be ≥ 1, got {}", **m));
            } else {
                flags.max_children = Some(**m as usize);
            }
        }
        if let Some(b) = &raw.backoff {
            flags.backoff = Some(self.backoff(b));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut children = Vec::with_capacity(raw.children.len());
        for child in &raw.children {
            let id = child.id.as_str().to_string();
            if let Some(first) = seen.get(&id) {
                self.fail(
                    child.id.span(),
                    format!("duplicate child id `{id}` (first defined at line {first})"),
                );
            } else {
                let line = child.id.span().start().map_or(0, |m| m.line());
                seen.insert(id.clone(), line);
            }
            children.push(self.child(child, &flags));
        }
        SupervisorConfig { flags, children }
    }

    fn mcp(&mut self, id: &str, raw: &Spanned<RawMcp>) -> McpSpec {
        let mut spec = McpSpec::default();
        match (&raw.command, &raw.url) {
            (Some(command), None) => {
                if command.is_empty() || command[0].is_empty() {
                    self.fail(
                        command.span(),
                        format!("child `{id}`: mcp.command must name a program"),
                    );
                }
                spec.server = McpServer::Stdio {
                    command: command.to_vec(),
                    env: raw.env.clone().into_iter().collect(),
                };
            }
            (None, Some(url)) => {
                if url.starts_with("https://") {
                    self.fail(
                        url.span(),
                        format!(
                            "child `{id}`: mcp.url: https is not in this build (no TLS client); \
                             use http:// (e.g. through a local TLS proxy)"
                        ),
                    );
                } else if !url.starts_with("http://") {
                    self.fail(
                        url.span(),
                        format!("child `{id}`: mcp.url must be an http:// URL"),
                    );
                }
                if !raw.env.is_empty() {
                    self.fail(
                        url.span(),
                        format!("child `{id}`: mcp.env is for a command, not a url"),
                    );
                }
                spec.server = McpServer::Http {
                    url: url.to_string(),
                };
            }
            (Some(_), Some(url)) => self.fail(
                url.span(),
                format!("child `{id}`: mcp takes a `command` or a `url`, not both"),
            ),
            (None, None) => self.fail(
                raw.span(),
                format!("child `{id}`: mcp needs a `command` (stdio) or a `url` (streamable HTTP)"),
            ),
        }
        if let Some(t) = &raw.tenant {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.fail(
                    t.span(),
                    format!(
                        "child `{id}`: mcp.tenant must use only letters, digits, `-`, `_` and `.`"
                    ),
                );
            }
            spec.tenant = t.to_string();
        }
        if let Some(i) = &raw.isolation {
            match i.as_str() {
                "shared" => spec.exclusive = false,
                "exclusive" => spec.exclusive = true,
                other => self.fail(
                    i.span(),
                    format!("unknown mcp.isolation `{other}` (expected shared or exclusive)"),
                ),
            }
        }
        if let Some(e) = &raw.egress {
            if **e && raw.url.is_some() {
                self.fail(
                    e.span(),
                    format!("child `{id}`: mcp.egress is for a command in a sandbox, not a url"),
                );
            }
            spec.egress = **e;
        }
        let mut ms = |v: &Option<Spanned<i64>>, name: &str, default: Duration| match v {
            Some(v) if **v < 1 => {
                self.fail(v.span(), format!("mcp.{name} must be ≥ 1, got {}", **v));
                default
            }
            Some(v) => Duration::from_millis(**v as u64),
            None => default,
        };
        spec.call_timeout = ms(&raw.timeout_ms, "timeout_ms", spec.call_timeout);
        spec.start_timeout = ms(
            &raw.start_timeout_ms,
            "start_timeout_ms",
            spec.start_timeout,
        );
        spec
    }

    fn backoff(&mut self, raw: &RawBackoff) -> Backoff {
        let mut ms = |v: &Spanned<i64>, name: &str| -> Duration {
            if **v < 0 {
                self.fail(v.span(), format!("{name} must be ≥ 0, got {}", **v));
            }
            Duration::from_millis((**v).max(0) as u64)
        };
        let initial = ms(&raw.initial_ms, "backoff.initial_ms");
        let max = ms(&raw.max_ms, "backoff.max_ms");
        if max < initial {
            self.fail(
                raw.max_ms.span(),
                "backoff.max_ms must be ≥ backoff.initial_ms".into(),
            );
        }
        let jitter = match &raw.jitter {
            Some(j) if !(0.0..=1.0).contains(&**j) => {
                self.fail(
                    j.span(),
                    format!("backoff.jitter must be in 0..1, got {}", **j),
                );
                0.0
            }
            Some(j) => **j,
            None => 0.0,
        };
        Backoff {
            initial,
            max,
            jitter,
        }
    }

    fn child(&mut self, raw: &Spanned<RawChild>, parent: &SupervisorFlags) -> ChildConfig {
        let id = raw.id.as_str().to_string();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.fail(
                raw.id.span(),
                format!("child id `{id}` must be non-empty and use only letters, digits, `-`, `_` and `.`"),
            );
        }
        let kinds: Vec<(&str, &Span)> = [
            raw.process.as_ref().map(|p| ("process", p.span())),
            raw.mcp.as_ref().map(|m| ("mcp", m.span())),
            raw.skill.as_ref().map(|s| ("skill", s.span())),
            raw.agent.as_ref().map(|a| ("agent", a.span())),
            raw.supervisor.as_ref().map(|s| ("supervisor", s.span())),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [_, (second, span), ..] = kinds.as_slice() {
            self.fail(
                span,
                format!(
                    "child `{id}` has both `{}` and `{second}`; give exactly one",
                    kinds[0].0
                ),
            );
        }
        let actor = if let Some(p) = &raw.process {
            if p.command.is_empty() || p.command[0].is_empty() {
                self.fail(
                    p.command.span(),
                    format!("child `{id}`: process.command must name a program"),
                );
            }
            ActorConfig::Process(ProcessSpec {
                command: p.command.to_vec(),
                env: p.env.clone().into_iter().collect(),
                cwd: p.cwd.as_ref().map(PathBuf::from),
            })
        } else if let Some(m) = &raw.mcp {
            ActorConfig::Mcp(self.mcp(&id, m))
        } else if let Some(s) = &raw.skill {
            if s.path.is_empty() {
                self.fail(
                    s.path.span(),
                    format!("child `{id}`: skill.path must name the skill's folder"),
                );
            }
            ActorConfig::Skill(SkillSpec {
                path: PathBuf::from(s.path.as_str()),
            })
        } else if let Some(a) = &raw.agent {
            ActorConfig::Agent(self.agent(&id, a))
        } else if let Some(s) = &raw.supervisor {
            ActorConfig::Supervisor(self.supervisor(s))
        } else {
            self.fail(
                raw.span(),
                format!(
                    "child `{id}` needs an actor kind: `process`, `mcp`, `skill`, `agent` or `supervisor`"
                ),
            );
            ActorConfig::Supervisor(Config::default().supervisor)
        };
        let is_supervisor = matches!(actor, ActorConfig::Supervisor(_));
        if let Some(t) = &raw.child_type {
            let expected = if is_supervisor {
                ChildType::Supervisor
            } else {
                ChildType::Worker
            };
            let given = match t.as_str() {
                "worker" => Some(ChildType::Worker),
                "supervisor" => Some(ChildType::Supervisor),
                other => {
                    self.fail(
                        t.span(),
                        format!("unknown type `{other}` (expected worker or supervisor)"),
                    );
                    None
                }
            };
            if given.is_some_and(|g| g != expected) {
                self.fail(
                    t.span(),
                    format!(
                        "child `{id}`: type `{}` does not match its actor kind",
                        t.as_str()
                    ),
                );
            }
        }
        let restart = match raw.restart.as_ref().map(|r| (r.as_str(), r.span())) {
            None | Some(("permanent", _)) => Restart::Permanent,
            Some(("transient", _)) => Restart::Transient,
            Some(("temporary", _)) => Restart::Temporary,
            Some((other, span)) => {
                self.fail(
                    span,
                    format!(
                        "unknown restart `{other}` (expected permanent, transient or temporary)"
                    ),
                );
                Restart::Permanent
            }
        };
        let shutdown = match raw.shutdown.as_ref() {
            None if is_supervisor => Shutdown::Infinity,
            None => Shutdown::Timeout(Duration::from_millis(DEFAULT_WORKER_SHUTDOWN_MS)),
            Some(s) => match s.as_str() {
                "brutal_kill" => Shutdown::BrutalKill,
                "infinity" => Shutdown::Infinity,
                ms => match ms.parse::<u64>() {
                    Ok(ms) => Shutdown::Timeout(Duration::from_millis(ms)),
                    Err(_) => {
                        self.fail(
                            s.span(),
                            format!("shutdown must be brutal_kill, infinity or milliseconds ≥ 0, got `{ms}`"),
                        );
                        Shutdown::Infinity
                    }
                },
            },
        };
        let significant = raw.significant.as_ref().is_some_and(|s| **s);
        if significant {
            let s = raw.significant.as_ref().expect("checked");
            if restart == Restart::Permanent {
                self.fail(
                    s.span(),
                    format!("child `{id}`: a significant child must be transient or temporary"),
                );
            } else if parent.auto_shutdown == AutoShutdown::Never {
                self.fail(
                    s.span(),
                    format!(
                        "child `{id}`: significant children need the supervisor's auto_shutdown \
                         to be any_significant or all_significant"
                    ),
                );
            }
        }
        ChildConfig {
            id,
            restart,
            shutdown,
            significant,
            actor,
        }
    }
}

/// The first mapping key named `name`, depth first, in document order.
fn find_key(node: &marked_yaml::Node, name: &str) -> Option<Marker> {
    match node {
        marked_yaml::Node::Mapping(map) => map.iter().find_map(|(k, v)| {
            if k.as_str() == name {
                k.span().start().copied()
            } else {
                find_key(v, name)
            }
        }),
        marked_yaml::Node::Sequence(seq) => seq.iter().find_map(|v| find_key(v, name)),
        marked_yaml::Node::Scalar(_) => None,
    }
}

fn load_error(file: &str, e: marked_yaml::LoadError) -> ConfigError {
    use marked_yaml::LoadError as E;
    let (mark, message) = match &e {
        E::TopLevelMustBeMapping(m) => (*m, "the top level must be a mapping".to_string()),
        E::TopLevelMustBeSequence(m) => (*m, "the top level must be a sequence".to_string()),
        E::UnexpectedAnchor(m) => (*m, "anchors are not supported".to_string()),
        E::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain values".to_string()),
        E::UnexpectedTag(m) => (*m, "tags are not supported".to_string()),
        E::ScanError(m, s) => (*m, format!("invalid YAML: {s}")),
        E::DuplicateKey(d) => (
            d.key
                .span()
                .start()
                .copied()
                .unwrap_or(Marker::new(0, 0, 1, 1)),
            format!("duplicate key `{}`", d.key.as_str()),
        ),
    };
    ConfigError {
        file: file.to_string(),
        line: mark.line(),
        column: mark.column(),
        message,
    }
}

/// serde's messages use "Unknown field" etc.; keep them but lower-case the first letter to
/// read like the rest of cadre's errors.
fn clean_serde_message(msg: &str) -> String {
    let mut chars = msg.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
