use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, GivenUp, LlmError};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::PriceFn;

/// Says what each call cost: a [`CostReport`](crate::CostReport) in its stream's
/// metadata. See the [crate docs](crate).
#[derive(Clone)]
pub struct Costed<S> {
    inner: S,
    prices: PriceFn,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Costed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Costed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Costed<S> {
    pub(crate) fn new(inner: S, prices: PriceFn) -> Self {
        Costed { inner, prices }
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

impl<S> Service<ChatRequest> for Costed<S>
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
        // Every attempt below counts into the call's one count (requests are cloned per
        // attempt; the count is shared).
        let given_up = match req.extensions().get::<GivenUp>() {
            Some(g) => g.clone(),
            None => {
                let g = GivenUp::default();
                req.extensions_mut().insert(g.clone());
                g
            }
        };
        ResponseFuture::new(self.inner.call(req), self.prices.clone(), given_up)
    }
}
