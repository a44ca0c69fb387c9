//! An exec as a timeline: its model calls, tool calls and approvals with their durations, a
//! pure fold of the conversation's events (the web console draws it as a waterfall).
//!
//! The log holds commit times, so a model call is taken to start when the event before it was
//! committed (the agent calls its model right after) and to end when its `ModelCalled` was; a
//! tool call runs from its `ToolCalled` to its `ToolReturned`, an approval from the exec's
//! `WAITING_APPROVAL` to its `ApprovalDecided`.

use cadre_proto::v1::{Event, ExecState, event};
use serde::Serialize;

/// One exec of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecTimeline {
    /// The exec's id.
    pub exec_id: String,
    /// The agent it ran.
    pub agent_id: String,
    /// Its last state: `running`, `waiting_approval`, `completed`…
    pub state: String,
    /// Seq of its first event.
    pub first_seq: u64,
    /// When it started (its `InputReceived`), microseconds since the Unix epoch.
    pub start_micros: i64,
    /// When it ended, if it has.
    pub end_micros: Option<i64>,
    /// Its steps in order.
    pub steps: Vec<Step>,
}

/// A model call, a tool call or an approval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// `model`, `tool` or `approval`.
    pub kind: &'static str,
    /// The model, or the tool.
    pub name: String,
    /// The tool call's id (`STEP.INDEX`); empty for a model call.
    pub call_id: String,
    /// Seq of the event that started it.
    pub seq: u64,
    /// When it started, microseconds since the Unix epoch.
    pub start_micros: i64,
    /// When it ended; `None` while it runs (or waits).
    pub end_micros: Option<i64>,
    /// Tokens, the error, or the approver's answer.
    pub detail: String,
    /// Whether it failed (a tool error, a declined approval).
    pub failed: bool,
}

/// Every exec of the conversation whose events are `events` (in seq order), oldest first.
pub fn timelines(events: &[Event]) -> Vec<ExecTimeline> {
    let mut execs: Vec<ExecTimeline> = Vec::new();
    let mut last_time = 0;
    for e in events {
        let exec = match execs.iter_mut().rev().find(|x| x.exec_id == e.exec_id) {
            Some(x) => Some(x),
            None => match &e.kind {
                Some(event::Kind::InputReceived(i)) if !e.exec_id.is_empty() => {
                    execs.push(ExecTimeline {
                        exec_id: e.exec_id.clone(),
                        agent_id: i.agent_id.clone(),
                        state: "pending".into(),
                        first_seq: e.seq,
                        start_micros: e.time_unix_micros,
                        end_micros: None,
                        steps: Vec::new(),
                    });
                    execs.last_mut()
                }
                _ => None,
            },
        };
        if let Some(exec) = exec {
            apply(exec, e, last_time);
        }
        last_time = e.time_unix_micros;
    }
    execs
}

fn apply(exec: &mut ExecTimeline, e: &Event, before: i64) {
    let time = e.time_unix_micros;
    match &e.kind {
        Some(event::Kind::ModelCalled(m)) => exec.steps.push(Step {
            kind: "model",
            name: m.model.clone(),
            call_id: String::new(),
            seq: e.seq,
            start_micros: before.max(exec.start_micros),
            end_micros: Some(time),
            detail: format!(
                "{} in + {} out tokens{}",
                m.prompt_tokens,
                m.completion_tokens,
                if m.compaction { " (compaction)" } else { "" }
            ),
            failed: false,
        }),
        Some(event::Kind::ToolCalled(t)) => exec.steps.push(Step {
            kind: "tool",
            name: t.tool.clone(),
            call_id: t.call_id.clone(),
            seq: e.seq,
            start_micros: time,
            end_micros: None,
            detail: t.arguments_json.clone(),
            failed: false,
        }),
        Some(event::Kind::ToolReturned(r)) => {
            if let Some(step) = open_step(exec, "tool", &r.call_id) {
                step.end_micros = Some(time);
                match &r.outcome {
                    Some(cadre_proto::v1::tool_returned::Outcome::Error(error)) => {
                        step.detail = error.clone();
                        step.failed = true;
                    }
                    Some(cadre_proto::v1::tool_returned::Outcome::ResultJson(result)) => {
                        step.detail = result.chars().take(200).collect();
                        step.failed = r.is_error;
                    }
                    None => {}
                }
            }
        }
        Some(event::Kind::ExecStateChanged(s)) => {
            let state = ExecState::try_from(s.state).unwrap_or(ExecState::Unspecified);
            exec.state = cadre_proto::json::exec_state_name(s.state).to_string();
            if state == ExecState::WaitingApproval {
                exec.steps.push(Step {
                    kind: "approval",
                    name: String::new(),
                    call_id: String::new(),
                    seq: e.seq,
                    start_micros: time,
                    end_micros: None,
                    detail: s.reason.clone(),
                    failed: false,
                });
            }
            if state.is_terminal() {
                exec.end_micros = Some(time);
            }
        }
        Some(event::Kind::ApprovalDecided(d)) => {
            if let Some(step) = open_step(exec, "approval", "") {
                step.end_micros = Some(time);
                step.name = d.tool.clone();
                step.call_id = d.call_id.clone();
                step.failed = !d.approved;
                step.detail = format!(
                    "{}{}",
                    if d.approved { "approved" } else { "declined" },
                    if d.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", d.reason)
                    }
                );
            }
        }
        _ => {}
    }
}

/// The last step of `kind` (and `call_id`, if given) that has not ended.
fn open_step<'a>(exec: &'a mut ExecTimeline, kind: &str, call_id: &str) -> Option<&'a mut Step> {
    exec.steps.iter_mut().rev().find(|s| {
        s.kind == kind && s.end_micros.is_none() && (call_id.is_empty() || s.call_id == call_id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_proto::v1::{
        ApprovalDecided, ExecStateChanged, InputReceived, ModelCalled, ToolCalled, ToolReturned,
        tool_returned,
    };

    fn at(seq: u64, ms: i64, kind: event::Kind) -> Event {
        Event {
            conversation_id: "c".into(),
            seq,
            exec_id: "e1".into(),
            time_unix_micros: ms * 1000,
            kind: Some(kind),
        }
    }

    fn state(state: ExecState, reason: &str) -> event::Kind {
        event::Kind::ExecStateChanged(ExecStateChanged {
            state: state as i32,
            reason: reason.into(),
            node: String::new(),
            epoch: 0,
        })
    }

    #[test]
    fn an_exec_with_a_model_call_an_approval_and_a_tool_call() {
        let events = [
            at(
                1,
                0,
                event::Kind::InputReceived(InputReceived {
                    agent_id: "scribe".into(),
                    text: "hi".into(),
                    trace_parent: String::new(),
                }),
            ),
            at(2, 1, state(ExecState::Running, "")),
            at(
                3,
                40,
                event::Kind::ModelCalled(ModelCalled {
                    model: "m".into(),
                    prompt_tokens: 10,
                    completion_tokens: 2,
                    ..Default::default()
                }),
            ),
            at(4, 41, state(ExecState::WaitingApproval, "needs approval")),
            at(
                5,
                500,
                event::Kind::ApprovalDecided(ApprovalDecided {
                    call_id: "1.1".into(),
                    tool: "rec.record".into(),
                    approved: true,
                    reason: String::new(),
                }),
            ),
            at(6, 501, state(ExecState::Running, "")),
            at(
                7,
                502,
                event::Kind::ToolCalled(ToolCalled {
                    call_id: "1.1".into(),
                    tool: "rec.record".into(),
                    arguments_json: "{}".into(),
                    idempotency_key: String::new(),
                }),
            ),
            at(
                8,
                600,
                event::Kind::ToolReturned(ToolReturned {
                    call_id: "1.1".into(),
                    outcome: Some(tool_returned::Outcome::Error("boom".into())),
                    is_error: false,
                }),
            ),
            at(9, 601, state(ExecState::Completed, "")),
        ];
        let execs = timelines(&events);
        assert_eq!(execs.len(), 1);
        let exec = &execs[0];
        assert_eq!(
            (exec.agent_id.as_str(), exec.state.as_str()),
            ("scribe", "completed")
        );
        assert_eq!(exec.end_micros, Some(601_000));
        let spans: Vec<(&str, i64, Option<i64>, bool)> = exec
            .steps
            .iter()
            .map(|s| {
                (
                    s.kind,
                    s.start_micros / 1000,
                    s.end_micros.map(|t| t / 1000),
                    s.failed,
                )
            })
            .collect();
        assert_eq!(
            spans,
            [
                ("model", 1, Some(40), false),
                ("approval", 41, Some(500), false),
                ("tool", 502, Some(600), true),
            ]
        );
        assert_eq!(exec.steps[1].name, "rec.record");
        assert_eq!(exec.steps[2].detail, "boom");
    }

    #[test]
    fn a_waiting_approval_stays_open() {
        let events = [
            at(
                1,
                0,
                event::Kind::InputReceived(InputReceived {
                    agent_id: "a".into(),
                    text: "x".into(),
                    trace_parent: String::new(),
                }),
            ),
            at(2, 5, state(ExecState::WaitingApproval, "needs approval")),
        ];
        let exec = &timelines(&events)[0];
        assert_eq!(exec.state, "waiting_approval");
        assert_eq!(exec.steps[0].end_micros, None);
        assert_eq!(exec.end_micros, None);
    }
}
