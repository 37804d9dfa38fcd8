use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use llm_layers_core::{ChatStream, LlmError};
use tokio::time::Instant;

use crate::layer::Shared;
use crate::store::Outcome;
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
        model: Option<Arc<str>>,
        key: Arc<str>,
        bucket: &'static str,
        whole: bool,
        shared: Arc<Shared>,
        span: tracing::Span,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.model.take().is_some() {
                let waited = Instant::now().saturating_duration_since(*this.start);
                metrics::counter!(
                    crate::names::ABANDONED,
                    "llm.scope" => this.shared.scope.as_str()
                )
                .increment(1);
                if let Some(store) = &this.shared.store {
                    store.record((&**this.key, None), Some(waited), None, Outcome::Censored);
                }
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        start: Instant,
        model: Arc<str>,
        key: Arc<str>,
        bucket: &'static str,
        whole: bool,
        shared: Arc<Shared>,
        span: tracing::Span,
    ) -> Self {
        ResponseFuture {
            inner,
            start,
            model: Some(model),
            key,
            bucket,
            whole,
            shared,
            span,
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
        let _enter = this.span.enter();
        let res = ready!(this.inner.poll(cx));
        let model = this.model.take().unwrap_or_else(|| Arc::from(""));
        let labels = Labels::new(
            model,
            this.key.clone(),
            this.bucket,
            *this.whole,
            this.shared.clone(),
            this.span.clone(),
        );
        Poll::Ready(match res {
            Ok(stream) => {
                let now = Instant::now();
                let rec = RecordingStream::committed(stream, labels, *this.start, now);
                Ok(rec)
            }
            Err(e) => {
                labels.failed(&e, *this.start, Instant::now());
                Err(e)
            }
        })
    }
}
