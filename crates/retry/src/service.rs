use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError, WholeAnswer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::Shared;

/// Retries failed attempts before the commit point. See the [crate docs](crate).
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Retry { inner, shared }
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

impl<S> Service<ChatRequest> for Retry<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        self.shared.budget.deposit();
        metrics::counter!("llm_retry_requests_total").increment(1);
        // The service that was made ready serves this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let whole = req.extensions().get::<WholeAnswer>().is_some();
        let n = self.shared.calls.fetch_add(1, Ordering::Relaxed);
        let rng = SmallRng::seed_from_u64(self.shared.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let first = ready.call(req.clone());
        ResponseFuture::new(first, ready, req, self.shared.clone(), rng, whole)
    }
}
