//! The YAML shape of `cadre.yaml` as written: every value spanned, so errors can name its place.

use std::collections::BTreeMap;

use marked_yaml::Spanned;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) version: Option<Spanned<String>>,
    pub(super) node: Option<RawNode>,
    pub(super) api: Option<RawApi>,
    pub(super) store: Option<RawStore>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
    pub(super) sandbox: Option<RawSandbox>,
    pub(super) telemetry: Option<RawTelemetry>,
    pub(super) console: Option<Spanned<RawConsole>>,
    #[serde(default)]
    pub(super) models: Vec<Spanned<RawModel>>,
    pub(super) supervisor: Option<Spanned<RawSupervisor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) id: Spanned<String>,
    pub(super) openai: Spanned<RawOpenAi>,
    pub(super) price: Option<Spanned<RawPrice>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) otlp_endpoint: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    pub(super) listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    pub(super) input_per_million: Spanned<f64>,
    pub(super) output_per_million: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOpenAi {
    pub(super) base_url: Spanned<String>,
    pub(super) model: Spanned<String>,
    pub(super) api_key_env: Option<Spanned<String>>,
    pub(super) timeout_ms: Option<Spanned<i64>>,
    pub(super) ca_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) model: Option<Spanned<String>>,
    pub(super) remote: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) system_prompt: String,
    #[serde(default)]
    pub(super) tools: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) require_approval: Vec<Spanned<String>>,
    pub(super) max_iterations: Option<Spanned<i64>>,
    pub(super) token_budget: Option<Spanned<i64>>,
    pub(super) compact_at_tokens: Option<Spanned<i64>>,
    pub(super) tool_timeout_ms: Option<Spanned<i64>>,
    pub(super) exec_timeout_secs: Option<Spanned<i64>>,
    pub(super) execs_per_minute: Option<Spanned<i64>>,
    pub(super) max_repeats: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    pub(super) provider: Option<Spanned<String>>,
    pub(super) allow_unsandboxed: Option<Spanned<bool>>,
    pub(super) warm_pool: Option<RawWarmPool>,
    pub(super) memory_mib: Option<Spanned<i64>>,
    pub(super) cpus: Option<Spanned<f64>>,
    pub(super) pids: Option<Spanned<i64>>,
    pub(super) workspace_mib: Option<Spanned<i64>>,
    pub(super) min_free_disk_mib: Option<Spanned<i64>>,
    pub(super) kubernetes: Option<Spanned<RawKubernetes>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub(super) image: Spanned<String>,
    pub(super) namespace: Option<Spanned<String>>,
    pub(super) runtime_class: Option<Spanned<String>>,
    pub(super) worker_secret: Option<Spanned<String>>,
    pub(super) tls: RawClusterTls,
    pub(super) kubeconfig: Option<Spanned<String>>,
    pub(super) start_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWarmPool {
    pub(super) min: Option<Spanned<i64>>,
    pub(super) max: Option<Spanned<i64>>,
    pub(super) slots_per_sandbox: Option<Spanned<i64>>,
    pub(super) idle_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) data_dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    #[serde(default)]
    pub(super) tokens: Vec<Spanned<RawToken>>,
    pub(super) max_message_bytes: Option<Spanned<i64>>,
    pub(super) tls: Option<Spanned<RawApiTls>>,
}

/// An entry of `api.tokens`: a mapping, or (the older form) just the secret, an admin token.
pub(super) enum RawToken {
    Secret(String),
    Entry(Box<RawTokenEntry>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenEntry {
    pub(super) name: Spanned<String>,
    pub(super) token: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) role: Spanned<String>,
    pub(super) conversation_prefix: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RawToken;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping {name, token or token_file, role} or a token")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawToken, E> {
                Ok(RawToken::Secret(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawToken, A::Error> {
                RawTokenEntry::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|entry| RawToken::Entry(Box::new(entry)))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiTls {
    pub(super) cert_file: Spanned<String>,
    pub(super) key_file: Spanned<String>,
    pub(super) client_ca_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) embedded: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) cluster: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) foundationdb: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) shared_sqlite: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) max_events_per_conversation: Option<Spanned<i64>>,
    pub(super) warn_percent: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) name: Option<Spanned<String>>,
    pub(super) node: Option<Spanned<String>>,
    pub(super) listen: Option<Spanned<String>>,
    pub(super) advertise: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) seeds: Vec<Spanned<String>>,
    pub(super) cookie_file: Option<Spanned<String>>,
    pub(super) failure_timeout_ms: Option<Spanned<i64>>,
    pub(super) tls: Option<Spanned<RawClusterTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClusterTls {
    pub(super) cert_file: Spanned<String>,
    pub(super) key_file: Spanned<String>,
    pub(super) ca_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSupervisor {
    pub(super) strategy: Option<Spanned<String>>,
    pub(super) intensity: Option<Spanned<i64>>,
    pub(super) period_secs: Option<Spanned<i64>>,
    pub(super) auto_shutdown: Option<Spanned<String>>,
    pub(super) max_children: Option<Spanned<i64>>,
    pub(super) backoff: Option<RawBackoff>,
    #[serde(default)]
    pub(super) children: Vec<Spanned<RawChild>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub(super) initial_ms: Spanned<i64>,
    pub(super) max_ms: Spanned<i64>,
    pub(super) jitter: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChild {
    pub(super) id: Spanned<String>,
    pub(super) restart: Option<Spanned<String>>,
    pub(super) shutdown: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub(super) child_type: Option<Spanned<String>>,
    pub(super) significant: Option<Spanned<bool>>,
    pub(super) process: Option<Spanned<RawProcess>>,
    pub(super) mcp: Option<Spanned<RawMcp>>,
    pub(super) skill: Option<Spanned<RawSkill>>,
    pub(super) agent: Option<Spanned<RawAgent>>,
    pub(super) supervisor: Option<Spanned<RawSupervisor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSkill {
    pub(super) path: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) tenant: Option<Spanned<String>>,
    pub(super) isolation: Option<Spanned<String>>,
    pub(super) egress: Option<Spanned<bool>>,
    pub(super) timeout_ms: Option<Spanned<i64>>,
    pub(super) start_timeout_ms: Option<Spanned<i64>>,
    pub(super) ca_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcess {
    pub(super) command: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<Spanned<String>>,
}
