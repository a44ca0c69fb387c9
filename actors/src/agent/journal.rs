//! The journal: the state of a conversation and its exec, folded from the log (pure).

use std::collections::{BTreeMap, HashMap};

use cadre_proto::v1::{AgentPatch, Event, ExecState, event, tool_returned};
use serde_json::{Value, json};

use super::AgentSpec;
use super::run::Next;
use crate::tools::ToolRegistry;

/// A tool call the model asked for in the exec's last step.
#[derive(Debug, Clone)]
pub(super) struct PlannedCall {
    /// `STEP.INDEX`: unique in the exec even if the model reuses its own ids.
    pub(super) call_id: String,
    /// The model's id for it (tool messages answer it).
    pub(super) model_id: String,
    pub(super) wire_name: String,
    /// The registry's name, if the wire name maps to one.
    pub(super) tool: Option<String>,
    pub(super) arguments: String,
}

/// The state of a conversation and its exec, rebuilt from the log.
#[derive(Default)]
pub(super) struct Journal {
    /// Whether the conversation's events are kept (a remote agent is sent them).
    pub(super) keep_events: bool,
    pub(super) events: Vec<Event>,
    /// This exec has nothing in the log after its input and state changes.
    pub(super) fresh: bool,
    /// The chat history (without the system prompt).
    pub(super) messages: Vec<Value>,
    /// The latest fork patch.
    pub(super) patch: Option<AgentPatch>,
    /// Model calls of this exec (steps, not counting compactions).
    pub(super) steps: u32,
    /// All model calls of this exec (for step numbering).
    pub(super) model_calls: u32,
    pub(super) tokens_used: u64,
    pub(super) last_prompt_tokens: u64,
    /// The tool calls of this exec's last step.
    pub(super) calls: Vec<PlannedCall>,
    /// The last step's text when it asked for no tools.
    pub(super) final_text: Option<String>,
    /// Calls with a `ToolCalled`: call id → idempotency key.
    pub(super) called: HashMap<String, String>,
    pub(super) returned: std::collections::HashSet<String>,
    pub(super) decisions: HashMap<String, (bool, String)>,
    /// Calls per tool and arguments in this exec.
    pub(super) repeats: HashMap<String, u32>,
    /// The exec's last state.
    pub(super) state: Option<i32>,
    /// The cluster node the log last gave the exec to (empty outside a cluster).
    pub(super) node: String,
    /// The epoch of that node's lease on the exec.
    pub(super) epoch: u64,
    /// The exec's input.
    pub(super) input: String,
    /// Results of this exec's returned calls.
    pub(super) results: HashMap<String, Result<Value, String>>,
    pub(super) started_micros: i64,
    /// Per exec: the model ids of its last step's calls, by call id (for tool messages).
    pub(super) model_ids: HashMap<String, String>,
    /// The exec the open tool calls belong to, to answer them if it ends first.
    pub(super) open_exec: Option<String>,
    pub(super) open_calls: Vec<(String, String)>,
}

impl Journal {
    pub(super) fn spec(&self, base: &AgentSpec) -> AgentSpec {
        let mut spec = base.clone();
        if let Some(p) = &self.patch {
            if let Some(s) = &p.system_prompt {
                spec.system_prompt = s.clone();
            }
            if let Some(m) = &p.model {
                spec.model = m.clone();
            }
            if let Some(m) = p.max_iterations {
                spec.max_iterations = m;
            }
            if let Some(t) = p.token_budget {
                spec.token_budget = Some(t);
            }
        }
        spec
    }

    pub(super) fn next(&self, spec: &AgentSpec) -> Next {
        if let Some(i) = self
            .calls
            .iter()
            .position(|c| !self.returned.contains(&c.call_id))
        {
            return Next::Tool(i);
        }
        if let Some(text) = &self.final_text {
            return Next::Finish(text.clone());
        }
        if spec.remote.is_none()
            && spec
                .compact_at_tokens
                .is_some_and(|at| self.last_prompt_tokens >= at)
        {
            return Next::Compact;
        }
        Next::CallModel
    }

    pub(super) fn apply(&mut self, e: &Event, exec: &str, tools: &ToolRegistry) {
        if self.keep_events {
            self.events.push(e.clone());
        }
        let mine = e.exec_id == exec;
        if mine {
            self.fresh &= matches!(
                e.kind,
                Some(event::Kind::InputReceived(_) | event::Kind::ExecStateChanged(_))
            );
        }
        match &e.kind {
            Some(event::Kind::InputReceived(i)) => {
                self.messages
                    .push(json!({"role": "user", "content": i.text}));
                if mine {
                    self.started_micros = e.time_unix_micros;
                    self.state = Some(ExecState::Pending as i32);
                    self.input = i.text.clone();
                }
            }
            Some(event::Kind::ModelCalled(m)) => {
                self.tokens_used += u64::from(m.prompt_tokens) + u64::from(m.completion_tokens);
                self.last_prompt_tokens = u64::from(m.prompt_tokens);
                let response: Value = serde_json::from_str(&m.response_json).unwrap_or_default();
                let message = &response["choices"][0]["message"];
                let content = message["content"].as_str().unwrap_or_default().to_string();
                if m.compaction {
                    self.messages = vec![json!({
                        "role": "user",
                        "content": format!("Summary of the conversation so far:\n{content}"),
                    })];
                    self.last_prompt_tokens = 0;
                    if mine {
                        self.model_calls += 1;
                    }
                    return;
                }
                let step = if mine {
                    self.model_calls += 1;
                    self.steps += 1;
                    self.model_calls
                } else {
                    0
                };
                let wire_calls = message["tool_calls"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut assistant = json!({"role": "assistant", "content": message["content"]});
                if !wire_calls.is_empty() {
                    assistant["tool_calls"] = Value::Array(wire_calls.clone());
                }
                self.messages.push(assistant);
                let calls: Vec<PlannedCall> = wire_calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let wire_name = c["function"]["name"].as_str().unwrap_or_default();
                        PlannedCall {
                            call_id: format!("{step}.{}", i + 1),
                            model_id: c["id"].as_str().unwrap_or_default().to_string(),
                            wire_name: wire_name.to_string(),
                            tool: registry_name(tools, wire_name),
                            arguments: match &c["function"]["arguments"] {
                                Value::String(s) => s.clone(),
                                Value::Null => "{}".into(),
                                other => other.to_string(),
                            },
                        }
                    })
                    .collect();
                self.open_exec = Some(e.exec_id.clone());
                self.open_calls = calls
                    .iter()
                    .map(|c| (c.call_id.clone(), c.model_id.clone()))
                    .collect();
                for c in &calls {
                    self.model_ids
                        .insert(format!("{}/{}", e.exec_id, c.call_id), c.model_id.clone());
                }
                if mine {
                    self.final_text = calls.is_empty().then_some(content);
                    self.calls = calls;
                }
            }
            Some(event::Kind::ToolCalled(c)) if mine => {
                self.called
                    .insert(c.call_id.clone(), c.idempotency_key.clone());
                *self
                    .repeats
                    .entry(format!("{} {}", c.tool, canonical(&c.arguments_json)))
                    .or_default() += 1;
            }
            Some(event::Kind::ToolReturned(r)) => {
                let content = match &r.outcome {
                    Some(tool_returned::Outcome::ResultJson(j)) => tool_text(j),
                    Some(tool_returned::Outcome::Error(err)) => format!("error: {err}"),
                    None => String::new(),
                };
                let model_id = self
                    .model_ids
                    .get(&format!("{}/{}", e.exec_id, r.call_id))
                    .cloned()
                    .unwrap_or_else(|| r.call_id.clone());
                self.open_calls.retain(|(id, _)| id != &r.call_id);
                self.messages.push(json!({
                    "role": "tool",
                    "tool_call_id": model_id,
                    "content": content,
                }));
                if mine {
                    self.returned.insert(r.call_id.clone());
                    let result = match &r.outcome {
                        Some(tool_returned::Outcome::ResultJson(j)) => {
                            Ok(serde_json::from_str(j).unwrap_or(Value::Null))
                        }
                        Some(tool_returned::Outcome::Error(err)) => Err(err.clone()),
                        None => Ok(Value::Null),
                    };
                    self.results.insert(r.call_id.clone(), result);
                }
            }
            Some(event::Kind::ApprovalDecided(d)) if mine => {
                self.decisions
                    .insert(d.call_id.clone(), (d.approved, d.reason.clone()));
            }
            Some(event::Kind::OutputEmitted(o)) => {
                // Agents without model calls (echo) answer with outputs only.
                let said = self.messages.last().is_some_and(|m| {
                    m["role"] == "assistant" && m["content"].as_str() == Some(o.text.as_str())
                });
                if !said {
                    self.messages
                        .push(json!({"role": "assistant", "content": o.text}));
                }
            }
            Some(event::Kind::ExecStateChanged(s)) => {
                if mine {
                    self.state = Some(s.state);
                    if !s.node.is_empty() {
                        self.node = s.node.clone();
                        self.epoch = s.epoch;
                    }
                }
                // A chat API refuses tool calls left unanswered: an exec that ended with some
                // answers them for the history.
                if ExecState::is_terminal_value(s.state)
                    && self.open_exec.as_deref() == Some(e.exec_id.as_str())
                {
                    for (_, model_id) in std::mem::take(&mut self.open_calls) {
                        self.messages.push(json!({
                            "role": "tool",
                            "tool_call_id": model_id,
                            "content": "error: not run (the exec ended first)",
                        }));
                    }
                }
            }
            Some(event::Kind::Forked(f)) => {
                if let Some(p) = &f.patch {
                    let mut merged = self.patch.clone().unwrap_or_default();
                    merge_patch(&mut merged, p);
                    self.patch = Some(merged);
                }
            }
            _ => {}
        }
    }
}

pub(super) fn merge_patch(into: &mut AgentPatch, p: &AgentPatch) {
    if p.system_prompt.is_some() {
        into.system_prompt = p.system_prompt.clone();
    }
    if p.model.is_some() {
        into.model = p.model.clone();
    }
    if p.max_iterations.is_some() {
        into.max_iterations = p.max_iterations;
    }
    if p.token_budget.is_some() {
        into.token_budget = p.token_budget;
    }
}

pub(super) fn wire_name(name: &str) -> String {
    name.replacen('.', "__", 1)
}

pub(super) fn registry_name(tools: &ToolRegistry, wire: &str) -> Option<String> {
    let name = match wire.split_once("__") {
        Some((ns, tool)) => format!("{ns}.{tool}"),
        None => wire.to_string(),
    };
    tools.contains(&name).then_some(name)
}

/// Arguments with their keys sorted, so equal calls compare equal.
pub(super) fn canonical(arguments: &str) -> String {
    pub(super) fn sort(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<String, Value> =
                    m.into_iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sort).collect()),
            other => other,
        }
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v) => sort(v).to_string(),
        Err(_) => arguments.to_string(),
    }
}

/// A tool result as the model reads it: an MCP result's text content, else the JSON.
pub(super) fn tool_text(result_json: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(result_json) else {
        return result_json.to_string();
    };
    let texts: Vec<&str> = v["content"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["text"].as_str()).collect())
        .unwrap_or_default();
    if texts.is_empty() {
        result_json.to_string()
    } else {
        texts.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn equal_arguments_compare_equal() {
        assert_eq!(
            canonical(r#"{"b":1,"a":{"d":2,"c":3}}"#),
            canonical(r#"{"a":{"c":3,"d":2},"b":1}"#)
        );
    }

    #[test]
    pub(super) fn mcp_results_are_read_as_text() {
        assert_eq!(
            tool_text(r#"{"content":[{"type":"text","text":"42"}],"isError":false}"#),
            "42"
        );
        assert_eq!(tool_text(r#"{"x":1}"#), r#"{"x":1}"#);
    }
}
