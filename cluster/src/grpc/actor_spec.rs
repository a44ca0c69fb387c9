//! A typed `ActorSpec` (of `Actors.Spawn`) as the child entry of cadre.yaml it stands for, so
//! that it is validated by the same parser as the YAML, field for field.

use cadre_proto::v1::{ActorSpec, actor_spec};
use serde_json::{Map, Value, json};

/// The child entry `spec` stands for, as JSON (which the YAML parser reads): only the fields
/// that are set, so that the rest take the config's defaults.
pub(crate) fn child_entry(spec: &ActorSpec) -> Value {
    let mut entry = Fields::default();
    entry.text("id", &spec.id);
    entry.text("restart", &spec.restart);
    entry.text("shutdown", &spec.shutdown);
    entry.flag("significant", spec.significant);
    match &spec.actor {
        Some(actor_spec::Actor::Process(p)) => {
            let mut process = Fields::default();
            process.list("command", &p.command);
            process.map("env", &p.env);
            process.text("cwd", &p.cwd);
            entry.put("process", process.into());
        }
        Some(actor_spec::Actor::Mcp(m)) => {
            let mut mcp = Fields::default();
            mcp.list("command", &m.command);
            mcp.text("url", &m.url);
            mcp.map("env", &m.env);
            mcp.text("tenant", &m.tenant);
            mcp.text("isolation", &m.isolation);
            mcp.flag("egress", m.egress);
            mcp.number("timeout_ms", m.timeout_ms);
            mcp.number("start_timeout_ms", m.start_timeout_ms);
            entry.put("mcp", mcp.into());
        }
        Some(actor_spec::Actor::Skill(s)) => entry.put("skill", json!({ "path": s.path })),
        Some(actor_spec::Actor::Agent(a)) => {
            let mut agent = Fields::default();
            agent.text("model", &a.model);
            agent.text("remote", &a.remote);
            agent.list("command", &a.command);
            agent.text("system_prompt", &a.system_prompt);
            agent.list("tools", &a.tools);
            agent.list("require_approval", &a.require_approval);
            agent.number("max_iterations", a.max_iterations);
            agent.number("token_budget", a.token_budget);
            agent.number("compact_at_tokens", a.compact_at_tokens);
            agent.number("tool_timeout_ms", a.tool_timeout_ms);
            agent.number("exec_timeout_secs", a.exec_timeout_secs);
            agent.number("execs_per_minute", a.execs_per_minute);
            agent.number("max_repeats", a.max_repeats);
            entry.put("agent", agent.into());
        }
        Some(actor_spec::Actor::Supervisor(s)) => {
            let mut supervisor = Fields::default();
            supervisor.text("strategy", &s.strategy);
            supervisor.number("intensity", s.intensity);
            supervisor.number("period_secs", s.period_secs);
            supervisor.text("auto_shutdown", &s.auto_shutdown);
            supervisor.number("max_children", s.max_children);
            if let Some(b) = &s.backoff {
                let mut backoff = json!({ "initial_ms": b.initial_ms, "max_ms": b.max_ms });
                if let Some(jitter) = b.jitter {
                    backoff["jitter"] = json!(jitter);
                }
                supervisor.put("backoff", backoff);
            }
            if !s.children.is_empty() {
                supervisor.put(
                    "children",
                    Value::Array(s.children.iter().map(child_entry).collect()),
                );
            }
            entry.put("supervisor", supervisor.into());
        }
        None => {}
    }
    entry.into()
}

/// The set fields of one mapping, in order.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Fields {
    fn put(&mut self, key: &str, value: Value) {
        self.0.insert(key.into(), value);
    }

    fn text(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.put(key, json!(value));
        }
    }

    fn flag(&mut self, key: &str, value: bool) {
        if value {
            self.put(key, json!(true));
        }
    }

    fn number(&mut self, key: &str, value: Option<u64>) {
        if let Some(n) = value {
            self.put(key, json!(n));
        }
    }

    fn list(&mut self, key: &str, values: &[String]) {
        if !values.is_empty() {
            self.put(key, json!(values));
        }
    }

    fn map(&mut self, key: &str, values: &std::collections::HashMap<String, String>) {
        if !values.is_empty() {
            let sorted: std::collections::BTreeMap<_, _> = values.iter().collect();
            self.put(key, json!(sorted));
        }
    }
}

impl From<Fields> for Value {
    fn from(fields: Fields) -> Self {
        Value::Object(fields.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_proto::v1::{ProcessActor, SupervisorActor};

    #[test]
    fn only_the_set_fields_are_written() {
        let spec = ActorSpec {
            id: "group".into(),
            actor: Some(actor_spec::Actor::Supervisor(SupervisorActor {
                strategy: "rest_for_one".into(),
                intensity: Some(3),
                children: vec![ActorSpec {
                    id: "web".into(),
                    restart: "transient".into(),
                    actor: Some(actor_spec::Actor::Process(ProcessActor {
                        command: vec!["sleep".into(), "9".into()],
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            child_entry(&spec),
            json!({"id": "group", "supervisor": {"strategy": "rest_for_one", "intensity": 3,
                   "children": [{"id": "web", "restart": "transient",
                                 "process": {"command": ["sleep", "9"]}}]}})
        );
    }
}
