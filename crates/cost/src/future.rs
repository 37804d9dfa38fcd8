use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use llm_layers_core::price::Cost;
use llm_layers_core::{ChatStream, GivenUp, LlmError, StreamChunk};

use crate::layer::PriceFn;
use crate::report::CostReport;

pin_project_lite::pin_project! {
    /// The response future of [`Costed`](crate::Costed): puts a [`CostReport`] in the
    /// stream's metadata and fills it when the usage chunk passes.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        prices: Option<PriceFn>,
        given_up: GivenUp,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, prices: PriceFn, given_up: GivenUp) -> Self {
        ResponseFuture {
            inner,
            prices: Some(prices),
            given_up,
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
        let mut stream = ready!(this.inner.poll(cx))?;
        let Some(prices) = this.prices.take() else {
            return Poll::Ready(Ok(stream));
        };
        let report = CostReport::default();
        let meta = stream.meta_mut();
        meta.extensions.insert(report.clone());
        // Asked of the usage chunk first; the stream's head when it does not say.
        let (model, provider) = (meta.model.clone(), meta.provider.clone());
        let given_up = this.given_up.clone();
        Poll::Ready(Ok(stream.wrap(move |inner| Watch {
            inner,
            prices,
            report,
            given_up,
            model,
            provider,
        })))
    }
}

/// Passes every chunk on; prices the usage chunk.
struct Watch {
    inner: ChatStream,
    prices: PriceFn,
    report: CostReport,
    given_up: GivenUp,
    model: String,
    provider: Option<String>,
}

impl Watch {
    fn price(&self, c: &StreamChunk) {
        let Some(u) = c.usage() else { return };
        let model = if c.model().is_empty() {
            self.model.as_str()
        } else {
            c.model()
        };
        let provider = c.provider().or(self.provider.as_deref());
        let served = (self.prices)(model, provider).or_else(|| (self.prices)(model, None));
        let cost = Cost::of(u, served.as_ref());
        let n = self.given_up.count();
        let given_up_usd =
            (self.prices)(model, None).map(|p| f64::from(n) * p.of_tokens(u.prompt_tokens, 0));
        self.report.set(cost, n, given_up_usd);
    }
}

impl Stream for Watch {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(Pin::new(&mut self.inner).poll_next(cx));
        if let Some(Ok(c)) = &item {
            self.price(c);
        }
        Poll::Ready(item)
    }
}
