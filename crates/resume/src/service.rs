//! The service: watches committed streams for a break and continues them.

use std::sync::Arc;
use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError};
use tower_service::Service;

use crate::ResumeChoice;
use crate::future::ResponseFuture;
use crate::layer::Shared;

/// Continues a committed stream that breaks: see the [crate docs](crate).
///
/// # Readiness
///
/// `poll_ready` is the inner service's. A continuation is sent through a clone of the inner
/// service, made ready only when it is needed.
///
/// # Clone
///
/// Clones share the capability table and the budget.
#[derive(Clone)]
pub struct Resume<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Resume<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Resume { inner, shared }
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

impl<S: std::fmt::Debug> std::fmt::Debug for Resume<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<ChatRequest> for Resume<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture<S::Future, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let on = req
            .extensions()
            .get::<ResumeChoice>()
            .map_or(self.shared.on_by_default, |c| *c == ResumeChoice::On);
        if !on {
            return ResponseFuture::new(self.inner.call(req), None);
        }
        let kept = (self.inner.clone(), req.clone(), self.shared.clone());
        ResponseFuture::new(self.inner.call(req), Some(kept))
    }
}
