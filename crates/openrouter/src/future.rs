//! The leaf's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use llm_layers_core::{ChatStream, LlmError};

type Inner = Pin<Box<dyn Future<Output = Result<ChatStream, LlmError>> + Send>>;

/// The future of [`OpenRouter::call`](crate::OpenRouter): resolves at the first token.
///
/// It boxes its state once per call, as hyper-util's client future does; the hot path
/// after the commit (the chunks) allocates no futures. Dropping it cancels the request.
pub struct ResponseFuture {
    inner: Inner,
}

impl ResponseFuture {
    pub(crate) fn new(inner: Inner) -> Self {
        ResponseFuture { inner }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<ChatStream, LlmError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
