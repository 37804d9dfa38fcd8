//! The response future: the inner call; its stream, when resume is on, watched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use llm_layers_core::{ChatRequest, ChatStream, LlmError};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::ResumeReport;
use crate::layer::Shared;
use crate::stream::Resuming;

pin_project! {
    /// The response future of [`Resume`](crate::Resume): resolves when the inner call
    /// commits, its stream wrapped to continue it if it breaks.
    pub struct ResponseFuture<F, S> {
        #[pin]
        fut: F,
        kept: Option<(S, ChatRequest, Arc<Shared>)>,
    }
}

impl<F, S> ResponseFuture<F, S> {
    pub(crate) fn new(fut: F, kept: Option<(S, ChatRequest, Arc<Shared>)>) -> Self {
        ResponseFuture { fut, kept }
    }
}

impl<F, S> std::fmt::Debug for ResponseFuture<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("resume", &self.kept.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, S> Future for ResponseFuture<F, S>
where
    F: Future<Output = Result<ChatStream, LlmError>>,
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut stream = ready!(this.fut.poll(cx))?;
        let Some((service, request, shared)) = this.kept.take() else {
            return Poll::Ready(Ok(stream));
        };
        let report = ResumeReport::default();
        let provider = stream.meta().provider.clone();
        let model = stream.meta().model.clone();
        stream.meta_mut().extensions.insert(report.clone());
        Poll::Ready(Ok(stream.wrap(|first| {
            Resuming::new(first, service, request, shared, report, model, provider)
        })))
    }
}
