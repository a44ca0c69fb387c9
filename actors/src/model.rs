//! Model clients: an agent's model is called through [`ModelClient`]; [`OpenAiClient`] speaks
//! the OpenAI Chat Completions wire format (vLLM, Ollama, OpenAI-compatible gateways).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

/// One entry of the `models:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The id agents name the model by (`id`).
    pub id: String,
    /// `http://HOST:PORT/v1`: `/chat/completions` is appended.
    pub base_url: String,
    /// The model name sent in each request.
    pub model: String,
    /// The environment variable holding the API key (sent as a bearer token), if any.
    pub api_key_env: Option<String>,
    /// How long one request may take.
    pub timeout: Duration,
    /// CAs trusted for an `https://` endpoint besides the system's (`ca_file`).
    pub ca_file: Option<std::path::PathBuf>,
    /// What its tokens cost (`price`), for the `cadre_model_cost_total` metric.
    pub price: Option<ModelPrice>,
}

/// A model's price per million tokens (`models[].price`), in one currency of the operator's
/// choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    /// Per million input (prompt) tokens.
    pub input_per_million: f64,
    /// Per million output (completion) tokens.
    pub output_per_million: f64,
}

impl ModelPrice {
    /// What `input` prompt and `output` completion tokens cost.
    pub fn cost(&self, input: u32, output: u32) -> f64 {
        (f64::from(input) * self.input_per_million + f64::from(output) * self.output_per_million)
            / 1_000_000.0
    }
}

/// What an agent asks its model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Chat messages in the wire format (`{"role", "content", "tool_calls"?, "tool_call_id"?}`).
    pub messages: Vec<Value>,
    /// Tools in the wire format (`{"type": "function", "function": {…}}`).
    pub tools: Vec<Value>,
    /// The W3C trace context of the call's span, sent as the `traceparent` header.
    pub traceparent: Option<String>,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The whole response body, as journaled.
    pub raw: Value,
    /// Tokens in the prompt, from the response's `usage` (0 if absent).
    pub prompt_tokens: u32,
    /// Tokens in the completion, from the response's `usage` (0 if absent).
    pub completion_tokens: u32,
}

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The endpoint answered with an HTTP error status.
    #[error("model endpoint {url} answered {status}: {body}")]
    Status {
        /// The endpoint called.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (up to 500 characters).
        body: String,
    },
    /// The endpoint could not be reached, or the connection failed.
    #[error("cannot reach model endpoint {url}: {reason}")]
    Transport {
        /// The endpoint called.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The endpoint's certificate was refused (not worth retrying).
    #[error("model endpoint {url}: TLS certificate refused: {problem}")]
    Certificate {
        /// The endpoint called.
        url: String,
        /// Why (`unknown issuer`, `name mismatch`, `expired`…).
        problem: String,
    },
    /// The endpoint answered with a body that is not a valid response.
    #[error("model endpoint {url} sent an invalid response: {reason}")]
    Invalid {
        /// The endpoint called.
        url: String,
        /// What is wrong with the body.
        reason: String,
    },
}

impl ModelError {
    /// Whether trying again may help (the endpoint is down, overloaded or rate limiting).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Transport { .. } => true,
            Self::Certificate { .. } | Self::Invalid { .. } => false,
        }
    }
}

/// A boxed chat future.
pub type ChatFuture = Pin<Box<dyn Future<Output = Result<ChatResponse, ModelError>> + Send>>;

/// A model an agent can call.
pub trait ModelClient: Send + Sync {
    /// The model's name, as journaled in `ModelCalled`.
    fn name(&self) -> &str;
    /// What its tokens cost, if a price is configured.
    fn price(&self) -> Option<ModelPrice> {
        None
    }
    /// Sends one chat request and waits for the answer.
    fn chat(&self, request: ChatRequest) -> ChatFuture;
}

/// An OpenAI-compatible Chat Completions endpoint.
pub struct OpenAiClient {
    spec: ModelSpec,
    url: String,
    http: reqwest::Client,
}

impl OpenAiClient {
    /// A client for the endpoint `spec` names, with its request timeout.
    pub fn new(spec: ModelSpec) -> Result<Self, ModelError> {
        let url = format!("{}/chat/completions", spec.base_url.trim_end_matches('/'));
        let fail = |reason: String| ModelError::Transport {
            url: url.clone(),
            reason,
        };
        crate::tls::install_provider();
        let mut http = reqwest::Client::builder().timeout(spec.timeout);
        if url.starts_with("https://") {
            let tls = crate::tls::client_config(spec.ca_file.as_deref())
                .map_err(|e| fail(e.to_string()))?;
            http = http.tls_backend_preconfigured(tls);
        }
        let http = http.build().map_err(|e| fail(e.to_string()))?;
        Ok(Self { spec, url, http })
    }
}

impl ModelClient for OpenAiClient {
    fn name(&self) -> &str {
        &self.spec.model
    }

    fn price(&self) -> Option<ModelPrice> {
        self.spec.price
    }

    fn chat(&self, request: ChatRequest) -> ChatFuture {
        let mut body = json!({ "model": self.spec.model, "messages": request.messages });
        if !request.tools.is_empty() {
            body["tools"] = Value::Array(request.tools);
        }
        let mut call = self.http.post(&self.url).json(&body);
        if let Some(traceparent) = request.traceparent {
            call = call.header("traceparent", traceparent);
        }
        if let Some(key) = self
            .spec
            .api_key_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
        {
            call = call.bearer_auth(key);
        }
        let url = self.url.clone();
        Box::pin(async move {
            let transport = |e: reqwest::Error| match crate::tls::certificate_problem(&e) {
                Some(problem) => ModelError::Certificate {
                    url: url.clone(),
                    problem,
                },
                None => ModelError::Transport {
                    url: url.clone(),
                    reason: e.to_string(),
                },
            };
            let response = call.send().await.map_err(transport)?;
            let status = response.status();
            let text = response.text().await.map_err(transport)?;
            if !status.is_success() {
                return Err(ModelError::Status {
                    url,
                    status: status.as_u16(),
                    body: text.chars().take(500).collect(),
                });
            }
            let raw: Value = serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
                url: url.clone(),
                reason: format!("not JSON: {e}"),
            })?;
            if !raw["choices"][0]["message"].is_object() {
                return Err(ModelError::Invalid {
                    url,
                    reason: "no choices[0].message".into(),
                });
            }
            let tokens = |field: &str| raw["usage"][field].as_u64().unwrap_or(0) as u32;
            Ok(ChatResponse {
                prompt_tokens: tokens("prompt_tokens"),
                completion_tokens: tokens("completion_tokens"),
                raw,
            })
        })
    }
}

/// The node's models by id; cheap to clone.
pub type Models = Arc<std::collections::BTreeMap<String, Arc<dyn ModelClient>>>;
