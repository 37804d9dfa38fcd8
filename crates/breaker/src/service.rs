use std::sync::Arc;
use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError};
use tokio::time::Instant;
use tower_service::Service;

use crate::future::{ProbeGuard, ResponseFuture};
use crate::layer::Shared;
use crate::registry::Blocked;

/// Keeps calls away from open (model, provider) breakers. See the [crate docs](crate).
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Breaker<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Breaker { inner, shared }
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

impl<S> Service<ChatRequest> for Breaker<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ChatRequest) -> Self::Future {
        let now = Instant::now();
        let model: Arc<str> = Arc::from(req.model());
        let admission = match self.shared.registry.admit(&req, now) {
            Ok(a) => a,
            Err(e) => return ResponseFuture::rejected(e),
        };
        if !admission.ignore.is_empty() {
            let prefs = req.body_mut().provider_mut();
            for (slug, blocked) in &admission.ignore {
                prefs.add_ignore(slug);
                // A span event on the call: this attempt keeps away from a blocked provider,
                // open (its breaker tripped) or held (it throttled), and for how long.
                let (why, until) = match blocked {
                    Blocked::Open(u) => ("open", *u),
                    Blocked::Held(u, _) => ("held", Some(*u)),
                };
                tracing::debug!(
                    provider = %slug,
                    state = why,
                    for_ms = until.map(|u| u.saturating_duration_since(now).as_millis() as u64),
                    "breaker: provider ignored"
                );
            }
        }
        // In-flight evidence: a call aimed at one provider (first of its `order`, or its
        // only one) that has no first token by the slow threshold is counted slow then,
        // not when it ends (a hung provider would teach nothing until its timeout).
        let watch = crate::future::aimed_at(req.body())
            .and_then(|_| self.shared.slow_threshold(&model))
            .map(|after| now + after);
        let guard = ProbeGuard::new(
            self.shared.clone(),
            model.clone(),
            admission.probes,
            admission.hold_probes,
        );
        // The body as sent stays with the future (an `Arc`, no copy) so a throttle can tell
        // whether another provider is left for it.
        let sent = req.shared_body().clone();
        ResponseFuture::called(
            self.inner.call(req),
            now,
            sent,
            admission.ignore,
            watch,
            self.shared.clone(),
            guard,
        )
    }
}
