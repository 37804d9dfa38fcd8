use std::sync::Arc;
use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::Shared;

/// Hedges calls of an inner chat service on the first token. See the [crate docs](crate).
#[derive(Clone)]
pub struct Hedge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Hedge<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Hedge<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Hedge { inner, shared }
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

impl<S> Service<ChatRequest> for Hedge<S>
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
        // The ready service serves the original; the same handle, made ready again only
        // when a hedge fires, serves the hedges.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let (delay, cold) = self.shared.delay.lookup(&req);
        let first = ready.call(req.clone());
        ResponseFuture::new(first, ready, req, self.shared.clone(), delay, cold)
    }
}
