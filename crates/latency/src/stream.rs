use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use llm_layers_core::{ChatStream, ErrorKind, LlmError, StreamChunk, TimeoutKind};
use metrics::{Counter, Histogram, Label, counter, histogram};
use tokio::time::Instant;

use crate::layer::Shared;
use crate::names::*;
use crate::span::Tokens;
use crate::store::Outcome;

/// The metric handles of a committed call's label set, registered once per label set (see
/// `Shared::handles`): the histograms of a call that ends cleanly or is cancelled, and its
/// counters. A call that fails mid-stream builds its labels (with `error.type`) instead.
pub(crate) struct Handles {
    /// The labels without the response model, for the handles made on first use.
    base: Vec<Label>,
    ttft: Histogram,
    per_chunk: Histogram,
    duration: Histogram,
    // Registered on first use, so no series shows up before it has a value.
    tps: OnceLock<Histogram>,
    input_tokens: OnceLock<Histogram>,
    output_tokens: OnceLock<Histogram>,
    ok: OnceLock<Counter>,
    cancelled: OnceLock<Counter>,
}

impl Handles {
    fn new(labels: &Labels, provider: Option<&str>, response_model: &str) -> Handles {
        let with_model = labels.base(provider, Some(response_model));
        let base = labels.base(provider, None);
        Handles {
            ttft: histogram!(TIME_TO_FIRST_CHUNK, with_model.clone()),
            per_chunk: histogram!(TIME_PER_OUTPUT_CHUNK, with_model),
            duration: histogram!(OPERATION_DURATION, base.clone()),
            base,
            tps: OnceLock::new(),
            input_tokens: OnceLock::new(),
            output_tokens: OnceLock::new(),
            ok: OnceLock::new(),
            cancelled: OnceLock::new(),
        }
    }

    fn with(&self, key: &'static str, value: &'static str) -> Vec<Label> {
        let mut l = self.base.clone();
        l.push(Label::from_static_parts(key, value));
        l
    }

    fn tps(&self) -> &Histogram {
        self.tps
            .get_or_init(|| histogram!(OUTPUT_TOKENS_PER_SECOND, self.base.clone()))
    }

    fn tokens(&self, input: bool) -> &Histogram {
        let (cell, kind) = if input {
            (&self.input_tokens, "input")
        } else {
            (&self.output_tokens, "output")
        };
        cell.get_or_init(|| histogram!(TOKEN_USAGE, self.with("gen_ai.token.type", kind)))
    }

    fn calls(&self, ok: bool) -> &Counter {
        let (cell, outcome) = if ok {
            (&self.ok, "ok")
        } else {
            (&self.cancelled, "cancelled")
        };
        cell.get_or_init(|| counter!(CALLS, self.with("outcome", outcome)))
    }
}

/// The labels of one call, built once per call.
pub(crate) struct Labels {
    model: Arc<str>,
    /// The real model, the store's key (the label may be `_OTHER`).
    key: Arc<str>,
    bucket: &'static str,
    /// A whole answer seen per call: its first token is not observable (no TTFT).
    whole: bool,
    shared: Arc<Shared>,
    span: tracing::Span,
    /// The call's count of attempts given up, when it keeps one (per attempt only).
    given_up: Option<llm_layers_core::GivenUp>,
}

impl Labels {
    pub(crate) fn new(
        model: Arc<str>,
        key: Arc<str>,
        bucket: &'static str,
        whole: bool,
        shared: Arc<Shared>,
        span: tracing::Span,
    ) -> Self {
        Labels {
            model,
            key,
            bucket,
            whole,
            shared,
            span,
            given_up: None,
        }
    }

    /// Counts this attempt in `given_up` if it is given up before its first token.
    pub(crate) fn counting(mut self, given_up: Option<llm_layers_core::GivenUp>) -> Self {
        self.given_up = given_up;
        self
    }

    fn base(&self, provider: Option<&str>, response_model: Option<&str>) -> Vec<Label> {
        let mut v = vec![
            Label::from_static_parts("gen_ai.operation.name", "chat"),
            Label::from_static_parts("gen_ai.provider.name", "openrouter"),
            Label::new("gen_ai.request.model", self.model.to_string()),
            Label::from_static_parts("llm.prompt_size_bucket", self.bucket),
            Label::from_static_parts("llm.scope", self.shared.scope.as_str()),
        ];
        if let Some(p) = provider {
            // Provider names come from the upstream; fold unknown long ones.
            let p = if p.len() <= 64 {
                p.to_owned()
            } else {
                crate::store::OTHER.to_owned()
            };
            v.push(Label::new("openrouter.provider", p));
        }
        if let Some(m) = response_model {
            let m = if &*self.model == crate::store::OTHER {
                crate::store::OTHER.to_owned()
            } else {
                m.to_owned()
            };
            v.push(Label::new("gen_ai.response.model", m));
        }
        v
    }

    /// The tracing span of the call.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A call given up before its first token: a censored sample (no first token after
    /// this long), counted once.
    pub(crate) fn abandoned(&self, start: Instant, now: Instant) {
        if let Some(g) = &self.given_up {
            g.add();
        }
        counter!(ABANDONED, "llm.scope" => self.shared.scope.as_str()).increment(1);
        crate::span::ended(&self.span, "cancelled", None, None);
        if let Some(store) = &self.shared.store {
            store.record(
                (&self.key, None),
                Some(now.saturating_duration_since(start)),
                None,
                Outcome::Censored,
            );
        }
    }

    /// A call that failed before the commit point.
    pub(crate) fn failed(&self, e: &LlmError, start: Instant, now: Instant) {
        // Cut by our own first-token or total deadline after the upstream took it: given up
        // (a connect timeout never reached it).
        if let (Some(g), ErrorKind::Timeout(TimeoutKind::FirstToken | TimeoutKind::Total)) =
            (&self.given_up, e.kind())
        {
            g.add();
        }
        let provider = e.provider();
        let mut labels = self.base(provider, None);
        let error_type = error_type(e);
        labels.push(Label::from_static_parts("error.type", error_type));
        histogram!(OPERATION_DURATION, labels.clone()).record(now.saturating_duration_since(start));
        labels.push(Label::from_static_parts("outcome", error_type));
        counter!(CALLS, labels).increment(1);
        if let Some(store) = &self.shared.store {
            store.record((&self.key, provider), None, None, Outcome::of(e));
        }
        crate::span::failed(&self.span, e, error_type);
    }
}

/// The `error.type` of an error: its kind, or for a status error the status code.
fn error_type(e: &LlmError) -> &'static str {
    match (e.kind(), e.status_code().map(|s| s.as_u16())) {
        (ErrorKind::Status, Some(429)) => "429",
        (ErrorKind::Status, Some(s)) if s >= 500 => "5xx",
        (ErrorKind::Status, Some(_)) => "4xx",
        (k, _) => k.as_str(),
    }
}

/// A committed stream being recorded: chunk gaps as they come, the rest at the end (or at
/// drop, as `cancelled`).
pub(crate) struct RecordingStream {
    inner: ChatStream,
    labels: Labels,
    handles: Arc<Handles>,
    start: Instant,
    first_token: Instant,
    last: Instant,
    chunks: u64,
    max_gap: Duration,
    /// The answer's token counts, from its usage: all that is read of it (a copy of the
    /// whole usage would be its extras' map, cloned, and 56 bytes in every open stream).
    tokens: Option<Tokens>,
    provider: Option<String>,
    done: bool,
}

impl RecordingStream {
    pub(crate) fn committed(
        stream: ChatStream,
        labels: Labels,
        start: Instant,
        now: Instant,
    ) -> ChatStream {
        let provider = stream.meta().provider.clone();
        let ttft = now.saturating_duration_since(start);
        let handles = {
            let response_model = &stream.meta().model;
            labels.shared.handles(
                &labels.model,
                labels.bucket,
                provider.as_deref(),
                response_model,
                || Handles::new(&labels, provider.as_deref(), response_model),
            )
        };
        if !labels.whole {
            handles.ttft.record(ttft);
        }
        crate::span::committed(&labels.span, stream.meta(), ttft);
        stream.wrap(move |s| RecordingStream {
            inner: s,
            labels,
            handles,
            start,
            first_token: now,
            last: now,
            chunks: 0,
            max_gap: Duration::ZERO,
            tokens: None,
            provider,
            done: false,
        })
    }

    fn finish(&mut self, outcome: &str, error: Option<&LlmError>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let now = Instant::now();
        let ttft = self.first_token.saturating_duration_since(self.start);
        let duration = now.saturating_duration_since(self.start);
        let generation = now.saturating_duration_since(self.first_token);
        let output = self.tokens.map_or(self.chunks, |t| t.output);
        let tps = (generation > Duration::from_millis(1) && output > 1)
            .then(|| output as f64 / generation.as_secs_f64());
        crate::span::ended(
            &self.labels.span,
            outcome,
            self.tokens,
            error.map(error_type),
        );
        match (error, outcome) {
            (None, "ok" | "cancelled") => {
                let h = &self.handles;
                h.duration.record(duration);
                if let Some(tps) = tps {
                    h.tps().record(tps);
                }
                if let Some(t) = self.tokens {
                    h.tokens(true).record(t.input as f64);
                    h.tokens(false).record(t.output as f64);
                }
                h.calls(outcome == "ok").increment(1);
            }
            _ => self.record_failure(outcome, error, duration, tps),
        }
        if let Some(store) = &self.labels.shared.store {
            let o = match (outcome, error) {
                ("cancelled", _) => Outcome::Cancelled,
                (_, Some(e)) => Outcome::of(e),
                ("ok", None) => Outcome::Ok,
                _ => Outcome::Error,
            };
            let tps = tps.filter(|_| o == Outcome::Ok);
            store.record(
                (&self.labels.key, self.provider.as_deref()),
                (!self.labels.whole).then_some(ttft),
                tps,
                o,
            );
            if o == Outcome::Ok && self.chunks > 1 {
                store.record_max_gap((&self.labels.key, self.provider.as_deref()), self.max_gap);
            }
        }
    }

    /// A stream that ended in an error: its labels carry `error.type`, so they are built
    /// here rather than cached.
    fn record_failure(
        &self,
        outcome: &str,
        error: Option<&LlmError>,
        duration: Duration,
        tps: Option<f64>,
    ) {
        let mut labels = self.labels.base(self.provider.as_deref(), None);
        if let Some(e) = error {
            labels.push(Label::from_static_parts("error.type", error_type(e)));
        }
        histogram!(OPERATION_DURATION, labels.clone()).record(duration);
        if let Some(tps) = tps {
            histogram!(OUTPUT_TOKENS_PER_SECOND, labels.clone()).record(tps);
        }
        if let Some(t) = self.tokens {
            let mut l = labels.clone();
            l.push(Label::from_static_parts("gen_ai.token.type", "input"));
            histogram!(TOKEN_USAGE, l).record(t.input as f64);
            let mut l = labels.clone();
            l.push(Label::from_static_parts("gen_ai.token.type", "output"));
            histogram!(TOKEN_USAGE, l).record(t.output as f64);
        }
        labels.push(Label::new("outcome", outcome.to_owned()));
        counter!(CALLS, labels).increment(1);
    }
}

impl Drop for RecordingStream {
    fn drop(&mut self) {
        self.finish("cancelled", None);
    }
}

impl Stream for RecordingStream {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // What the stream starts below (a continuation's attempt) is a child of this span.
        let polled = {
            let _enter = this.labels.span.enter();
            Pin::new(&mut this.inner).poll_next(cx)
        };
        let Poll::Ready(item) = &polled else {
            return polled;
        };
        match item {
            Some(Ok(c)) => {
                if let Some(r) = c.finish_reason() {
                    crate::span::finish_reason(&this.labels.span, r);
                }
                if c.has_output() {
                    // When it arrived, as the decoder read the clock for it.
                    let now = c.received_or_now();
                    if this.chunks > 0 {
                        let gap = now.saturating_duration_since(this.last);
                        this.handles.per_chunk.record(gap);
                        this.max_gap = this.max_gap.max(gap);
                    }
                    this.last = now;
                    this.chunks += 1;
                }
                if let Some(u) = c.usage() {
                    this.tokens = Some(Tokens::of(u));
                }
            }
            Some(Err(e)) => this.finish(error_type(e), Some(e)),
            None => this.finish("ok", None),
        }
        polled
    }
}
