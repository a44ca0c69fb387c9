//! The JSON form of cadre's messages: what `cadre … -o json` prints and the web console's API
//! answers, one function per message, so both say the same.

use serde_json::{Map, Value, json};

use crate::v1::{
    ActorNode, Conversation, Event, ExecState, NodeTree, PlacedActor, SandboxInfo,
    SandboxesResponse, TreeEvent, event, tool_returned,
};

/// `2026-11-22T05:20:01.123Z` from microseconds since the epoch (UTC).
pub fn rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let millis = micros.rem_euclid(1_000_000) / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `{"node"?,"path","kind","status","restarts","pid"?,"strategy"?,"placement"?,"children"}`
pub fn actor_node(node: &ActorNode) -> Value {
    let mut obj = Map::new();
    if !node.node.is_empty() {
        obj.insert("node".into(), json!(node.node));
    }
    obj.insert("path".into(), json!(node.path));
    obj.insert("kind".into(), json!(node.kind));
    obj.insert("status".into(), json!(node.status));
    obj.insert("restarts".into(), json!(node.restarts));
    if let Some(pid) = node.pid {
        obj.insert("pid".into(), json!(pid));
    }
    if let Some(s) = &node.strategy {
        obj.insert("strategy".into(), json!(s));
    }
    if let Some(p) = &node.placement {
        obj.insert("placement".into(), json!(p));
    }
    if !node.restart.is_empty() {
        obj.insert("restart".into(), json!(node.restart));
        obj.insert("shutdown".into(), json!(node.shutdown));
        obj.insert("significant".into(), json!(node.significant));
    }
    if let (Some(reason), Some(at)) = (&node.last_exit_reason, node.last_exit_unix_ms) {
        obj.insert(
            "last_exit".into(),
            json!({"reason": reason, "time": rfc3339(at * 1000)}),
        );
    }
    obj.insert(
        "children".into(),
        Value::Array(node.children.iter().map(actor_node).collect()),
    );
    Value::Object(obj)
}

/// `{"node","state","read_at"?,"error"?,"root"?,"system"?}`
pub fn node_trees(t: &NodeTree) -> Value {
    let mut obj = Map::new();
    obj.insert("node".into(), json!(t.node));
    obj.insert("state".into(), json!(t.state));
    if t.read_at_unix_ms > 0 {
        obj.insert("read_at".into(), json!(rfc3339(t.read_at_unix_ms * 1000)));
    }
    if !t.error.is_empty() {
        obj.insert("error".into(), json!(t.error));
    }
    if let Some(root) = &t.root {
        obj.insert("root".into(), actor_node(root));
    }
    if let Some(system) = &t.system {
        obj.insert("system".into(), actor_node(system));
    }
    Value::Object(obj)
}

/// `{"time","node"?,"path","kind","change","reason"?,"pid"?,"restarts"?}`; a member's change
/// of state is `{"time","node","kind":"node","change":STATE}`.
pub fn tree_event(e: &TreeEvent) -> Value {
    let mut obj = Map::new();
    obj.insert("time".into(), json!(rfc3339(e.time_unix_micros)));
    if !e.node.is_empty() {
        obj.insert("node".into(), json!(e.node));
    }
    if e.kind == "node" {
        obj.insert("kind".into(), json!(e.kind));
        obj.insert("change".into(), json!(e.change));
        return Value::Object(obj);
    }
    obj.insert("path".into(), json!(e.path));
    obj.insert("kind".into(), json!(e.kind));
    obj.insert("change".into(), json!(e.change));
    if !e.reason.is_empty() {
        obj.insert("reason".into(), json!(e.reason));
    }
    if let Some(pid) = e.pid {
        obj.insert("pid".into(), json!(pid));
    }
    if e.change == "started" {
        obj.insert("restarts".into(), json!(e.restarts));
    }
    Value::Object(obj)
}

/// An exec state's name: `running`, `waiting_approval`, `completed`…
pub fn exec_state_name(state: i32) -> &'static str {
    match ExecState::try_from(state).unwrap_or(ExecState::Unspecified) {
        ExecState::Unspecified => "unspecified",
        ExecState::Pending => "pending",
        ExecState::Running => "running",
        ExecState::WaitingApproval => "waiting_approval",
        ExecState::Completed => "completed",
        ExecState::Failed => "failed",
        ExecState::Cancelled => "cancelled",
    }
}

/// (type, one-line detail) of an event.
pub fn describe(e: &Event) -> (&'static str, String) {
    match &e.kind {
        Some(event::Kind::InputReceived(i)) => {
            ("input_received", format!("{}: {}", i.agent_id, i.text))
        }
        Some(event::Kind::ModelCalled(m)) => (
            "model_called",
            format!(
                "{} ({}+{} tokens)",
                m.model, m.prompt_tokens, m.completion_tokens
            ),
        ),
        Some(event::Kind::ToolCalled(t)) => {
            ("tool_called", format!("{} {}", t.tool, t.arguments_json))
        }
        Some(event::Kind::ToolReturned(t)) => (
            "tool_returned",
            match &t.outcome {
                Some(tool_returned::Outcome::Error(e)) => format!("{} error: {e}", t.call_id),
                // The tool answered with an error of its own (MCP `isError`).
                Some(tool_returned::Outcome::ResultJson(r)) if t.is_error => {
                    format!("{} tool error: {r}", t.call_id)
                }
                _ => format!("{} ok", t.call_id),
            },
        ),
        Some(event::Kind::OutputEmitted(o)) => ("output_emitted", o.text.clone()),
        Some(event::Kind::ExecStateChanged(s)) => (
            "exec_state_changed",
            format!("{} {}", exec_state_name(s.state), s.reason)
                .trim()
                .to_string(),
        ),
        Some(event::Kind::Forked(f)) => (
            "forked",
            format!(
                "from {} at seq {}{}",
                f.src_conversation_id,
                f.at_seq,
                if f.patch.is_some() { " (patched)" } else { "" }
            ),
        ),
        Some(event::Kind::ApprovalDecided(d)) => (
            "approval_decided",
            format!(
                "{} {} {}: {}",
                d.call_id,
                d.tool,
                if d.approved { "approved" } else { "declined" },
                d.reason
            ),
        ),
        Some(event::Kind::ActorLifecycle(l)) => (
            "actor_lifecycle",
            format!(
                "{}{} {} {}",
                if l.node.is_empty() {
                    String::new()
                } else {
                    format!("{}:", l.node)
                },
                l.path,
                l.change,
                l.reason
            )
            .trim()
            .to_string(),
        ),
        Some(event::Kind::ActorSpawned(a)) => ("actor_spawned", format!("{}/{}", a.parent, a.id)),
        Some(event::Kind::ActorRemoved(r)) => ("actor_removed", r.path.clone()),
        Some(event::Kind::ApiCall(c)) => (
            "api_call",
            format!(
                "{} {} by {} ({}): {}{}",
                c.method,
                c.target,
                if c.caller.is_empty() {
                    "anyone"
                } else {
                    &c.caller
                },
                if c.role.is_empty() {
                    "no tokens"
                } else {
                    &c.role
                },
                tonic::Code::from(c.code as i32).description(),
                if c.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.message)
                },
            ),
        ),
        Some(event::Kind::SandboxExited(x)) => (
            "sandbox_exited",
            format!("{} (tenant {}): {}", x.sandbox_id, x.tenant, x.reason),
        ),
        Some(event::Kind::ActivationClaimed(a)) => (
            "activation_claimed",
            format!(
                "{} (tenant {}) lives on {} from epoch {}{}",
                a.actor_id,
                a.tenant,
                a.node,
                a.epoch,
                if a.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.reason)
                }
            ),
        ),
        None => ("unknown", String::new()),
    }
}

/// `{"conversation_id","seq","exec_id","time","type",…payload}`
pub fn event(e: &Event) -> Value {
    let mut obj = Map::new();
    obj.insert("conversation_id".into(), json!(e.conversation_id));
    obj.insert("seq".into(), json!(e.seq));
    obj.insert("exec_id".into(), json!(e.exec_id));
    obj.insert("time".into(), json!(rfc3339(e.time_unix_micros)));
    let (kind, _) = describe(e);
    obj.insert("type".into(), json!(kind));
    match &e.kind {
        Some(event::Kind::InputReceived(i)) => {
            obj.insert("agent_id".into(), json!(i.agent_id));
            obj.insert("text".into(), json!(i.text));
            if !i.trace_parent.is_empty() {
                obj.insert("trace_parent".into(), json!(i.trace_parent));
            }
        }
        Some(event::Kind::OutputEmitted(o)) => {
            obj.insert("text".into(), json!(o.text));
        }
        Some(event::Kind::ExecStateChanged(s)) => {
            obj.insert("state".into(), json!(exec_state_name(s.state)));
            obj.insert("reason".into(), json!(s.reason));
            if !s.node.is_empty() {
                obj.insert("node".into(), json!(s.node));
                obj.insert("epoch".into(), json!(s.epoch));
            }
        }
        Some(event::Kind::Forked(f)) => {
            obj.insert("src_conversation_id".into(), json!(f.src_conversation_id));
            obj.insert("at_seq".into(), json!(f.at_seq));
            if let Some(p) = &f.patch {
                obj.insert(
                    "patch".into(),
                    json!({
                        "system_prompt": p.system_prompt,
                        "model": p.model,
                        "max_iterations": p.max_iterations,
                        "token_budget": p.token_budget,
                    }),
                );
            }
        }
        Some(event::Kind::ApprovalDecided(d)) => {
            obj.insert("call_id".into(), json!(d.call_id));
            obj.insert("tool".into(), json!(d.tool));
            obj.insert("approved".into(), json!(d.approved));
            obj.insert("reason".into(), json!(d.reason));
        }
        Some(event::Kind::ModelCalled(m)) => {
            obj.insert("model".into(), json!(m.model));
            obj.insert("response_json".into(), json!(m.response_json));
            obj.insert("prompt_tokens".into(), json!(m.prompt_tokens));
            obj.insert("completion_tokens".into(), json!(m.completion_tokens));
            obj.insert("compaction".into(), json!(m.compaction));
        }
        Some(event::Kind::ToolCalled(t)) => {
            obj.insert("call_id".into(), json!(t.call_id));
            obj.insert("tool".into(), json!(t.tool));
            obj.insert("arguments_json".into(), json!(t.arguments_json));
            obj.insert("idempotency_key".into(), json!(t.idempotency_key));
        }
        Some(event::Kind::ToolReturned(t)) => {
            obj.insert("call_id".into(), json!(t.call_id));
            obj.insert("is_error".into(), json!(t.is_error));
            match &t.outcome {
                Some(tool_returned::Outcome::ResultJson(r)) => {
                    obj.insert("result_json".into(), json!(r));
                }
                Some(tool_returned::Outcome::Error(e)) => {
                    obj.insert("error".into(), json!(e));
                }
                None => {}
            }
        }
        Some(event::Kind::ActorLifecycle(l)) => {
            if !l.node.is_empty() {
                obj.insert("node".into(), json!(l.node));
            }
            obj.insert("path".into(), json!(l.path));
            obj.insert("change".into(), json!(l.change));
            obj.insert("reason".into(), json!(l.reason));
        }
        Some(event::Kind::ActorSpawned(a)) => {
            obj.insert("path".into(), json!(format!("{}/{}", a.parent, a.id)));
            obj.insert("spec_yaml".into(), json!(a.spec_yaml));
        }
        Some(event::Kind::ActorRemoved(r)) => {
            obj.insert("path".into(), json!(r.path));
        }
        Some(event::Kind::ApiCall(c)) => {
            obj.insert("method".into(), json!(c.method));
            obj.insert("caller".into(), json!(c.caller));
            obj.insert("role".into(), json!(c.role));
            obj.insert("target".into(), json!(c.target));
            obj.insert("code".into(), json!(c.code));
            obj.insert("message".into(), json!(c.message));
        }
        Some(event::Kind::SandboxExited(x)) => {
            obj.insert("sandbox_id".into(), json!(x.sandbox_id));
            obj.insert("tenant".into(), json!(x.tenant));
            obj.insert("provider".into(), json!(x.provider));
            obj.insert("reason".into(), json!(x.reason));
        }
        Some(event::Kind::ActivationClaimed(a)) => {
            obj.insert("actor_id".into(), json!(a.actor_id));
            obj.insert("tenant".into(), json!(a.tenant));
            obj.insert("node".into(), json!(a.node));
            obj.insert("epoch".into(), json!(a.epoch));
            obj.insert("reason".into(), json!(a.reason));
        }
        None => {}
    }
    Value::Object(obj)
}

pub fn conversation(c: &Conversation) -> Value {
    let mut obj = Map::new();
    obj.insert("conversation_id".into(), json!(c.conversation_id));
    obj.insert("last_seq".into(), json!(c.last_seq));
    if !c.exec_id.is_empty() {
        obj.insert("exec_id".into(), json!(c.exec_id));
        obj.insert("exec_state".into(), json!(exec_state_name(c.exec_state)));
        obj.insert("agent_id".into(), json!(c.agent_id));
    }
    if !c.waiting_call_id.is_empty() {
        obj.insert("waiting_call_id".into(), json!(c.waiting_call_id));
        obj.insert("waiting_tool".into(), json!(c.waiting_tool));
    }
    if !c.forked_from.is_empty() {
        obj.insert("forked_from".into(), json!(c.forked_from));
        obj.insert("forked_at_seq".into(), json!(c.forked_at_seq));
    }
    Value::Object(obj)
}

/// One sandbox of a node's pool: `{"id","state","tenant","pid","started_unix_ms","provider",
/// "isolated","slots","actors","exclusive","ended"}`.
pub fn sandbox(list: &SandboxesResponse, s: &SandboxInfo) -> Value {
    json!({
        "id": s.id, "state": s.state, "tenant": s.tenant, "pid": s.pid,
        "started_unix_ms": s.started_unix_ms, "provider": list.provider,
        "isolated": list.isolated, "slots": s.slots, "actors": s.actors,
        "exclusive": s.exclusive, "ended": s.ended,
    })
}

/// One logical actor's placement: `{"id","tenant","isolation","state","sandbox","state_bytes"}`.
pub fn placed_actor(a: &PlacedActor) -> Value {
    json!({
        "id": a.id, "tenant": a.tenant, "isolation": a.isolation, "state": a.state,
        "sandbox": a.sandbox, "state_bytes": a.state_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_324_801_123_456), "2026-11-22T05:20:01.123Z");
    }
}
