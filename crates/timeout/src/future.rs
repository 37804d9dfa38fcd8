use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use llm_layers_core::{ChatBody, ChatStream, LlmError, TimeoutKind};
use tokio::time::{Instant, Sleep, sleep_until};

use std::sync::Arc;

use crate::layer::Adaptive;
use crate::stream::TimeoutStream;

pin_project_lite::pin_project! {
    /// The response future of [`Timeout`](crate::Timeout): the inner future, raced against
    /// the first-token and total deadlines; on success the stream is wrapped with the idle
    /// and total limits.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        kind: TimeoutKind,
        total_at: Option<Instant>,
        idle: Option<Duration>,
        // The adaptive idle limit is read at the commit point, when the provider is known.
        idle_from: Option<(Arc<Adaptive>, Arc<ChatBody>)>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("kind", &self.kind)
            .field("total_at", &self.total_at)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        first_token_at: Option<Instant>,
        total_at: Option<Instant>,
        idle: Option<Duration>,
        idle_from: Option<(Arc<Adaptive>, Arc<ChatBody>)>,
    ) -> Self {
        // The earlier of the two deadlines fires, and names itself.
        let (at, kind) = match (first_token_at, total_at) {
            (Some(f), Some(t)) if t < f => (Some(t), TimeoutKind::Total),
            (Some(f), _) => (Some(f), TimeoutKind::FirstToken),
            (None, Some(t)) => (Some(t), TimeoutKind::Total),
            (None, None) => (None, TimeoutKind::FirstToken),
        };
        ResponseFuture {
            inner,
            sleep: at.map(sleep_until),
            kind,
            total_at,
            idle,
            idle_from,
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatStream, LlmError>>,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            let stream = res?;
            let idle = match this.idle_from.take() {
                Some((a, body)) => a.idle(
                    body.model.as_deref().unwrap_or(""),
                    stream.meta().provider.as_deref(),
                ),
                None => *this.idle,
            };
            if idle.is_none() && this.total_at.is_none() {
                return Poll::Ready(Ok(stream));
            }
            let total_at = *this.total_at;
            return Poll::Ready(Ok(stream.wrap(|s| TimeoutStream::new(s, idle, total_at))));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            let which = match this.kind {
                TimeoutKind::FirstToken => "no first token in time",
                _ => "the call's total time ran out before the first token",
            };
            return Poll::Ready(Err(LlmError::timeout(*this.kind).with_message(which)));
        }
        Poll::Pending
    }
}
