//! The node's Prometheus metrics: one registry per process ([`metrics()`]), counted where the
//! work happens and encoded in the OpenMetrics text format for `/metrics`.
//!
//! Names follow Prometheus's conventions: a `cadre_` prefix, base units (seconds), `_total`
//! on counters (added by the encoder). Gauges of state held elsewhere (the pool's sandboxes,
//! the cluster's members, the log's queue) are read when a scrape asks, by samplers the
//! owners register ([`Metrics::sample_with`]), so they are never stale and cost nothing between
//! scrapes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Where each exec's agent runs: their restarts share one label.
const EXEC_AGENTS: &str = "system/agents/";

static COUNTING: AtomicBool = AtomicBool::new(false);

/// Turns counting on (a node serving `/metrics` does): until then every recording is a
/// single relaxed load, so a node nobody scrapes pays nothing.
pub fn enable() {
    COUNTING.store(true, Ordering::Relaxed);
}

/// Whether metrics are counted.
pub fn enabled() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Every metric a node exports.
pub struct Metrics {
    registry: Registry,
    samplers: Mutex<BTreeMap<&'static str, Sampler>>,
    /// Execs started on this node, by agent (`echo` for the built-in one).
    pub execs_started: Family<AgentLabels, Counter>,
    /// Execs that ended on this node, by agent and final state.
    pub execs_ended: Family<ExecEndLabels, Counter>,
    /// From an exec's start (or its resumption on this node) to its end, by agent.
    pub exec_duration: Family<AgentLabels, Histogram, fn() -> Histogram>,
    /// One model request (each attempt), by model id.
    pub model_request_duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    /// Tokens the models reported, by agent, model and kind (`input`, `output`).
    pub model_tokens: Family<TokenLabels, Counter>,
    /// What the tokens cost, in the currency of `models[].price`, by agent and model.
    pub model_cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    /// One tool call (MCP, skill, built-in), by tool.
    pub tool_call_duration: Family<ToolLabels, Histogram, fn() -> Histogram>,
    /// Tool calls that failed or whose tool reported an error, by tool.
    pub tool_call_errors: Family<ToolLabels, Counter>,
    /// Restarts a supervisor made, by the restarted child's path.
    pub supervisor_restarts: Family<PathLabels, Counter>,
    /// Supervisors that exceeded their restart intensity, by path.
    pub supervisor_escalations: Family<PathLabels, Counter>,
    /// From an append's arrival at the controller to its answer (after the commit).
    pub log_append_duration: Histogram,
    /// One group commit (its store transaction and fsync).
    pub log_commit_duration: Histogram,
    /// Appends per group commit.
    pub log_batch_size: Histogram,
    /// Appends waiting for the writer (sampled).
    pub log_queue_depth: Gauge,
    /// Live subscriptions to conversations (sampled).
    pub log_subscriptions: Gauge,
    /// Sandboxes by provider and state (sampled).
    pub sandboxes: Family<SandboxLabels, Gauge>,
    /// Logical actors activated on this node.
    pub activations: Counter,
    /// Logical actors passivated on this node.
    pub passivations: Counter,
    /// The cluster's members as this node sees them, by state (sampled).
    pub cluster_members: Family<MemberLabels, Gauge>,
}

/// Sets sampled gauges from the state its owner holds; answers `false` once that owner is gone
/// (then it is dropped).
pub type Sampler = Box<dyn Fn(&Metrics) -> bool + Send + Sync>;

/// `agent`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    /// The agent's id.
    pub agent: String,
}

/// `agent`, `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecEndLabels {
    /// The agent's id.
    pub agent: String,
    /// `completed`, `failed` or `cancelled`.
    pub state: String,
}

/// `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model's id in `models:`.
    pub model: String,
}

/// `agent`, `model`, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The agent's id.
    pub agent: String,
    /// The model's id.
    pub model: String,
    /// `input` or `output`.
    pub kind: &'static str,
}

/// `agent`, `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    /// The agent's id.
    pub agent: String,
    /// The model's id.
    pub model: String,
}

/// `tool`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// The tool's name, `server.tool`.
    pub tool: String,
}

/// `path`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// The actor's path, `root/tools/time`.
    pub path: String,
}

/// `provider`, `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SandboxLabels {
    /// `gvisor`, `process` or `kubernetes`.
    pub provider: String,
    /// The pool's word for it: `warm`, `leased`, `suspended`…
    pub state: String,
}

/// `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// `up`, `suspect` or `down`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Seconds, 1 ms to about 10 min: execs, model requests and tool calls.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 15))
}

/// Seconds, 20 µs to about 1.3 s: the log's appends and commits.
fn log_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00002, 2.0, 17))
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            samplers: Mutex::default(),
            execs_started: Family::default(),
            execs_ended: Family::default(),
            exec_duration: Family::new_with_constructor(seconds_histogram),
            model_request_duration: Family::new_with_constructor(seconds_histogram),
            model_tokens: Family::default(),
            model_cost: Family::default(),
            tool_call_duration: Family::new_with_constructor(seconds_histogram),
            tool_call_errors: Family::default(),
            supervisor_restarts: Family::default(),
            supervisor_escalations: Family::default(),
            log_append_duration: log_histogram(),
            log_commit_duration: log_histogram(),
            log_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            log_queue_depth: Gauge::default(),
            log_subscriptions: Gauge::default(),
            sandboxes: Family::default(),
            activations: Counter::default(),
            passivations: Counter::default(),
            cluster_members: Family::default(),
        };
        m.registered()
    }

    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "cadre_build",
            "The running build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        r.register(
            "cadre_execs_started",
            "Execs started on this node, by agent",
            self.execs_started.clone(),
        );
        r.register(
            "cadre_execs_ended",
            "Execs ended on this node, by agent and final state",
            self.execs_ended.clone(),
        );
        r.register_with_unit(
            "cadre_exec_duration",
            "From an exec's start (or resumption on this node) to its end, by agent",
            Unit::Seconds,
            self.exec_duration.clone(),
        );
        r.register_with_unit(
            "cadre_model_request_duration",
            "One model request (each attempt), by model",
            Unit::Seconds,
            self.model_request_duration.clone(),
        );
        r.register(
            "cadre_model_tokens",
            "Tokens the models reported, by agent, model and kind (input, output)",
            self.model_tokens.clone(),
        );
        r.register(
            "cadre_model_cost",
            "What the model tokens cost in the currency of models[].price, by agent and model",
            self.model_cost.clone(),
        );
        r.register_with_unit(
            "cadre_tool_call_duration",
            "One tool call, by tool",
            Unit::Seconds,
            self.tool_call_duration.clone(),
        );
        r.register(
            "cadre_tool_call_errors",
            "Tool calls that failed or whose tool reported an error, by tool",
            self.tool_call_errors.clone(),
        );
        r.register(
            "cadre_supervisor_restarts",
            "Restarts made by supervisors, by the restarted child's path",
            self.supervisor_restarts.clone(),
        );
        r.register(
            "cadre_supervisor_escalations",
            "Supervisors that exceeded their restart intensity, by path",
            self.supervisor_escalations.clone(),
        );
        r.register_with_unit(
            "cadre_log_append_duration",
            "From an append's arrival at the controller to its answer",
            Unit::Seconds,
            self.log_append_duration.clone(),
        );
        r.register_with_unit(
            "cadre_log_commit_duration",
            "One group commit of the event log",
            Unit::Seconds,
            self.log_commit_duration.clone(),
        );
        r.register(
            "cadre_log_batch_size",
            "Appends per group commit",
            self.log_batch_size.clone(),
        );
        r.register(
            "cadre_log_queue_depth",
            "Appends waiting for the event log's writer",
            self.log_queue_depth.clone(),
        );
        r.register(
            "cadre_log_subscriptions",
            "Live subscriptions to conversations",
            self.log_subscriptions.clone(),
        );
        r.register(
            "cadre_sandboxes",
            "Sandboxes by provider and state",
            self.sandboxes.clone(),
        );
        r.register(
            "cadre_activations",
            "Logical actors activated on this node",
            self.activations.clone(),
        );
        r.register(
            "cadre_passivations",
            "Logical actors passivated on this node",
            self.passivations.clone(),
        );
        r.register(
            "cadre_cluster_members",
            "The cluster's members as this node sees them, by state",
            self.cluster_members.clone(),
        );
        self
    }

    /// Registers (or replaces) the sampler named `name`.
    pub fn sample_with(&self, name: &'static str, sampler: Sampler) {
        self.samplers
            .lock()
            .expect("samplers lock")
            .insert(name, sampler);
    }

    /// Every metric in the OpenMetrics text format, sampled gauges read now.
    pub fn encode(&self) -> String {
        self.samplers
            .lock()
            .expect("samplers lock")
            .retain(|_, sample| sample(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// An exec of `agent` started.
    pub fn exec_started(&self, agent: &str) {
        if !enabled() {
            return;
        }
        self.execs_started
            .get_or_create(&AgentLabels {
                agent: agent.to_string(),
            })
            .inc();
    }

    /// An exec of `agent` ended in `state` after `took`.
    pub fn exec_ended(&self, agent: &str, state: &str, took: Duration) {
        if !enabled() {
            return;
        }
        self.execs_ended
            .get_or_create(&ExecEndLabels {
                agent: agent.to_string(),
                state: state.to_string(),
            })
            .inc();
        self.exec_duration
            .get_or_create(&AgentLabels {
                agent: agent.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A model step of `agent` on `model` used these tokens, which cost this much.
    pub fn model_used(&self, agent: &str, model: &str, tokens: (u32, u32), cost: Option<f64>) {
        if !enabled() {
            return;
        }
        for (kind, n) in [("input", tokens.0), ("output", tokens.1)] {
            self.model_tokens
                .get_or_create(&TokenLabels {
                    agent: agent.to_string(),
                    model: model.to_string(),
                    kind,
                })
                .inc_by(u64::from(n));
        }
        if let Some(cost) = cost {
            self.model_cost
                .get_or_create(&CostLabels {
                    agent: agent.to_string(),
                    model: model.to_string(),
                })
                .inc_by(cost);
        }
    }

    /// A call of `tool` took `took`; `failed` if it failed or its tool reported an error.
    pub fn tool_called(&self, tool: &str, took: Duration, failed: bool) {
        if !enabled() {
            return;
        }
        let labels = ToolLabels {
            tool: tool.to_string(),
        };
        self.tool_call_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.tool_call_errors.get_or_create(&labels).inc();
        }
    }
}

impl Metrics {
    /// An exec of `agent` was cancelled.
    pub fn exec_cancelled(&self, agent: &str) {
        if enabled() {
            self.execs_ended
                .get_or_create(&ExecEndLabels {
                    agent: agent.to_string(),
                    state: "cancelled".into(),
                })
                .inc();
        }
    }

    /// One request to `model` took `took`.
    pub fn model_requested(&self, model: &str, took: Duration) {
        if enabled() {
            self.model_request_duration
                .get_or_create(&ModelLabels {
                    model: model.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// A supervisor restarted the child at `path`. Exec agents (`system/agents/EXEC`) count
    /// as `system/agents/*`: one series, not one per exec.
    pub fn restarted(&self, path: &str) {
        if enabled() {
            let path = match path.strip_prefix(EXEC_AGENTS) {
                Some(_) => format!("{EXEC_AGENTS}*"),
                None => path.to_string(),
            };
            self.supervisor_restarts
                .get_or_create(&PathLabels { path })
                .inc();
        }
    }

    /// The supervisor at `path` exceeded its restart intensity.
    pub fn escalated(&self, path: &str) {
        if enabled() {
            self.supervisor_escalations
                .get_or_create(&PathLabels {
                    path: path.to_string(),
                })
                .inc();
        }
    }

    /// An append was answered `took` after it reached the controller.
    pub fn log_appended(&self, took: Duration) {
        if enabled() {
            self.log_append_duration.observe(took.as_secs_f64());
        }
    }

    /// A group commit of `batch` appends took `took`.
    pub fn log_committed(&self, took: Duration, batch: usize) {
        if enabled() {
            self.log_commit_duration.observe(took.as_secs_f64());
            self.log_batch_size.observe(batch as f64);
        }
    }

    /// A logical actor was activated on this node.
    pub fn activated(&self) {
        if enabled() {
            self.activations.inc();
        }
    }

    /// A logical actor was passivated on this node.
    pub fn passivated(&self) {
        if enabled() {
            self.passivations.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_units_follow_prometheus_conventions() {
        enable();
        let m = Metrics::new();
        m.exec_started("echo");
        m.exec_ended("echo", "completed", Duration::from_millis(3));
        m.model_used("a", "local", (10, 5), Some(0.25));
        m.tool_called("time.now", Duration::from_millis(1), true);
        let text = m.encode();
        for line in [
            "cadre_build_info{version=\"",
            "cadre_execs_started_total{agent=\"echo\"} 1",
            "cadre_execs_ended_total{agent=\"echo\",state=\"completed\"} 1",
            "# UNIT cadre_exec_duration_seconds seconds",
            "cadre_exec_duration_seconds_count{agent=\"echo\"} 1",
            "cadre_model_tokens_total{agent=\"a\",model=\"local\",kind=\"input\"} 10",
            "cadre_model_tokens_total{agent=\"a\",model=\"local\",kind=\"output\"} 5",
            "cadre_model_cost_total{agent=\"a\",model=\"local\"} 0.25",
            "cadre_tool_call_errors_total{tool=\"time.now\"} 1",
            "cadre_log_append_duration_seconds_count 0",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn a_sampler_sets_gauges_at_each_scrape_until_its_owner_is_gone() {
        let m = Metrics::new();
        let owner = std::sync::Arc::new(7_i64);
        let weak = std::sync::Arc::downgrade(&owner);
        m.sample_with(
            "test",
            Box::new(move |m| match weak.upgrade() {
                Some(depth) => {
                    m.log_queue_depth.set(*depth);
                    true
                }
                None => false,
            }),
        );
        assert!(m.encode().contains("cadre_log_queue_depth 7"));
        drop(owner);
        m.encode();
        assert!(m.samplers.lock().unwrap().is_empty());
    }
}
