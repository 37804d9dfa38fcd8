use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use llm_layers_core::{ChatStream, LlmError};
use tokio::time::Instant;

use crate::stream::{Labels, RecordingStream};

pin_project_lite::pin_project! {
    /// The response future of [`Latency`](crate::Latency): records the TTFT at the commit
    /// point, or the failure, then wraps the stream. Dropped before either (a hedge lost, a
    /// timeout above cut it, the caller left), it records a censored sample: no first token
    /// after this long.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        // Taken when the call resolves; still here at drop: the attempt was given up.
        labels: Option<Labels>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(labels) = this.labels.take() {
                labels.abandoned(*this.start, Instant::now());
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("resolved", &self.labels.is_none())
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, start: Instant, labels: Labels) -> Self {
        ResponseFuture {
            inner,
            start,
            labels: Some(labels),
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
        let res = {
            let _enter = this.labels.as_ref().map(|l| l.span().enter());
            ready!(this.inner.poll(cx))
        };
        let Some(labels) = this.labels.take() else {
            return Poll::Ready(res);
        };
        Poll::Ready(match res {
            Ok(stream) => {
                let now = Instant::now();
                Ok(RecordingStream::committed(stream, labels, *this.start, now))
            }
            Err(e) => {
                labels.failed(&e, *this.start, Instant::now());
                Err(e)
            }
        })
    }
}
