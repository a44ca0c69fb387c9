//! The model backend: one journaled Chat Completions step (and compaction).

use std::time::Duration;

use cadre_proto::v1::{ModelCalled, event};
use serde_json::json;

use super::AgentSpec;
use super::journal::{Journal, wire_name};
use super::run::{ExecRun, MODEL_ATTEMPTS, MODEL_RETRY, RunError, Stop, now_micros};
use super::tool_calls::matches_any;
use crate::event_log::AppendError;
use crate::model::{ChatRequest, ModelClient, ModelError};

/// What the agent asks its model for when its context grew past the compaction threshold.
pub(super) const COMPACTION_PROMPT: &str = "Summarise the conversation so far for yourself: the user's \
    goals, what was done, tool results that still matter, and what remains. Reply with the \
    summary only.";

impl ExecRun {
    pub(super) async fn call_model(
        &self,
        journal: &mut Journal,
        spec: &AgentSpec,
        compaction: bool,
    ) -> Result<Result<(), Stop>, RunError> {
        if !compaction && journal.steps >= spec.max_iterations {
            return Ok(Err(Stop::Failed(format!(
                "max_iterations: {} model calls made, limit {}",
                journal.steps, spec.max_iterations
            ))));
        }
        if let Some(budget) = spec.token_budget
            && journal.tokens_used >= budget
        {
            return Ok(Err(Stop::Failed(format!(
                "token_budget: {} tokens used, limit {budget}",
                journal.tokens_used
            ))));
        }
        let step = journal.model_calls + 1;
        let (name, response) = match &spec.remote {
            Some(address) => (
                format!("remote agent at {address}"),
                self.remote_step(address, journal, spec, step).await,
            ),
            None => {
                let Some(model) = self.models.get(&spec.model).cloned() else {
                    return Ok(Err(Stop::Failed(format!(
                        "model `{}` is not configured",
                        spec.model
                    ))));
                };
                let mut messages = vec![json!({"role": "system", "content": spec.system_prompt})];
                messages.extend(journal.messages.iter().cloned());
                let tools = if compaction {
                    messages.push(json!({"role": "user", "content": COMPACTION_PROMPT}));
                    Vec::new()
                } else {
                    self.tool_list(spec)
                        .into_iter()
                        .map(|t| {
                            json!({
                                "type": "function",
                                "function": {
                                    "name": wire_name(&t.name),
                                    "description": t.description,
                                    "parameters": t.input_schema,
                                }
                            })
                        })
                        .collect()
                };
                let request = ChatRequest {
                    messages,
                    tools,
                    traceparent: None,
                };
                let response = self
                    .chat(&spec.model, model.as_ref(), request, journal)
                    .await;
                (model.name().to_string(), response)
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(reason) => return Ok(Err(Stop::Failed(reason))),
        };
        let (model_id, price) = match &spec.remote {
            Some(_) => ("remote", None),
            None => (
                spec.model.as_str(),
                self.models.get(&spec.model).and_then(|m| m.price()),
            ),
        };
        crate::metrics::metrics().model_used(
            &self.agent_id,
            model_id,
            (response.prompt_tokens, response.completion_tokens),
            price.map(|p| p.cost(response.prompt_tokens, response.completion_tokens)),
        );
        let called = ModelCalled {
            model: name,
            request_summary: if compaction {
                format!("compaction of {} messages", journal.messages.len())
            } else {
                format!(
                    "step {} with {} messages",
                    journal.steps + 1,
                    journal.messages.len() + 1
                )
            },
            response_json: response.raw.to_string(),
            prompt_tokens: response.prompt_tokens,
            completion_tokens: response.completion_tokens,
            compaction,
        };
        let key = format!("model-{step}");
        match self
            .append(
                journal,
                vec![self.event(event::Kind::ModelCalled(called))],
                &key,
            )
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(AppendError::ExecFinished { .. } | AppendError::ExecMoved { .. }) => {
                Ok(Err(Stop::Finished))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One request to the model `model_id` (the agent's, or a fork's patch), tried again while
    /// the endpoint fails transiently, within the exec's time limit.
    pub(super) async fn chat(
        &self,
        model_id: &str,
        model: &dyn ModelClient,
        request: ChatRequest,
        journal: &Journal,
    ) -> Result<crate::model::ChatResponse, String> {
        let mut last: Option<ModelError> = None;
        for attempt in 0..MODEL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(MODEL_RETRY * attempt).await;
            }
            let started = std::time::Instant::now();
            let span = crate::traces::chat_span(model_id, "openai");
            let mut attempt = request.clone();
            attempt.traceparent = crate::traces::traceparent(&span);
            let call = tracing::Instrument::instrument(model.chat(attempt), span.clone());
            let result = match self.time_left(journal) {
                Some(left) => match tokio::time::timeout(left, call).await {
                    Ok(r) => r,
                    Err(_) => {
                        crate::traces::set(&span, "error.type", "timeout");
                        crate::metrics::metrics().model_requested(model_id, started.elapsed());
                        return Err(format!(
                            "exec_timeout_secs: the model call did not answer within the exec's \
                             limit of {} s",
                            self.spec.exec_timeout.unwrap_or_default().as_secs()
                        ));
                    }
                },
                None => call.await,
            };
            record_chat(&span, &result);
            crate::metrics::metrics().model_requested(model_id, started.elapsed());
            match result {
                Ok(r) => return Ok(r),
                Err(e) if e.is_transient() => {
                    tracing::warn!(exec = %self.exec_id, error = %e, "model call failed; trying again");
                    last = Some(e);
                }
                Err(e) => return Err(format!("model `{model_id}`: {e}")),
            }
        }
        Err(format!(
            "model `{model_id}`: {} (after {MODEL_ATTEMPTS} attempts)",
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    pub(super) fn time_left(&self, journal: &Journal) -> Option<Duration> {
        let limit = self.spec.exec_timeout?;
        let elapsed = Duration::from_micros((now_micros() - journal.started_micros).max(0) as u64);
        Some(limit.saturating_sub(elapsed))
    }

    /// The tools the agent may call. A model gets them in the wire format, where `.` is not
    /// allowed in a function name (`time.now` is sent as `time__now`).
    pub(super) fn tool_list(&self, spec: &AgentSpec) -> Vec<crate::tools::ToolInfo> {
        self.tools
            .list()
            .into_iter()
            .filter(|t| matches_any(&spec.tools, &t.name))
            .collect()
    }
}

/// The outcome of a model call on its span: tokens and finish reasons, or the error.
fn record_chat(span: &tracing::Span, result: &Result<crate::model::ChatResponse, ModelError>) {
    if !crate::traces::enabled() {
        return;
    }
    match result {
        Ok(r) => {
            crate::traces::set(
                span,
                "gen_ai.usage.input_tokens",
                i64::from(r.prompt_tokens),
            );
            crate::traces::set(
                span,
                "gen_ai.usage.output_tokens",
                i64::from(r.completion_tokens),
            );
            if let Some(model) = r.raw["model"].as_str() {
                crate::traces::set(span, "gen_ai.response.model", model.to_string());
            }
            let reasons: Vec<opentelemetry::StringValue> = r.raw["choices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["finish_reason"].as_str())
                .map(|reason| reason.to_string().into())
                .collect();
            crate::traces::set(
                span,
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(reasons.into()),
            );
        }
        Err(e) => crate::traces::set(span, "error.type", e.to_string()),
    }
}
