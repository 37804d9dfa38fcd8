//! The `tracing` spans of calls and attempts, named and attributed by the OpenTelemetry GenAI
//! semantic conventions (`gen_ai.*`), ours under `llm_layers.*`. Exported as OpenTelemetry
//! spans by `tracing-opentelemetry` (the gateway's `otel` feature), whose `otel.name`,
//! `otel.kind` and `otel.status_code` fields set the span's name, kind and status.
//!
//! Every value is bounded: model labels are the layer's (folded past its cap), provider
//! names and ids longer than [`MAX_VALUE`] are left out. Never a prompt, never a completion.
//! With no subscriber interested in them (the default) the spans cost a disabled-callsite
//! check: their fields are not even evaluated.

use std::time::Duration;

use llm_layers_core::{AttemptKind, LlmError, ResponseMeta, Usage};
use tracing::Span;
use tracing::field::Empty;

use crate::layer::Scope;

/// The longest value (provider, response model, response id) a span records.
pub(crate) const MAX_VALUE: usize = 128;

fn bounded(v: &str) -> Option<&str> {
    (v.len() <= MAX_VALUE).then_some(v)
}

/// A span named `chat {model}` with the GenAI fields every call and attempt span has
/// (recorded as they become known), then `$extra`.
macro_rules! chat_span {
    ($name:literal, $kind:literal, $model:expr, $($extra:tt)*) => {
        tracing::debug_span!(
            $name,
            otel.name = %format_args!("chat {}", $model),
            otel.kind = $kind,
            otel.status_code = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = "openrouter",
            gen_ai.request.model = $model,
            gen_ai.response.model = Empty,
            gen_ai.response.id = Empty,
            gen_ai.response.finish_reasons = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            error.type = Empty,
            llm_layers.provider = Empty,
            llm_layers.ttft_ms = Empty,
            llm_layers.outcome = Empty,
            $($extra)*
        )
    };
}

/// A call's span (`llm.call`, kind internal: what the caller asked) or an attempt's
/// (`llm.attempt`, kind client: one upstream request), a child of whatever span is current.
pub(crate) fn new(scope: Scope, model: &str, kind: AttemptKind) -> Span {
    match scope {
        Scope::Call => chat_span!(
            "llm.call",
            "internal",
            model,
            llm_layers.attempt = Empty,
            llm_layers.attempts = Empty,
        ),
        Scope::Attempt => chat_span!(
            "llm.attempt",
            "client",
            model,
            server.address = Empty,
            llm_layers.upstream_key = Empty,
            llm_layers.attempt.kind = kind.as_str(),
        ),
    }
}

/// The first token: who served, what, and when.
pub(crate) fn committed(span: &Span, meta: &ResponseMeta, ttft: Duration) {
    if span.is_disabled() {
        return;
    }
    if let Some(p) = meta.provider.as_deref().and_then(bounded) {
        span.record("llm_layers.provider", p);
    }
    if let Some(m) = bounded(&meta.model).filter(|m| !m.is_empty()) {
        span.record("gen_ai.response.model", m);
    }
    if let Some(id) = meta.generation_id.as_deref().and_then(bounded) {
        span.record("gen_ai.response.id", id);
    }
    span.record("llm_layers.ttft_ms", ttft.as_millis() as u64);
    if meta.attempts > 0 {
        span.record("llm_layers.attempt", meta.attempt);
        span.record("llm_layers.attempts", meta.attempts);
    }
}

/// A finish reason seen in the stream.
pub(crate) fn finish_reason(span: &Span, reason: &str) {
    if let Some(r) = bounded(reason) {
        span.record("gen_ai.response.finish_reasons", r);
    }
}

/// An answer's token counts, from its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) input: u64,
    pub(crate) output: u64,
}

impl Tokens {
    pub(crate) fn of(u: &Usage) -> Tokens {
        Tokens {
            input: u.prompt_tokens,
            output: u.completion_tokens,
        }
    }
}

/// The end of a committed stream: its outcome, its token counts, its error.
pub(crate) fn ended(span: &Span, outcome: &str, tokens: Option<Tokens>, error: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    span.record("llm_layers.outcome", outcome);
    if let Some(t) = tokens {
        span.record("gen_ai.usage.input_tokens", t.input);
        span.record("gen_ai.usage.output_tokens", t.output);
    }
    if let Some(e) = error {
        span.record("error.type", e);
        span.record("otel.status_code", "error");
    }
}

/// A failure before the first token.
pub(crate) fn failed(span: &Span, e: &LlmError, error_type: &str) {
    if span.is_disabled() {
        return;
    }
    if let Some(p) = e.provider().and_then(bounded) {
        span.record("llm_layers.provider", p);
    }
    span.record("llm_layers.outcome", error_type);
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}
