//! The process backend: a harness command speaking JSON lines over stdio in the conversation's sandbox.

use cadre_proto::v1::{ExecState, OutputEmitted, ToolCalled, event};
use serde_json::{Value, json};

use super::journal::Journal;
use super::run::{ExecEnd, ExecRun, RunError};
use super::tool_calls::matches_any;
use crate::event_log::AppendError;
use crate::process::ProcessExit;
use crate::sandbox::{HostedExit, HostedSpec};
use crate::tools::{CallContext, ToolError};

impl ExecRun {
    /// Runs a process agent: its command starts in the conversation's sandbox, gets the input
    /// as a JSON line on stdin, and writes JSON lines on stdout: `{"type":"output","text"}` is
    /// journaled as an output; `{"type":"tool_call","tool","arguments"}` is made and journaled
    /// by the node, which answers `{"type":"tool_result","call_id","result"|"error"}` on
    /// stdin. Exit 0 completes the exec; anything else fails it. A harness is opaque, so after
    /// a crash it runs again: outputs and tool calls are numbered in order, and those already
    /// in the log are read back (an output is not journaled twice, a returned call is not made
    /// again).
    pub(super) async fn run_process(
        &self,
        journal: &mut Journal,
        command: &[String],
    ) -> Result<ExecEnd, RunError> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

        let Some(host) = &self.host else {
            let reason = "process agents need sandboxes; this node has none".to_string();
            return self.end_failed(journal, reason).await;
        };
        let spec = HostedSpec {
            actor: crate::builtin::workspace_actor(&self.conversation),
            argv: command.to_vec(),
            env: vec![
                ("CADRE_CONVERSATION".into(), self.conversation.clone()),
                ("CADRE_EXEC".into(), self.exec_id.clone()),
            ],
            log: None,
        };
        let process = match host.spawn(spec).await {
            Ok(p) => p,
            Err(e) => {
                return self
                    .end_failed(journal, format!("process agent: cannot start: {e}"))
                    .await;
            }
        };
        let input = json!({
            "type": "input",
            "conversation_id": self.conversation,
            "exec_id": self.exec_id,
            "text": journal.input,
        });
        let mut stdin = process.stdin;
        let mut lines = BufReader::new(process.stdout).lines();
        let _ = stdin.write_all(format!("{input}\n").as_bytes()).await;
        let (mut outputs, mut calls) = (0u32, 0u32);
        let deadline = self.time_left(journal);
        let work = async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(message) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!(exec = %self.exec_id, %line, "process agent: not a JSON line");
                    continue;
                };
                match message["type"].as_str() {
                    Some("output") => {
                        outputs += 1;
                        let text = message["text"].as_str().unwrap_or_default().to_string();
                        let event = self.event(event::Kind::OutputEmitted(OutputEmitted { text }));
                        self.append(journal, vec![event], &format!("out-{outputs}"))
                            .await?;
                    }
                    Some("tool_call") => {
                        calls += 1;
                        let call_id = format!("p{calls}");
                        let tool = message["tool"].as_str().unwrap_or_default().to_string();
                        let arguments = message["arguments"].clone();
                        let result = self
                            .process_tool(journal, &call_id, &tool, arguments)
                            .await?;
                        let mut answer = json!({"type": "tool_result", "call_id": call_id});
                        match result {
                            Ok(v) => answer["result"] = v,
                            Err(e) => answer["error"] = Value::String(e),
                        }
                        let _ = stdin.write_all(format!("{answer}\n").as_bytes()).await;
                    }
                    _ => {
                        tracing::warn!(exec = %self.exec_id, %line, "process agent: unknown message")
                    }
                }
            }
            drop(stdin);
            let mut exit = process.exit.clone();
            let exit = exit
                .wait_for(Option::is_some)
                .await
                .map(|e| e.clone())
                .ok()
                .flatten();
            Ok::<_, AppendError>(exit)
        };
        let exit = match deadline {
            Some(left) => match tokio::time::timeout(left, work).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = process.signals.send(libc::SIGKILL);
                    let reason = format!(
                        "exec_timeout_secs: the process agent ran past the limit of {} s",
                        self.spec.exec_timeout.unwrap_or_default().as_secs()
                    );
                    return self.end_failed(journal, reason).await;
                }
            },
            None => work.await,
        };
        drop(process.hold);
        let exit = match exit {
            Ok(e) => e,
            Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {
                return Ok(ExecEnd::Finished);
            }
            Err(e) => return Err(e.into()),
        };
        match exit {
            Some(HostedExit::Exited(ProcessExit::Code(0))) => {
                match self
                    .append(journal, vec![self.state(ExecState::Completed, "")], "end")
                    .await
                {
                    Ok(()) => Ok(ExecEnd::Completed),
                    Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {
                        Ok(ExecEnd::Finished)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Some(HostedExit::Exited(ProcessExit::Signal(signal))) => {
                let reason = format!("process agent: killed by signal {signal}");
                self.end_failed(journal, reason).await
            }
            Some(HostedExit::Exited(ProcessExit::Code(code))) => {
                let reason = format!("process agent: exited with status {code}");
                self.end_failed(journal, reason).await
            }
            Some(HostedExit::Lost(why)) => Err(RunError::Read(format!("sandbox lost: {why}"))),
            None => Err(RunError::Read(
                "the process agent's exit was not reported".into(),
            )),
        }
    }

    /// One tool call of a process agent: read back if it returned before a crash, made
    /// again with its key if it started, else journaled and made.
    pub(super) async fn process_tool(
        &self,
        journal: &mut Journal,
        call_id: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Result<Value, String>, AppendError> {
        if let Some(result) = journal.results.get(call_id) {
            return Ok(result.clone());
        }
        let prepared = if matches_any(&self.spec.tools, tool) {
            self.tools.prepare(tool, &arguments)
        } else {
            Err(ToolError::NotFound(format!(
                "{tool}` is not allowed for agent `{}",
                self.agent_id
            )))
        };
        let prepared = match prepared {
            Ok(p) if p.requires_approval || matches_any(&self.spec.require_approval, tool) => {
                let error = format!(
                    "tool `{tool}` needs an approval, which a process agent cannot wait for"
                );
                self.returned(journal, call_id, Err(error.clone())).await?;
                return Ok(Err(error));
            }
            Ok(p) => p,
            Err(e) => {
                self.returned(journal, call_id, Err(e.to_string())).await?;
                return Ok(Err(e.to_string()));
            }
        };
        if !journal.called.contains_key(call_id) {
            let called = ToolCalled {
                call_id: call_id.to_string(),
                tool: tool.to_string(),
                arguments_json: arguments.to_string(),
                idempotency_key: self.idempotency_key(call_id),
            };
            let events = vec![self.event(event::Kind::ToolCalled(called))];
            self.append(journal, events, &format!("{call_id}/called"))
                .await?;
        }
        let ctx = CallContext {
            conversation: self.conversation.clone(),
            idempotency_key: journal.called[call_id].clone(),
            traceparent: None,
        };
        let outcome = match tokio::time::timeout(self.spec.tool_timeout, prepared.call(&ctx)).await
        {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "timed out after {} ms",
                self.spec.tool_timeout.as_millis()
            )),
        };
        let result = outcome
            .as_ref()
            .map(|o| o.result.clone())
            .map_err(Clone::clone);
        self.returned(journal, call_id, outcome).await?;
        Ok(result)
    }
}
