use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError};
use tokio::time::Instant;
use tower_service::Service;

use std::sync::Arc;

use crate::future::{Recheck, ResponseFuture};
use crate::layer::{Adaptive, Timeouts};

/// Enforces first-token, idle and total limits on an inner chat service.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    limits: Timeouts,
    adaptive: Option<Arc<Adaptive>>,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with `limits` (unchecked; prefer the layer's builder).
    pub fn new(inner: S, limits: Timeouts) -> Self {
        Timeout::with_adaptive(inner, limits, None)
    }

    pub(crate) fn with_adaptive(
        inner: S,
        limits: Timeouts,
        adaptive: Option<Arc<Adaptive>>,
    ) -> Self {
        Timeout {
            inner,
            limits,
            adaptive,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<ChatRequest> for Timeout<S>
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
        let over = req.extensions().get::<Timeouts>().copied();
        let mut base = self.limits;
        let mut idle_from = None;
        let mut recheck = None;
        if let Some(a) = &self.adaptive {
            let aimed = req
                .extensions()
                .get::<llm_layers_core::ProviderPlan>()
                .and_then(|p| p.first.clone());
            match a.measured_first_token(req.model(), aimed.as_deref()) {
                Some(d) => base.first_token = Some(d),
                None => {
                    if let Some(limit) = a.first_token {
                        base.first_token = Some(limit.max);
                        // Nothing measured yet (a cold model): the limit is read again
                        // while the attempt waits, so samples that arrive meanwhile cut
                        // it as they would cut an attempt that started after them.
                        recheck = Some(Recheck {
                            adaptive: a.clone(),
                            body: req.shared_body().clone(),
                            aimed,
                            every: limit.min,
                        });
                    }
                }
            }
            if a.idle.is_some() {
                idle_from = Some((a.clone(), req.shared_body().clone()));
            }
        }
        // A per-request override wins over fixed and measured limits alike.
        if over.is_some_and(|o| o.idle.is_some()) {
            idle_from = None;
        }
        let limits = match over {
            Some(o) => base.overridden_by(&o),
            None => base,
        };
        let now = Instant::now();
        if let Some(total) = limits.total {
            req.tighten_deadline(now + total);
        }
        // A caller's deadline (or ours) bounds the whole call.
        let total_at = req.deadline();
        let first_token_at = limits.first_token.map(|d| now + d);
        // A per-request first-token limit is the caller's: not read again.
        if over.is_some_and(|o| o.first_token.is_some()) {
            recheck = None;
        }
        ResponseFuture::new(
            self.inner.call(req),
            first_token_at,
            total_at,
            limits.idle,
            idle_from,
        )
        .recheck(recheck, now)
    }
}
