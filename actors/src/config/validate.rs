//! Validation: the raw YAML shape into the validated config, with `FILE:LINE:COL` errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::{Marker, Span, Spanned};

use crate::access::{Role, check_conversation_prefix};
use crate::agent::AgentSpec;
use crate::controller::HistoryLimits;
use crate::mcp::{McpServer, McpSpec};
use crate::model::{ModelPrice, ModelSpec};
use crate::process::ProcessSpec;
use crate::skills::SkillSpec;
use crate::spec::{AutoShutdown, Backoff, ChildType, Restart, Shutdown, Strategy, SupervisorFlags};

use super::raw::*;
use super::*;

/// Why `secret` cannot be a bearer token, if it cannot: it must be non-empty, without spaces or
/// control characters (it travels in an HTTP header).
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.is_empty() || secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a token must be non-empty with no spaces".into());
    }
    Ok(())
}

/// Parses YAML into `R`, then validates it with `check`; the first error wins.
/// Checks the form of a listen address, `HOST:PORT` (a host name, an IPv4 address or a
/// bracketed IPv6 address, and a port 0-65535), without resolving the host.
pub fn check_listen(listen: &str) -> Result<(), String> {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return Err(format!(
            "`{listen}` is not an address like 127.0.0.1:7400 (no port)"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "`{listen}`: the port `{port}` is not a number 0-65535"
        ));
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !name_ok {
        return Err(format!(
            "`{listen}`: `{host}` is not a host name or IP address"
        ));
    }
    Ok(())
}

/// The longest child (actor, agent) id.
const MAX_CHILD_ID_LEN: usize = 200;

pub(super) fn parse_with<R: serde::de::DeserializeOwned, T>(
    file: &str,
    text: &str,
    base: Option<&Path>,
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
    if let Some(line) = second_document(text) {
        return Err(ConfigError {
            file: file.to_string(),
            line,
            column: 1,
            message: "a second YAML document (`---`): a config is one document".into(),
        });
    }
    let node = marked_yaml::parse_yaml_with_options(
        0,
        text,
        marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true),
    )
    .map_err(|e| load_error(file, e))?;
    let raw: R = marked_yaml::from_node(&node).map_err(|e| {
        let path = e.path().unwrap_or_default().to_string();
        let message = clean_serde_message(&(*e).to_string());
        match &*e {
            // Said of the mapping that has it, at its key (which errors raised through
            // `Spanned<…>` wrappers lose: it is found again by its path).
            marked_yaml::Error::UnknownFieldError(..) => {
                let mark = entry_at(&node, &path)
                    .and_then(|(key, _)| key)
                    .or_else(|| e.start_mark());
                let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or_default();
                err(
                    mark.map(Span::new_start).as_ref(),
                    with_path(parent, message),
                )
            }
            // At the value the path names, where it can be found.
            _ => {
                let mark = entry_at(&node, &path)
                    .and_then(|(_, value)| value.span().start().copied())
                    .or_else(|| e.start_mark());
                err(
                    mark.map(Span::new_start).as_ref(),
                    with_path(&path, message),
                )
            }
        }
    })?;
    let mut checker = Checker {
        errors: Vec::new(),
        base: base.map(Path::to_path_buf),
    };
    let value = check(&mut checker, raw);
    match checker.errors.into_iter().next() {
        Some((span, message)) => {
            // Name the field the error is at, as serde's errors do.
            let path = span
                .start()
                .and_then(|at| path_at(&node, at, String::new()));
            let message = match path {
                // A missing field is said of its parent, at the place given.
                Some(path) if !message.starts_with("missing") => with_path(&path, message),
                _ => message,
            };
            Err(err(Some(&span), message))
        }
        None => Ok(value),
    }
}

/// `PATH: message`, unless the path is empty or the message already starts with it; a message
/// that starts with `PATH: ` or with the field's own name does not say it twice.
fn with_path(path: &str, message: String) -> String {
    if path.is_empty() {
        return message;
    }
    let field = path.rsplit(['.', ']']).next().unwrap_or_default();
    if message.starts_with(&format!("{path} ")) {
        return message;
    }
    let message = message
        .strip_prefix(&format!("{path}: "))
        .or_else(|| message.strip_prefix(&format!("{field}: ")))
        .unwrap_or(&message);
    format!("{path}: {message}")
}

/// The entry at `path` (`supervisor.children[0].id`): where its key starts, and its value.
fn entry_at<'a>(
    node: &'a marked_yaml::Node,
    path: &str,
) -> Option<(Option<Marker>, &'a marked_yaml::Node)> {
    let mut here = node;
    let mut key = None;
    for segment in path.split('.') {
        let (name, indexes) = segment.split_once('[').unwrap_or((segment, ""));
        let map = here.as_mapping()?;
        let (k, v) = map.iter().find(|(k, _)| k.as_str() == name)?;
        key = k.span().start().copied();
        here = v;
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().ok()?;
            here = here.as_sequence()?.get(i)?;
        }
    }
    Some((key, here))
}

/// The field path (`supervisor.children[0].shutdown`) of the key or value that starts at `at`.
fn path_at(node: &marked_yaml::Node, at: &Marker, here: String) -> Option<String> {
    let starts_at = |span: &Span| span.start().is_some_and(|m| m == at);
    if starts_at(node.span()) && !matches!(node, marked_yaml::Node::Mapping(_)) {
        return Some(here);
    }
    match node {
        marked_yaml::Node::Mapping(map) => map.iter().find_map(|(k, v)| {
            let path = if here.is_empty() {
                k.as_str().to_string()
            } else {
                format!("{here}.{}", k.as_str())
            };
            if starts_at(k.span()) {
                Some(path)
            } else {
                path_at(v, at, path)
            }
        }),
        marked_yaml::Node::Sequence(seq) => seq
            .iter()
            .enumerate()
            .find_map(|(i, v)| path_at(v, at, format!("{here}[{i}]"))),
        marked_yaml::Node::Scalar(_) => None,
    }
}

/// Where a second YAML document starts, if the text has one: a config is one document (a
/// `---` before any content only marks the start of the first).
fn second_document(text: &str) -> Option<usize> {
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker && content {
            return Some(i + 1);
        }
        let trimmed = line.trim();
        if !marker && !trimmed.is_empty() && !trimmed.starts_with('#') {
            content = true;
        }
    }
    None
}

/// Walks the raw config, collecting errors with their spans (the first one is reported).
pub(super) struct Checker {
    errors: Vec<(Span, String)>,
    /// The config file's directory: relative paths are resolved against it, and the files
    /// they name are read now, as the node would at start. `None` for text without a file (a
    /// spawned spec): paths are left as written.
    base: Option<PathBuf>,
}

impl Checker {
    fn fail(&mut self, span: &Span, message: String) {
        self.errors.push((*span, message));
    }

    /// `path` against the config file's directory, if it is relative and there is one.
    fn resolve(&self, path: &str) -> PathBuf {
        match &self.base {
            Some(base) if Path::new(path).is_relative() => base.join(path),
            _ => PathBuf::from(path),
        }
    }

    /// A process command with its program resolved: a path with a `/` against the config's
    /// directory (a bare name is looked up in `PATH` when it runs), checked to exist.
    fn program(&mut self, id: &str, command: &Spanned<Vec<String>>) -> Vec<String> {
        let mut resolved = command.to_vec();
        if let Some(program) = resolved.first_mut()
            && program.contains('/')
            && self.base.is_some()
        {
            let path = self.resolve(program);
            if !path.is_file() {
                self.fail(
                    command.span(),
                    format!("child `{id}`: program `{}` not found", path.display()),
                );
            }
            *program = path.display().to_string();
        }
        resolved
    }

    /// The `ca_file` of an endpoint at `url`: for `https://` only, resolved against the
    /// config's folder and read now, as the node would at start.
    fn ca_file(&mut self, url: &str, ca_file: Option<&Spanned<String>>) -> Option<PathBuf> {
        let given = ca_file?;
        if !url.starts_with("https://") {
            self.fail(given.span(), "ca_file is for an https:// endpoint".into());
            return None;
        }
        let path = self.resolve(given);
        if self.base.is_some()
            && let Err(e) = crate::tls::read_certs(&path)
        {
            self.fail(given.span(), e.to_string());
        }
        Some(path)
    }

    /// `api.tls`: its files resolved against the config's folder and read now, as the node
    /// would at start.
    fn api_tls(&mut self, raw: &RawApiTls) -> ApiTls {
        let cert_file = self.resolve(&raw.cert_file);
        let key_file = self.resolve(&raw.key_file);
        let client_ca_file = raw.client_ca_file.as_ref().map(|f| self.resolve(f));
        if self.base.is_some() {
            if let Err(e) = crate::tls::read_certs(&cert_file) {
                self.fail(raw.cert_file.span(), e.to_string());
            }
            if let Err(e) = crate::tls::read_key(&key_file) {
                self.fail(raw.key_file.span(), e.to_string());
            }
            if let (Some(given), Some(path)) = (&raw.client_ca_file, &client_ca_file)
                && let Err(e) = crate::tls::read_certs(path)
            {
                self.fail(given.span(), e.to_string());
            }
        }
        ApiTls {
            cert_file,
            key_file,
            client_ca_file,
        }
    }

    /// `api.tokens`: each with a unique name and secret; a plain string is an admin token named
    /// by its place.
    fn api_tokens(&mut self, raw: &[Spanned<RawToken>]) -> Vec<ApiToken> {
        let mut tokens: Vec<ApiToken> = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let token = match &**entry {
                RawToken::Secret(secret) => ApiToken {
                    name: format!("api.tokens[{i}]"),
                    secret: secret.clone(),
                    role: Role::Admin,
                    conversation_prefix: None,
                },
                RawToken::Entry(e) => {
                    let Some(token) = self.api_token(e) else {
                        continue;
                    };
                    token
                }
            };
            if let Err(why) = check_secret(&token.secret) {
                self.fail(entry.span(), format!("token `{}`: {why}", token.name));
                continue;
            }
            if tokens.iter().any(|t| t.name == token.name) {
                self.fail(
                    entry.span(),
                    format!("token name `{}` is used twice", token.name),
                );
            } else if let Some(other) = tokens.iter().find(|t| t.secret == token.secret) {
                self.fail(
                    entry.span(),
                    format!(
                        "token `{}` has the same secret as `{}` (a secret names one caller)",
                        token.name, other.name
                    ),
                );
            }
            tokens.push(token);
        }
        tokens
    }

    fn api_token(&mut self, raw: &RawTokenEntry) -> Option<ApiToken> {
        let name = raw.name.as_str();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.fail(
                raw.name.span(),
                format!("name `{name}`: use letters, digits, `-`, `_` and `.`"),
            );
            return None;
        }
        let Some(role) = Role::parse(&raw.role) else {
            let known: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
            self.fail(
                raw.role.span(),
                format!(
                    "token `{name}`: unknown role `{}` (expected {})",
                    raw.role.as_str(),
                    known.join(", ")
                ),
            );
            return None;
        };
        let secret = match (&raw.token, &raw.token_file) {
            (Some(token), None) => token.to_string(),
            (None, Some(file)) => {
                let path = self.resolve(file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => text.trim().to_string(),
                    Err(e) => {
                        self.fail(
                            file.span(),
                            format!("token `{name}`: token_file {}: {e}", path.display()),
                        );
                        return None;
                    }
                }
            }
            (Some(token), Some(_)) => {
                self.fail(
                    token.span(),
                    format!("token `{name}`: give `token` or `token_file`, not both"),
                );
                return None;
            }
            (None, None) => {
                self.fail(
                    raw.name.span(),
                    format!("token `{name}`: give its secret as `token` or `token_file`"),
                );
                return None;
            }
        };
        let conversation_prefix = match (&raw.conversation_prefix, role) {
            (Some(prefix), Role::AgentUser) => {
                if let Err(why) = check_conversation_prefix(prefix) {
                    self.fail(
                        prefix.span(),
                        format!("token `{name}`: conversation_prefix {why}"),
                    );
                }
                Some(prefix.to_string())
            }
            (None, Role::AgentUser) => {
                self.fail(
                    raw.role.span(),
                    format!(
                        "token `{name}`: an agent-user needs a conversation_prefix (the \
                         conversations it may use)"
                    ),
                );
                None
            }
            (Some(prefix), _) => {
                self.fail(
                    prefix.span(),
                    format!(
                        "token `{name}`: conversation_prefix is for role agent-user (a {role} \
                         uses every conversation)"
                    ),
                );
                None
            }
            (None, _) => None,
        };
        Some(ApiToken {
            name: name.to_string(),
            secret,
            role,
            conversation_prefix,
        })
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
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
        if let Some(listen) = raw.node.as_ref().and_then(|n| n.listen.as_ref())
            && let Err(why) = check_listen(listen.as_str())
        {
            self.fail(listen.span(), format!("node.listen: {why}"));
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
        let cluster = raw.cluster.as_ref().and_then(|c| self.cluster(c));
        if let Some(fdb) = raw.store.as_ref().and_then(|s| s.foundationdb.as_ref())
            && raw.cluster.is_none()
        {
            self.fail(
                fdb.span(),
                "store.foundationdb needs a `cluster` section: every node of the cluster can be \
                 its controller, and the cluster's name names its keys' directory"
                    .into(),
            );
        }
        if let Some(shared) = raw.store.as_ref().and_then(|s| s.shared_sqlite.as_ref())
            && raw.cluster.is_none()
        {
            self.fail(
                shared.span(),
                "store.shared_sqlite needs a `cluster` section: every node of the cluster can \
                 be its controller"
                    .into(),
            );
        }
        if let Some(in_cluster) = raw.store.as_ref().and_then(|s| s.cluster.as_ref())
            && raw.cluster.is_none()
        {
            self.fail(
                in_cluster.span(),
                "store.cluster needs a `cluster` section: the log is the cluster's controller \
                 node's"
                    .into(),
            );
        }
        let sandbox = raw
            .sandbox
            .as_ref()
            .map(|s| self.sandbox(s))
            .unwrap_or_default();
        let mut api = ApiConfig::default();
        if let Some(raw_api) = &raw.api {
            api.tokens = self.api_tokens(&raw_api.tokens);
        }
        if let Some(max) = raw.api.as_ref().and_then(|a| a.max_message_bytes.as_ref()) {
            match usize::try_from(**max) {
                Ok(bytes) if (1024..=(1 << 30)).contains(&bytes) => api.max_message_bytes = bytes,
                _ => self.fail(
                    max.span(),
                    format!(
                        "api.max_message_bytes: {} is out of range (1024 to 1073741824 bytes)",
                        **max
                    ),
                ),
            }
        }
        if let Some(tls) = raw.api.as_ref().and_then(|a| a.tls.as_ref()) {
            api.tls = Some(self.api_tls(tls));
        }
        let telemetry = raw
            .telemetry
            .as_ref()
            .map(|t| self.telemetry(t))
            .unwrap_or_default();
        let console = raw.console.as_ref().map(|c| {
            if let Err(why) = check_listen(c.listen.as_str()) {
                self.fail(c.listen.span(), format!("console.listen: {why}"));
            }
            ConsoleConfig {
                listen: c.listen.to_string(),
            }
        });
        Config {
            node,
            api,
            store,
            cluster,
            sandbox,
            telemetry,
            console,
            models,
            supervisor,
        }
    }

    fn telemetry(&mut self, raw: &RawTelemetry) -> TelemetryConfig {
        if let Some(listen) = &raw.metrics_listen
            && let Err(why) = check_listen(listen.as_str())
        {
            self.fail(listen.span(), format!("telemetry.metrics_listen: {why}"));
        }
        if let Some(endpoint) = &raw.otlp_endpoint
            && !endpoint.starts_with("http://")
            && !endpoint.starts_with("https://")
        {
            self.fail(
                endpoint.span(),
                format!(
                    "telemetry.otlp_endpoint: `{}` is not an http:// or https:// URL (OTLP over \
                     gRPC, e.g. http://127.0.0.1:4317)",
                    endpoint.as_str()
                ),
            );
        }
        TelemetryConfig {
            metrics_listen: raw.metrics_listen.as_ref().map(|l| l.to_string()),
            otlp_endpoint: raw.otlp_endpoint.as_ref().map(|e| e.to_string()),
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
            if !o.base_url.starts_with("http://") && !o.base_url.starts_with("https://") {
                self.fail(
                    o.base_url.span(),
                    format!("model `{id}`: openai.base_url must be an http:// or https:// URL"),
                );
            }
            let ca_file = self.ca_file(&o.base_url, o.ca_file.as_ref());
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
            let price = m.price.as_ref().map(|p| {
                for (name, v) in [
                    ("input_per_million", &p.input_per_million),
                    ("output_per_million", &p.output_per_million),
                ] {
                    if !v.is_finite() || **v < 0.0 {
                        self.fail(
                            v.span(),
                            format!(
                                "model `{id}`: price.{name} must be a number ≥ 0, got {}",
                                **v
                            ),
                        );
                    }
                }
                ModelPrice {
                    input_per_million: *p.input_per_million,
                    output_per_million: *p.output_per_million,
                }
            });
            models.push(ModelSpec {
                price,
                id: id.to_string(),
                base_url: o.base_url.to_string(),
                model: o.model.to_string(),
                api_key_env: o.api_key_env.as_ref().map(|k| k.to_string()),
                timeout,
                ca_file,
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
                "kubernetes" => {
                    config.provider = SandboxKind::Kubernetes;
                    if raw.kubernetes.is_none() {
                        self.fail(
                            p.span(),
                            "sandbox.provider `kubernetes` needs a `sandbox.kubernetes` section \
                             (at least `image` and `tls`)"
                                .into(),
                        );
                    }
                }
                other => self.fail(
                    p.span(),
                    format!(
                        "unknown sandbox.provider `{other}` (expected gvisor, process or \
                         kubernetes)"
                    ),
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
        if let Some(p) = &raw.pids {
            if **p < 16 {
                self.fail(p.span(), format!("sandbox.pids must be ≥ 16, got {}", **p));
            } else {
                config.pids = Some(**p as u64);
            }
        }
        if let Some(w) = &raw.workspace_mib {
            if **w < 16 {
                self.fail(
                    w.span(),
                    format!("sandbox.workspace_mib must be ≥ 16, got {}", **w),
                );
            } else {
                config.workspace_bytes = Some((**w as u64) << 20);
            }
        }
        if let Some(f) = &raw.min_free_disk_mib {
            if **f < 0 {
                self.fail(
                    f.span(),
                    format!("sandbox.min_free_disk_mib must be ≥ 0, got {}", **f),
                );
            } else {
                config.min_free_disk_bytes = (**f as u64) << 20;
            }
        }
        if let Some(k) = &raw.kubernetes {
            if config.provider != SandboxKind::Kubernetes {
                self.fail(
                    k.span(),
                    "sandbox.kubernetes is for `provider: kubernetes`".into(),
                );
            }
            config.kubernetes = Some(self.kubernetes(k));
        }
        config
    }

    fn kubernetes(&mut self, raw: &RawKubernetes) -> KubernetesSandbox {
        if raw.image.trim().is_empty() {
            self.fail(
                raw.image.span(),
                "sandbox.kubernetes.image must name the worker image".into(),
            );
        }
        let dns_name = |s: &str| {
            (1..=63).contains(&s.len())
                && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        for (field, value) in [
            ("namespace", &raw.namespace),
            ("worker_secret", &raw.worker_secret),
            ("runtime_class", &raw.runtime_class),
        ] {
            if let Some(v) = value
                && !(v.is_empty() && field == "runtime_class")
                && !dns_name(v)
            {
                self.fail(
                    v.span(),
                    format!(
                        "sandbox.kubernetes.{field} `{}` is not a Kubernetes name (1 to 63 \
                         lowercase letters, digits and `-`)",
                        **v
                    ),
                );
            }
        }
        let start_timeout = match &raw.start_timeout_ms {
            Some(t) if **t < 1000 => {
                self.fail(
                    t.span(),
                    format!(
                        "sandbox.kubernetes.start_timeout_ms must be ≥ 1000, got {}",
                        **t
                    ),
                );
                DEFAULT_POD_START_TIMEOUT
            }
            Some(t) => Duration::from_millis(**t as u64),
            None => DEFAULT_POD_START_TIMEOUT,
        };
        KubernetesSandbox {
            image: raw.image.to_string(),
            namespace: raw.namespace.as_ref().map(|n| n.to_string()),
            runtime_class: match &raw.runtime_class {
                Some(r) if r.is_empty() => None,
                Some(r) => Some(r.to_string()),
                None => Some(DEFAULT_RUNTIME_CLASS.to_string()),
            },
            worker_secret: raw
                .worker_secret
                .as_ref()
                .map_or_else(|| DEFAULT_WORKER_SECRET.to_string(), |s| s.to_string()),
            tls: self.tls_files(&raw.tls),
            kubeconfig: raw.kubeconfig.as_ref().map(|k| self.resolve(k)),
            start_timeout,
        }
    }

    /// A certificate, its key and a CA, each checked to read as PEM when the config is a file.
    fn tls_files(&mut self, t: &RawClusterTls) -> ClusterTls {
        let files = ClusterTls {
            cert_file: self.resolve(&t.cert_file),
            key_file: self.resolve(&t.key_file),
            ca_file: self.resolve(&t.ca_file),
        };
        if self.base.is_some() {
            if let Err(e) = crate::tls::read_certs(&files.cert_file) {
                self.fail(t.cert_file.span(), e.to_string());
            }
            if let Err(e) = crate::tls::read_key(&files.key_file) {
                self.fail(t.key_file.span(), e.to_string());
            }
            if let Err(e) = crate::tls::read_certs(&files.ca_file) {
                self.fail(t.ca_file.span(), e.to_string());
            }
        }
        files
    }

    fn store(&mut self, raw: &RawStore) -> StoreConfig {
        let mut limits = HistoryLimits::default();
        let mut kind = StoreKind::Embedded;
        if let Some(e) = &raw.embedded
            && !e.is_empty()
        {
            self.fail(e.span(), "store.embedded takes no options (use {})".into());
        }
        if let Some(c) = &raw.cluster {
            kind = StoreKind::Cluster;
            if !c.is_empty() {
                self.fail(c.span(), "store.cluster takes no options (use {})".into());
            }
            if raw.embedded.is_some() {
                self.fail(
                    c.span(),
                    "store: give `embedded` (this node holds the log) or `cluster` (the \
                     controller node does), not both"
                        .into(),
                );
            }
        }
        let kinds = [
            raw.embedded.is_some(),
            raw.cluster.is_some(),
            raw.foundationdb.is_some(),
            raw.shared_sqlite.is_some(),
        ];
        if let Some(s) = &raw.shared_sqlite {
            if kinds.iter().filter(|k| **k).count() > 1 {
                self.fail(
                    s.span(),
                    "store: give one of `embedded`, `cluster`, `foundationdb` or \
                     `shared_sqlite`"
                        .into(),
                );
            }
            if let Some(shared) = self.shared_sqlite(s) {
                kind = StoreKind::SharedSqlite(shared);
            }
        }
        if let Some(f) = &raw.foundationdb {
            if raw.embedded.is_some() || raw.cluster.is_some() {
                self.fail(
                    f.span(),
                    "store: give one of `embedded`, `cluster`, `foundationdb` or \
                     `shared_sqlite`"
                        .into(),
                );
            }
            if cfg!(feature = "foundationdb") {
                if let Some(fdb) = self.foundationdb(f) {
                    kind = StoreKind::Foundationdb(fdb);
                }
            } else {
                self.fail(
                    f.span(),
                    "store.foundationdb is not available in this build of cadre (build it with \
                     `--features foundationdb`); use store.embedded"
                        .into(),
                );
            }
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
        StoreConfig { kind, limits }
    }

    /// A lease TTL (`lease_ttl_ms` of `section`), if valid (else reported).
    fn lease_ttl(
        &mut self,
        section: &str,
        span: &Span,
        value: &str,
    ) -> Option<std::time::Duration> {
        match value.parse::<u64>() {
            Ok(ms) if (1000..=60_000).contains(&ms) => Some(std::time::Duration::from_millis(ms)),
            _ => {
                self.fail(
                    span,
                    format!("store.{section}.lease_ttl_ms must be 1000 to 60000, got {value}"),
                );
                None
            }
        }
    }

    /// `store.shared_sqlite`; `None` if it has errors (they are reported).
    fn shared_sqlite(
        &mut self,
        raw: &Spanned<std::collections::BTreeMap<String, String>>,
    ) -> Option<SharedSqliteStore> {
        let errors = self.errors.len();
        let mut path = None;
        let mut lease_ttl = DEFAULT_LEASE_TTL;
        for (key, value) in raw.iter() {
            match key.as_str() {
                "path" => path = Some(self.resolve(value)),
                "lease_ttl_ms" => {
                    if let Some(ttl) = self.lease_ttl("shared_sqlite", raw.span(), value) {
                        lease_ttl = ttl;
                    }
                }
                other => self.fail(
                    raw.span(),
                    format!(
                        "store.shared_sqlite: unknown field `{other}` (known: path, lease_ttl_ms)"
                    ),
                ),
            }
        }
        if path.is_none() {
            self.fail(
                raw.span(),
                "store.shared_sqlite.path is required: the SQLite file the nodes share".into(),
            );
        }
        (self.errors.len() == errors).then(|| SharedSqliteStore {
            path: path.unwrap_or_default(),
            lease_ttl,
        })
    }

    /// `store.foundationdb`; `None` if it has errors (they are reported).
    fn foundationdb(
        &mut self,
        raw: &Spanned<std::collections::BTreeMap<String, String>>,
    ) -> Option<FoundationdbStore> {
        let errors = self.errors.len();
        let mut fdb = FoundationdbStore {
            cluster_file: PathBuf::from(DEFAULT_FDB_CLUSTER_FILE),
            prefix: "cadre".into(),
            lease_ttl: DEFAULT_LEASE_TTL,
        };
        for (key, value) in raw.iter() {
            match key.as_str() {
                "cluster_file" => fdb.cluster_file = self.resolve(value),
                "prefix" if value.is_empty() => self.fail(
                    raw.span(),
                    "store.foundationdb.prefix: must not be empty".into(),
                ),
                "prefix" => fdb.prefix = value.to_string(),
                "lease_ttl_ms" => {
                    if let Some(ttl) = self.lease_ttl("foundationdb", raw.span(), value) {
                        fdb.lease_ttl = ttl;
                    }
                }
                other => self.fail(
                    raw.span(),
                    format!(
                        "store.foundationdb: unknown field `{other}` (known: cluster_file, \
                         prefix, lease_ttl_ms)"
                    ),
                ),
            }
        }
        (self.errors.len() == errors).then_some(fdb)
    }

    /// The `cluster` section; `None` if it has errors (they are reported).
    fn cluster(&mut self, raw: &Spanned<RawCluster>) -> Option<ClusterConfig> {
        let errors = self.errors.len();
        let name = match &raw.name {
            Some(n) => {
                if let Err(why) = check_node_name(n) {
                    self.fail(n.span(), format!("cluster.name: {why}"));
                }
                n.to_string()
            }
            None => "cadre".to_string(),
        };
        let node = match &raw.node {
            Some(n) => {
                if let Err(why) = check_node_name(n) {
                    self.fail(n.span(), format!("cluster.node: {why}"));
                }
                n.to_string()
            }
            None => host_name(),
        };
        let listen = match &raw.listen {
            Some(l) => match l.parse::<std::net::SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    self.fail(
                        l.span(),
                        format!(
                            "cluster.listen: `{}` is not an IP address and port like \
                             0.0.0.0:7500",
                            l.as_str()
                        ),
                    );
                    DEFAULT_CLUSTER_LISTEN.parse().expect("a socket address")
                }
            },
            None => DEFAULT_CLUSTER_LISTEN.parse().expect("a socket address"),
        };
        if let Some(a) = &raw.advertise
            && let Err(why) = check_listen(&format!("{}:1", a.as_str()))
        {
            self.fail(a.span(), format!("cluster.advertise: {why}"));
        }
        for seed in &raw.seeds {
            if let Err(why) = check_listen(seed) {
                self.fail(seed.span(), format!("cluster.seeds: {why}"));
            }
        }
        let cookie_file = match &raw.cookie_file {
            Some(f) => {
                let path = self.resolve(f);
                if self.base.is_some() {
                    match read_cookie(&path) {
                        Ok(_) => {}
                        Err(why) => self.fail(f.span(), format!("cluster.cookie_file: {why}")),
                    }
                }
                path
            }
            None => {
                self.fail(
                    raw.span(),
                    "cluster.cookie_file is required: the nodes of a cluster prove they \
                     belong to it with the secret it holds"
                        .into(),
                );
                PathBuf::new()
            }
        };
        let failure_timeout = match &raw.failure_timeout_ms {
            Some(t) if !(200..=60_000).contains(&**t) => {
                self.fail(
                    t.span(),
                    format!(
                        "cluster.failure_timeout_ms must be 200 to 60000, got {}",
                        **t
                    ),
                );
                DEFAULT_FAILURE_TIMEOUT
            }
            Some(t) => Duration::from_millis(**t as u64),
            None => DEFAULT_FAILURE_TIMEOUT,
        };
        let tls = raw.tls.as_ref().map(|t| self.tls_files(t));
        (self.errors.len() == errors).then(|| ClusterConfig {
            name,
            node,
            listen,
            advertise: raw.advertise.as_ref().map(|a| a.to_string()),
            seeds: raw.seeds.iter().map(|s| s.to_string()).collect(),
            cookie_file,
            failure_timeout,
            tls,
        })
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
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    self.fail(
                        url.span(),
                        format!("child `{id}`: mcp.url must be an http:// or https:// URL"),
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
                    ca_file: self.ca_file(url, raw.ca_file.as_ref()),
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

    pub(super) fn child(
        &mut self,
        raw: &Spanned<RawChild>,
        parent: &SupervisorFlags,
    ) -> ChildConfig {
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
        if id.len() > MAX_CHILD_ID_LEN {
            self.fail(
                raw.id.span(),
                format!(
                    "id: {} characters, at most {MAX_CHILD_ID_LEN}",
                    id.chars().count()
                ),
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
            let cwd = p.cwd.as_ref().map(|cwd| {
                let dir = self.resolve(cwd);
                if self.base.is_some() && !dir.is_dir() {
                    self.fail(
                        cwd.span(),
                        format!(
                            "child `{id}`: process.cwd `{}` is not a directory",
                            dir.display()
                        ),
                    );
                }
                dir
            });
            ActorConfig::Process(ProcessSpec {
                command: self.program(&id, &p.command),
                env: p.env.clone().into_iter().collect(),
                cwd,
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
            let path = self.resolve(&s.path);
            // Read now, as the node would at start: a bad skill fails `config check`.
            if self.base.is_some()
                && !s.path.is_empty()
                && let Err(e) = crate::skills::load(&path, "")
            {
                self.fail(s.path.span(), format!("child `{id}`: {e}"));
            }
            ActorConfig::Skill(SkillSpec { path })
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
    // What Rust's integer parsing says, in words a config's author reads.
    let msg = msg
        .replace(
            "invalid digit found in string",
            "expected a whole number (digits only)",
        )
        .replace(
            "number too large to fit in target type",
            "number too large for this field",
        );
    let mut chars = msg.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
