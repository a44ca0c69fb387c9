//! The tool registry: every tool the node can call, namespaced by the actor that serves it
//! (`time.get_current_time` is the tool `get_current_time` of the MCP server with id `time`),
//! with its JSON schema. Arguments are checked against the schema before a call is made, so a
//! bad call never reaches the tool. The registry is dynamic: a server that starts adds its
//! tools, one that stops or fails removes them, and a server's `tools/list_changed` replaces
//! them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

/// A tool as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    /// `namespace.tool`.
    pub name: String,
    /// The path of the actor that serves it (`root/tools/time`).
    pub server: String,
    /// What the tool does, for a model.
    pub description: String,
    /// The JSON schema of its arguments.
    pub input_schema: Value,
    /// Calls need an approval (an agent's exec pauses for one; an API caller says so).
    pub requires_approval: bool,
}

/// A tool as its server describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    /// The name inside its server (`get_current_time`).
    pub name: String,
    /// What the tool does, for a model.
    pub description: String,
    /// The JSON schema of its arguments.
    pub input_schema: Value,
    /// Calls need an approval.
    pub requires_approval: bool,
}

/// Who calls, for the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// The conversation the call is journaled in (built-in tools work in its workspace).
    pub conversation: String,
    /// `conversation/exec/step`: the same for a retried call.
    pub idempotency_key: String,
    /// The W3C trace context of the call's span, passed on (MCP: `_meta.traceparent`).
    pub traceparent: Option<String>,
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// The tool's result as JSON (for MCP: the whole `CallToolResult`).
    pub result: Value,
    /// The tool itself reported an error (MCP `isError`): a result, not a failed call.
    pub is_error: bool,
}

/// Why a call was not made or did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No tool has this name.
    #[error("no tool `{0}` (`cadre tools ls` lists the tools)")]
    NotFound(String),
    /// The arguments are not a JSON object or do not match the tool's schema.
    #[error("invalid arguments for `{tool}`: {reason}")]
    InvalidArguments {
        /// The tool called.
        tool: String,
        /// What does not match.
        reason: String,
    },
    /// The tool did not answer in time.
    #[error("tool `{tool}` did not answer within {ms} ms")]
    Timeout {
        /// The tool called.
        tool: String,
        /// The timeout, in milliseconds.
        ms: u64,
    },
    /// The tool's server cannot be reached, or its connection failed.
    #[error("tool `{tool}` is unavailable: {reason}")]
    Unavailable {
        /// The tool called.
        tool: String,
        /// What went wrong.
        reason: String,
    },
    /// The namespace is already registered by another server.
    #[error("namespace `{namespace}` is already served by `{server}`")]
    Taken {
        /// The namespace asked for.
        namespace: String,
        /// The path of the actor that holds it.
        server: String,
    },
}

/// A boxed call future.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<ToolOutcome, ToolError>> + Send>>;

/// Serves the tools of one namespace (an MCP server's session, built-in tools).
pub trait ToolServer: Send + Sync {
    /// Calls `tool` (its name inside the server) with checked `arguments`; the context's
    /// idempotency key is passed to the tool so that it can recognise a retried call.
    fn call(&self, tool: &str, arguments: Map<String, Value>, ctx: &CallContext) -> CallFuture;
}

/// The node's tools; cheap to clone.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    inner: Arc<RwLock<Inner>>,
}

/// A namespace held by one server instance; [`ToolRegistry::unregister`] takes it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration(u64);

#[derive(Default)]
struct Inner {
    namespaces: BTreeMap<String, Namespace>,
    next: u64,
}

struct Namespace {
    server: String,
    registration: u64,
    tools: BTreeMap<String, Tool>,
    caller: Arc<dyn ToolServer>,
}

struct Tool {
    def: ToolDef,
    /// `None` when the server's schema does not compile: only "an object" is checked then.
    validator: Option<Arc<jsonschema::Validator>>,
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `namespace` with its tools, served by the actor at `server`.
    pub fn register(
        &self,
        namespace: &str,
        server: &str,
        tools: Vec<ToolDef>,
        caller: Arc<dyn ToolServer>,
    ) -> Result<Registration, ToolError> {
        let mut inner = self.inner.write().expect("tool registry");
        if let Some(existing) = inner.namespaces.get(namespace) {
            return Err(ToolError::Taken {
                namespace: namespace.to_string(),
                server: existing.server.clone(),
            });
        }
        inner.next += 1;
        let registration = inner.next;
        let tools = compile(namespace, tools);
        tracing::info!(namespace, server, tools = tools.len(), "tools registered");
        inner.namespaces.insert(
            namespace.to_string(),
            Namespace {
                server: server.to_string(),
                registration,
                tools,
                caller,
            },
        );
        Ok(Registration(registration))
    }

    /// Replaces the tools of a namespace (after `tools/list_changed`), if it is still held by
    /// `registration`.
    pub fn update(&self, namespace: &str, registration: Registration, tools: Vec<ToolDef>) {
        let mut inner = self.inner.write().expect("tool registry");
        if let Some(ns) = inner.namespaces.get_mut(namespace)
            && ns.registration == registration.0
        {
            ns.tools = compile(namespace, tools);
            tracing::info!(namespace, tools = ns.tools.len(), "tools changed");
        }
    }

    /// Removes a namespace, if it is still held by `registration`.
    pub fn unregister(&self, namespace: &str, registration: Registration) {
        let mut inner = self.inner.write().expect("tool registry");
        if inner
            .namespaces
            .get(namespace)
            .is_some_and(|ns| ns.registration == registration.0)
        {
            inner.namespaces.remove(namespace);
            tracing::info!(namespace, "tools removed");
        }
    }

    /// Every tool, by name.
    pub fn list(&self) -> Vec<ToolInfo> {
        let inner = self.inner.read().expect("tool registry");
        inner
            .namespaces
            .iter()
            .flat_map(|(ns, n)| {
                n.tools.values().map(move |t| ToolInfo {
                    name: format!("{ns}.{}", t.def.name),
                    server: n.server.clone(),
                    description: t.def.description.clone(),
                    input_schema: t.def.input_schema.clone(),
                    requires_approval: t.def.requires_approval,
                })
            })
            .collect()
    }

    /// Whether the registry has the tool `namespace.tool`.
    pub fn contains(&self, name: &str) -> bool {
        let Some((namespace, tool)) = name.split_once('.') else {
            return false;
        };
        let inner = self.inner.read().expect("tool registry");
        inner
            .namespaces
            .get(namespace)
            .is_some_and(|ns| ns.tools.contains_key(tool))
    }

    /// Checks `arguments` against the tool's schema and returns what calls it, or why not.
    pub fn prepare(&self, name: &str, arguments: &Value) -> Result<PreparedCall, ToolError> {
        let (namespace, tool) = name
            .split_once('.')
            .ok_or_else(|| ToolError::NotFound(name.to_string()))?;
        let inner = self.inner.read().expect("tool registry");
        let ns = inner
            .namespaces
            .get(namespace)
            .ok_or_else(|| ToolError::NotFound(name.to_string()))?;
        let t = ns
            .tools
            .get(tool)
            .ok_or_else(|| ToolError::NotFound(name.to_string()))?;
        let invalid = |reason: String| ToolError::InvalidArguments {
            tool: name.to_string(),
            reason,
        };
        let Value::Object(map) = arguments else {
            return Err(invalid(format!(
                "arguments must be a JSON object, got {}",
                kind_of(arguments)
            )));
        };
        if let Some(validator) = &t.validator {
            let errors: Vec<String> = validator
                .iter_errors(arguments)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            if !errors.is_empty() {
                return Err(invalid(errors.join("; ")));
            }
        }
        Ok(PreparedCall {
            name: name.to_string(),
            requires_approval: t.def.requires_approval,
            tool: tool.to_string(),
            arguments: map.clone(),
            caller: ns.caller.clone(),
        })
    }
}

/// A checked call, ready to be made (and journaled first).
pub struct PreparedCall {
    /// The tool's name, `namespace.tool`.
    pub name: String,
    /// Whether the call needs an approval before it is made.
    pub requires_approval: bool,
    tool: String,
    arguments: Map<String, Value>,
    caller: Arc<dyn ToolServer>,
}

impl PreparedCall {
    /// Makes the call.
    pub fn call(self, ctx: &CallContext) -> CallFuture {
        let call = self.caller.call(&self.tool, self.arguments, ctx);
        if !crate::metrics::enabled() {
            return call;
        }
        let mut timing = ToolTiming {
            name: self.name,
            started: std::time::Instant::now(),
            counted: false,
        };
        Box::pin(async move {
            let outcome = call.await;
            timing.count(outcome.as_ref().map_or(true, |o| o.is_error));
            outcome
        })
    }
}

/// Counts one tool call in the metrics once: when it ends, or as failed when it is dropped
/// unfinished (its caller's timeout).
struct ToolTiming {
    name: String,
    started: std::time::Instant,
    counted: bool,
}

impl ToolTiming {
    fn count(&mut self, failed: bool) {
        if !std::mem::replace(&mut self.counted, true) {
            crate::metrics::metrics().tool_called(&self.name, self.started.elapsed(), failed);
        }
    }
}

impl Drop for ToolTiming {
    fn drop(&mut self) {
        self.count(true);
    }
}

fn compile(namespace: &str, tools: Vec<ToolDef>) -> BTreeMap<String, Tool> {
    tools
        .into_iter()
        .map(|def| {
            let validator = match jsonschema::validator_for(&def.input_schema) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::warn!(
                        namespace, tool = %def.name, error = %e,
                        "the tool's input schema does not compile; only checking for an object"
                    );
                    None
                }
            };
            (def.name.clone(), Tool { def, validator })
        })
        .collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Echo;

    impl ToolServer for Echo {
        fn call(&self, tool: &str, arguments: Map<String, Value>, ctx: &CallContext) -> CallFuture {
            let result = json!({"tool": tool, "arguments": arguments, "key": ctx.idempotency_key});
            Box::pin(async move {
                Ok(ToolOutcome {
                    result,
                    is_error: false,
                })
            })
        }
    }

    fn add_tool() -> ToolDef {
        ToolDef {
            name: "add".into(),
            description: "adds".into(),
            input_schema: json!({
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"]
            }),
            requires_approval: false,
        }
    }

    #[tokio::test]
    async fn calls_are_checked_against_the_schema_and_routed_by_namespace() {
        let registry = ToolRegistry::new();
        let reg = registry
            .register("math", "root/math", vec![add_tool()], Arc::new(Echo))
            .unwrap();
        assert_eq!(registry.list()[0].name, "math.add");
        let out = registry
            .prepare("math.add", &json!({"a": 1, "b": 2}))
            .unwrap()
            .call(&CallContext {
                conversation: "c".into(),
                idempotency_key: "c/e/1".into(),
                traceparent: None,
            })
            .await
            .unwrap();
        assert_eq!(out.result["tool"], "add");
        assert_eq!(out.result["key"], "c/e/1");

        let err = registry
            .prepare("math.add", &json!({"a": "one"}))
            .err()
            .unwrap();
        let ToolError::InvalidArguments { reason, .. } = &err else {
            panic!("{err}")
        };
        assert!(reason.contains("\"b\" is a required property"), "{reason}");
        assert!(reason.contains("/a"), "{reason}");
        assert!(matches!(
            registry.prepare("math.add", &json!([1, 2])),
            Err(ToolError::InvalidArguments { .. })
        ));
        assert!(matches!(
            registry.prepare("math.sub", &json!({})),
            Err(ToolError::NotFound(_))
        ));

        // A second server cannot take the namespace; a stale registration cannot remove it.
        assert!(matches!(
            registry.register("math", "root/other", vec![], Arc::new(Echo)),
            Err(ToolError::Taken { .. })
        ));
        registry.unregister("math", Registration(reg.0 + 1));
        assert_eq!(registry.list().len(), 1);
        registry.update("math", reg, vec![]);
        assert!(registry.list().is_empty());
        registry.unregister("math", reg);
        assert!(matches!(
            registry.prepare("math.add", &json!({})),
            Err(ToolError::NotFound(_))
        ));
    }
}
