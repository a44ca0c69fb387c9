//! A conversation's summary (its last exec, that exec's state, the call it waits on, where it
//! was forked from), folded from its events. Pure: no I/O.

use cadre_proto::v1::{Conversation, Event, ExecState, event};

/// Folds a conversation's events, in order, into its [`Conversation`] summary.
pub(super) struct SummaryFold {
    summary: Conversation,
    /// Model steps of the last exec, for call ids (`STEP.INDEX`).
    step: u32,
    /// The last exec's tool calls not answered yet: (call id, tool).
    pending_calls: Vec<(String, String)>,
}

impl SummaryFold {
    pub(super) fn new(conversation_id: &str) -> Self {
        Self {
            summary: Conversation {
                conversation_id: conversation_id.to_string(),
                ..Default::default()
            },
            step: 0,
            pending_calls: Vec::new(),
        }
    }

    pub(super) fn apply(&mut self, e: &Event) {
        let c = &mut self.summary;
        match &e.kind {
            Some(event::Kind::InputReceived(i)) => {
                self.step = 0;
                self.pending_calls.clear();
                c.exec_id = e.exec_id.clone();
                c.agent_id = i.agent_id.clone();
                c.exec_state = ExecState::Pending as i32;
            }
            Some(event::Kind::ExecStateChanged(s)) if e.exec_id == c.exec_id => {
                c.exec_state = s.state;
                c.waiting_call_id.clear();
                c.waiting_tool.clear();
                if s.state == ExecState::WaitingApproval as i32
                    && let Some((call_id, tool)) = self.pending_calls.first()
                {
                    c.waiting_call_id = call_id.clone();
                    c.waiting_tool = tool.clone();
                }
            }
            Some(event::Kind::ModelCalled(m)) if e.exec_id == c.exec_id => {
                self.step += 1;
                self.pending_calls = tool_calls(&m.response_json, self.step);
            }
            Some(event::Kind::ToolReturned(t)) if e.exec_id == c.exec_id => {
                self.pending_calls.retain(|(id, _)| id != &t.call_id);
            }
            Some(event::Kind::Forked(f)) => {
                c.forked_from = f.src_conversation_id.clone();
                c.forked_at_seq = f.at_seq;
            }
            _ => {}
        }
    }

    /// The summary, given the conversation's last seq.
    pub(super) fn finish(mut self, last_seq: u64) -> Conversation {
        self.summary.last_seq = last_seq;
        self.summary
    }
}

/// The conversation's exec that has not finished, if any.
pub(super) fn unfinished_exec(summary: &Conversation) -> Option<&str> {
    (!summary.exec_id.is_empty() && !ExecState::is_terminal_value(summary.exec_state))
        .then_some(summary.exec_id.as_str())
}

/// The tool calls of model step `step`, as (`STEP.INDEX`, tool).
fn tool_calls(response_json: &str, step: u32) -> Vec<(String, String)> {
    let response: serde_json::Value = serde_json::from_str(response_json).unwrap_or_default();
    let calls = response["choices"][0]["message"]["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let wire = c["function"]["name"].as_str().unwrap_or_default();
            (format!("{step}.{}", i + 1), wire.replacen("__", ".", 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use cadre_proto::v1::{ExecStateChanged, InputReceived, ModelCalled, ToolReturned};

    use super::*;

    fn event(exec_id: &str, kind: event::Kind) -> Event {
        Event {
            exec_id: exec_id.into(),
            kind: Some(kind),
            ..Default::default()
        }
    }

    fn state(exec_id: &str, state: ExecState) -> Event {
        event(
            exec_id,
            event::Kind::ExecStateChanged(ExecStateChanged {
                state: state as i32,
                ..Default::default()
            }),
        )
    }

    const TWO_CALLS: &str = r#"{"choices":[{"message":{"tool_calls":[
        {"id":"x","function":{"name":"workspace__run","arguments":"{}"}},
        {"id":"y","function":{"name":"time__now","arguments":"{}"}}]}}]}"#;

    #[test]
    fn an_exec_waiting_for_an_approval_names_its_first_unanswered_call() {
        let mut fold = SummaryFold::new("c1");
        fold.apply(&event(
            "e1",
            event::Kind::InputReceived(InputReceived {
                agent_id: "a".into(),
                text: "hi".into(),
                trace_parent: String::new(),
            }),
        ));
        fold.apply(&state("e1", ExecState::Running));
        fold.apply(&event(
            "e1",
            event::Kind::ModelCalled(ModelCalled {
                response_json: TWO_CALLS.into(),
                ..Default::default()
            }),
        ));
        fold.apply(&event(
            "e1",
            event::Kind::ToolReturned(ToolReturned {
                call_id: "1.1".into(),
                ..Default::default()
            }),
        ));
        fold.apply(&state("e1", ExecState::WaitingApproval));
        let summary = fold.finish(6);
        assert_eq!(summary.exec_id, "e1");
        assert_eq!(summary.agent_id, "a");
        assert_eq!(summary.waiting_call_id, "1.2");
        assert_eq!(summary.waiting_tool, "time.now");
        assert_eq!(summary.last_seq, 6);
        assert_eq!(unfinished_exec(&summary), Some("e1"));
    }

    #[test]
    fn a_finished_exec_is_not_unfinished_and_other_execs_state_changes_are_ignored() {
        let mut fold = SummaryFold::new("c1");
        fold.apply(&event(
            "e1",
            event::Kind::InputReceived(InputReceived::default()),
        ));
        fold.apply(&state("e0", ExecState::Running));
        fold.apply(&state("e1", ExecState::Completed));
        let summary = fold.finish(3);
        assert_eq!(summary.exec_state, ExecState::Completed as i32);
        assert_eq!(unfinished_exec(&summary), None);
    }
}
