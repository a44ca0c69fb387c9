//! Traces of execs in OpenTelemetry's GenAI conventions: one `invoke_agent {agent}` span per
//! exec, a `chat {model}` span per model call and an `execute_tool {tool}` span per tool call
//! under it. They are `tracing` spans of target [`TARGET`]; the binary exports them over OTLP
//! (tracing-opentelemetry) and calls [`enable`]. Until then no span is made at all, so an
//! untraced node pays nothing.
//!
//! An exec's trace context is journaled with it (`InputReceived.trace_parent`), so a resumed
//! exec (after a crash, an approval, a move to another node) continues the same trace, and it
//! travels to model endpoints (`traceparent` header), remote agents (gRPC metadata) and MCP
//! servers (`_meta.traceparent`) as a W3C `traceparent`.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span this module makes (the exporter's filter keeps only these).
pub const TARGET: &str = "cadre::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span making on: the process exports [`TARGET`]'s spans.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are made.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span of one exec of `agent`, a new trace, or the trace of `continues` (the
/// `traceparent` journaled when the exec started) when it is resumed.
pub fn exec_span(agent: &str, conversation: &str, exec_id: &str, continues: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "invoke_agent",
        otel.name = format!("invoke_agent {agent}"),
        otel.kind = "internal",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = agent,
        gen_ai.conversation.id = conversation,
        cadre.exec.id = exec_id,
        cadre.resumed = !continues.is_empty(),
    );
    if let Some(parent) = parse(continues) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    span
}

/// The span of one model call (every attempt) of the current exec.
pub fn chat_span(model: &str, provider: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "chat",
        otel.name = format!("chat {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
    )
}

/// The span of one tool call of the current exec.
pub fn tool_span(tool: &str, call_id: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "execute_tool",
        otel.name = format!("execute_tool {tool}"),
        otel.kind = "internal",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        gen_ai.tool.call.id = call_id,
    )
}

/// Sets an attribute on `span` (nothing on a span that is not exported).
pub fn set(span: &Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() {
        span.set_attribute(key, value);
    }
}

/// Adds an event to `span`, e.g. a supervisor's restart of the exec's agent.
pub fn event(span: &Span, name: &'static str, attributes: &[(&'static str, String)]) {
    if enabled() {
        let attributes = attributes
            .iter()
            .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.clone()))
            .collect();
        span.add_event(name, attributes);
    }
}

/// `span`'s W3C trace context (`00-TRACE-SPAN-01`); `None` when it is not exported.
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// The current span's `traceparent`, to pass on to what it calls.
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// A `traceparent` read back; `None` if empty or malformed.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_and_junk_does_not() {
        let context = parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert!(context.is_sampled() && context.is_remote());
        for junk in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            assert!(parse(junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn nothing_is_made_until_enabled() {
        assert!(exec_span("a", "c", "e", "").is_none());
        assert_eq!(current_traceparent(), None);
    }
}
