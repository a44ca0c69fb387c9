//! The remote backend: one journaled step of a remote agent (`cadre.v1.AgentService`).

use serde_json::{Value, json};

use super::AgentSpec;
use super::journal::{Journal, wire_name};
use super::run::{ExecRun, MODEL_ATTEMPTS, MODEL_RETRY};

impl ExecRun {
    /// One step of a remote agent (`AgentService.Step`), tried again while the agent is
    /// unavailable. Its reply is put in the chat format, so that it is journaled and replayed
    /// like a model's.
    pub(super) async fn remote_step(
        &self,
        address: &str,
        journal: &Journal,
        spec: &AgentSpec,
        step: u32,
    ) -> Result<crate::model::ChatResponse, String> {
        use cadre_proto::v1::agent_service_client::AgentServiceClient;
        use cadre_proto::v1::{RemoteTool, StepRequest, step_reply};

        let request = StepRequest {
            conversation_id: self.conversation.clone(),
            exec_id: self.exec_id.clone(),
            agent_id: self.agent_id.clone(),
            step,
            history: journal.events.clone(),
            tools: self
                .tool_list(spec)
                .into_iter()
                .map(|t| RemoteTool {
                    name: t.name,
                    description: t.description,
                    input_schema_json: t.input_schema.to_string(),
                })
                .collect(),
        };
        let mut last = String::new();
        for attempt in 0..MODEL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(MODEL_RETRY * attempt).await;
            }
            let span = crate::traces::chat_span("remote", "cadre.remote_agent");
            crate::traces::set(&span, "server.address", address.to_string());
            let mut traced = tonic::Request::new(request.clone());
            if let Some(traceparent) = crate::traces::traceparent(&span)
                && let Ok(value) = traceparent.parse()
            {
                traced.metadata_mut().insert("traceparent", value);
            }
            let reply = async {
                let channel = self
                    .agents
                    .remote_channel(address)
                    .map_err(|e| (false, e))?;
                let mut client = AgentServiceClient::new(channel);
                let mut stream = client
                    .step(traced)
                    .await
                    .map_err(|s| (s.code() == tonic::Code::Unavailable, s.to_string()))?
                    .into_inner();
                let (mut outputs, mut calls) = (Vec::new(), Vec::new());
                while let Some(r) = stream
                    .message()
                    .await
                    .map_err(|s| (s.code() == tonic::Code::Unavailable, s.to_string()))?
                {
                    match r.kind {
                        Some(step_reply::Kind::Output(text)) => outputs.push(text),
                        Some(step_reply::Kind::ToolCall(c)) => calls.push(c),
                        Some(step_reply::Kind::Fail(reason)) => {
                            return Err((false, format!("it failed the exec: {reason}")));
                        }
                        None => {}
                    }
                }
                Ok((outputs, calls))
            };
            let reply = tracing::Instrument::instrument(reply, span);
            let result = match self.time_left(journal) {
                Some(left) => tokio::time::timeout(left, reply)
                    .await
                    .unwrap_or_else(|_| Err((false, "exec_timeout_secs: limit reached".into()))),
                None => reply.await,
            };
            match result {
                Ok((outputs, calls)) => {
                    let tool_calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            json!({
                                "id": format!("r{step}.{}", i + 1),
                                "type": "function",
                                "function": {
                                    "name": wire_name(&c.tool),
                                    "arguments": c.arguments_json,
                                }
                            })
                        })
                        .collect();
                    let mut message = json!({"role": "assistant", "content": outputs.join("\n")});
                    if !tool_calls.is_empty() {
                        message["tool_calls"] = Value::Array(tool_calls);
                    }
                    return Ok(crate::model::ChatResponse {
                        raw: json!({"choices": [{"index": 0, "message": message}], "outputs": outputs}),
                        prompt_tokens: 0,
                        completion_tokens: 0,
                    });
                }
                Err((true, e)) => {
                    tracing::warn!(exec = %self.exec_id, error = %e, "remote agent unavailable; trying again");
                    last = e;
                }
                Err((false, e)) => return Err(format!("remote agent `{}`: {e}", self.agent_id)),
            }
        }
        Err(format!(
            "remote agent `{}` at {address}: {last} (after {MODEL_ATTEMPTS} attempts)",
            self.agent_id
        ))
    }
}
