//! Tool calls of a step, and the approvals they may wait for.

use cadre_proto::v1::{ExecState, ToolCalled, ToolReturned, event, tool_returned};
use serde_json::{Value, json};

use super::AgentSpec;
use super::journal::{Journal, canonical};
use super::run::{ExecEnd, ExecRun, RunError};
use crate::event_log::AppendError;
use crate::tools::{CallContext, ToolError, ToolOutcome};

impl ExecRun {
    /// Handles the tool call at `index` of the last step: asks for an approval, applies a
    /// decision, or makes the call (again, with the same key, if it was started).
    pub(super) async fn tool_step(
        &self,
        journal: &mut Journal,
        spec: &AgentSpec,
        index: usize,
    ) -> Result<Option<ExecEnd>, RunError> {
        let call = journal.calls[index].clone();
        let finished = |r: Result<(), AppendError>| match r {
            Ok(()) => Ok(None),
            Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {
                Ok(Some(ExecEnd::Finished))
            }
            Err(e) => Err(RunError::from(e)),
        };
        let Some(tool) = call.tool.clone() else {
            let error = format!("no tool `{}` for this agent", call.wire_name);
            return finished(self.returned(journal, &call.call_id, Err(error)).await);
        };
        if !journal.called.contains_key(&call.call_id) {
            if !matches_any(&spec.tools, &tool) {
                let error = format!("tool `{tool}` is not allowed for agent `{}`", self.agent_id);
                return finished(self.returned(journal, &call.call_id, Err(error)).await);
            }
            let prepared = match serde_json::from_str::<Value>(&call.arguments) {
                Ok(args) => self.tools.prepare(&tool, &args),
                Err(e) => Err(ToolError::InvalidArguments {
                    tool: tool.clone(),
                    reason: format!("not JSON: {e}"),
                }),
            };
            let prepared = match prepared {
                Ok(p) => p,
                // The model sees what was wrong and may try again.
                Err(e) => {
                    return finished(
                        self.returned(journal, &call.call_id, Err(e.to_string()))
                            .await,
                    );
                }
            };
            let signature = format!("{tool} {}", canonical(&call.arguments));
            let repeats = journal.repeats.get(&signature).copied().unwrap_or(0) + 1;
            if repeats >= spec.max_repeats {
                let reason = format!(
                    "max_repeats: `{tool}` asked for {repeats} times with the same arguments, \
                     limit {}",
                    spec.max_repeats
                );
                return self.end_failed(journal, reason).await.map(Some);
            }
            let needs_approval =
                prepared.requires_approval || matches_any(&spec.require_approval, &tool);
            if needs_approval {
                match journal.decisions.get(&call.call_id) {
                    None if journal.state == Some(ExecState::WaitingApproval as i32) => {
                        return Ok(Some(ExecEnd::WaitingApproval));
                    }
                    None => {
                        let reason = format!(
                            "tool `{tool}` (call {}) needs approval: `cadre approve \
                             --conversation {}`",
                            call.call_id, self.conversation
                        );
                        let events = vec![self.state(ExecState::WaitingApproval, &reason)];
                        let key = format!("wait-{}", call.call_id);
                        return match self.append(journal, events, &key).await {
                            Ok(()) => Ok(Some(ExecEnd::WaitingApproval)),
                            Err(
                                AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. },
                            ) => Ok(Some(ExecEnd::Finished)),
                            Err(e) => Err(e.into()),
                        };
                    }
                    Some((false, reason)) => {
                        let error = format!("the call was declined by its approver: {reason}");
                        return finished(self.returned(journal, &call.call_id, Err(error)).await);
                    }
                    Some((true, _)) => {}
                }
            }
            let key = self.idempotency_key(&call.call_id);
            let called = ToolCalled {
                call_id: call.call_id.clone(),
                tool: tool.clone(),
                arguments_json: call.arguments.clone(),
                idempotency_key: key,
            };
            let events = vec![self.event(event::Kind::ToolCalled(called))];
            if let Some(end) = finished(
                self.append(journal, events, &format!("{}/called", call.call_id))
                    .await,
            )? {
                return Ok(Some(end));
            }
        }
        let key = journal.called[&call.call_id].clone();
        let args = serde_json::from_str::<Value>(&call.arguments).unwrap_or(json!({}));
        let outcome = match self.tools.prepare(&tool, &args) {
            Ok(prepared) => {
                let span = crate::traces::tool_span(&tool, &call.call_id);
                let ctx = CallContext {
                    conversation: self.conversation.clone(),
                    idempotency_key: key,
                    traceparent: crate::traces::traceparent(&span),
                };
                let limit = match self.time_left(journal) {
                    Some(left) => spec.tool_timeout.min(left),
                    None => spec.tool_timeout,
                };
                let call_span = span.clone();
                let traced = tracing::Instrument::instrument(prepared.call(&ctx), span);
                match tokio::time::timeout(limit, traced).await {
                    Ok(r) => {
                        match &r {
                            Ok(o) if o.is_error => {
                                crate::traces::set(&call_span, "error.type", "tool_error")
                            }
                            Ok(_) => {}
                            Err(e) => crate::traces::set(&call_span, "error.type", e.to_string()),
                        }
                        r
                    }
                    Err(_) => {
                        crate::traces::set(&call_span, "error.type", "timeout");
                        let error = format!("timed out after {} ms", limit.as_millis());
                        if let Some(end) =
                            finished(self.returned(journal, &call.call_id, Err(error)).await)?
                        {
                            return Ok(Some(end));
                        }
                        let reason = if limit < spec.tool_timeout {
                            format!(
                                "exec_timeout_secs: `{tool}` was still running at the exec's \
                                 limit of {} s",
                                spec.exec_timeout.unwrap_or_default().as_secs()
                            )
                        } else {
                            format!(
                                "tool_timeout_ms: `{tool}` did not answer within {} ms",
                                spec.tool_timeout.as_millis()
                            )
                        };
                        return self.end_failed(journal, reason).await.map(Some);
                    }
                }
            }
            Err(e) => Err(e),
        };
        let result = outcome.map_err(|e| e.to_string());
        finished(self.returned(journal, &call.call_id, result).await)
    }

    /// Journals a call's outcome: the tool's result (and whether the tool reported an error)
    /// or why the call failed.
    pub(super) async fn returned(
        &self,
        journal: &mut Journal,
        call_id: &str,
        result: Result<ToolOutcome, String>,
    ) -> Result<(), AppendError> {
        let is_error = result.as_ref().is_ok_and(|o| o.is_error);
        let returned = ToolReturned {
            call_id: call_id.to_string(),
            outcome: Some(match result {
                Ok(o) => tool_returned::Outcome::ResultJson(o.result.to_string()),
                Err(e) => tool_returned::Outcome::Error(e),
            }),
            is_error,
        };
        let events = vec![self.event(event::Kind::ToolReturned(returned))];
        self.append(journal, events, &format!("{call_id}/returned"))
            .await
    }
}

/// Whether `name` matches one of the patterns (`ns.tool`, `ns.*`, `*`).
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == name
            || p.strip_suffix(".*")
                .is_some_and(|ns| name.strip_prefix(ns).is_some_and(|r| r.starts_with('.')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn tool_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches_any(&p(&["*"]), "time.now"));
        assert!(matches_any(&p(&["time.*"]), "time.now"));
        assert!(!matches_any(&p(&["time.*"]), "timer.now"));
        assert!(matches_any(&p(&["workspace.run"]), "workspace.run"));
        assert!(!matches_any(&p(&[]), "workspace.run"));
    }
}
