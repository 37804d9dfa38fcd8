use std::sync::Arc;
use std::task::{Context, Poll};

use llm_layers_core::{AttemptKind, ChatRequest, ChatStream, LlmError};
use tokio::time::Instant;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::Shared;
use crate::stream::Labels;

/// Records latency of an inner chat service. See the [crate docs](crate).
#[derive(Clone)]
pub struct Latency<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Latency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Latency<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Latency { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, this one dropped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The prompt-size bucket of a request: its message text in bytes / 4 (≈ tokens), rounded
/// up to a power of 4, capped at 65536 (`"64"`, `"256"`, ..., `"65536+"`).
pub fn prompt_bucket(req: &ChatRequest) -> &'static str {
    const BUCKETS: [&str; 8] = ["4", "16", "64", "256", "1024", "4096", "16384", "65536"];
    let tokens = req
        .body()
        .messages
        .iter()
        .map(|m| m.text_len())
        .sum::<usize>()
        / 4;
    let mut limit = 4usize;
    for b in BUCKETS {
        if tokens <= limit {
            return b;
        }
        limit *= 4;
    }
    "65536+"
}

impl<S> Service<ChatRequest> for Latency<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let (model, key) = self.shared.model_label(req.model());
        let bucket = prompt_bucket(&req);
        // Per call, a whole answer "commits" when retry has drained it: its first token is
        // not seen here, so no TTFT is recorded for it (its duration is).
        let whole = self.shared.scope == crate::layer::Scope::Call
            && req
                .extensions()
                .get::<llm_layers_core::WholeAnswer>()
                .is_some();
        let given_up = (self.shared.scope == crate::layer::Scope::Attempt)
            .then(|| req.extensions().get::<llm_layers_core::GivenUp>().cloned())
            .flatten();
        let span = crate::span::new(self.shared.scope, &model, AttemptKind::of(&req));
        // The layers below (and the attempts they start) are children of this span.
        let fut = span.in_scope(|| self.inner.call(req));
        let labels =
            Labels::new(model, key, bucket, whole, self.shared.clone(), span).counting(given_up);
        ResponseFuture::new(fut, Instant::now(), labels)
    }
}
