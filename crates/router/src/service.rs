use std::sync::Arc;
use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError};
use tokio::time::Instant;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::Shared;

/// Routes each call to a tier's candidate and orders providers by measured TTFT. See the
/// [crate docs](crate).
#[derive(Clone)]
pub struct Router<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Router<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Router { inner, shared }
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

impl<S> Service<ChatRequest> for Router<S>
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
        match self.shared.route(&mut req, Instant::now()) {
            Ok((route, trial)) => ResponseFuture::routed(self.inner.call(req), route, trial),
            Err(e) => ResponseFuture::rejected(e),
        }
    }
}
