use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use llm_layers_core::{ChatBody, ChatStream, LlmError, TimeoutKind};
use tokio::time::{Instant, Sleep, sleep_until};

use std::sync::Arc;

use crate::layer::Adaptive;
use crate::stream::{IdleRecheck, TimeoutStream};

/// A cold attempt's first-token limit, read again while it waits: the store it reads, the
/// request's model, the provider aimed at, and how often.
#[derive(Debug)]
pub(crate) struct Recheck {
    pub(crate) adaptive: Arc<Adaptive>,
    pub(crate) body: Arc<ChatBody>,
    pub(crate) aimed: Option<Arc<str>>,
    pub(crate) every: Duration,
}

pin_project_lite::pin_project! {
    /// The response future of [`Timeout`](crate::Timeout): the inner future, raced against
    /// the first-token and total deadlines; on success the stream is wrapped with the idle
    /// and total limits.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        first_token_at: Option<Instant>,
        total_at: Option<Instant>,
        idle: Option<Duration>,
        // The adaptive idle limit is read at the commit point, when the provider is known.
        idle_from: Option<(Arc<Adaptive>, Arc<ChatBody>)>,
        // A first-token limit set while nothing was measured: read again at `next_check`.
        recheck: Option<Recheck>,
        started: Instant,
        next_check: Option<Instant>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("first_token_at", &self.first_token_at)
            .field("total_at", &self.total_at)
            .field("idle", &self.idle)
            .field("next_check", &self.next_check)
            .finish_non_exhaustive()
    }
}

/// The deadline that comes first, and which it is.
fn earliest(
    first_token_at: Option<Instant>,
    total_at: Option<Instant>,
) -> Option<(Instant, TimeoutKind)> {
    match (first_token_at, total_at) {
        (Some(f), Some(t)) if t < f => Some((t, TimeoutKind::Total)),
        (Some(f), _) => Some((f, TimeoutKind::FirstToken)),
        (None, Some(t)) => Some((t, TimeoutKind::Total)),
        (None, None) => None,
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
        ResponseFuture {
            inner,
            sleep: earliest(first_token_at, total_at).map(|(at, _)| sleep_until(at)),
            first_token_at,
            total_at,
            idle,
            idle_from,
            recheck: None,
            started: Instant::now(),
            next_check: None,
        }
    }

    /// Reads the first-token limit again every `recheck.every` from `started` on, until
    /// something is measured.
    pub(crate) fn recheck(mut self, recheck: Option<Recheck>, started: Instant) -> Self {
        self.started = started;
        if let Some(r) = recheck {
            let check = started + r.every;
            if earliest(self.first_token_at, self.total_at).is_none_or(|(at, _)| check < at) {
                self.sleep = Some(sleep_until(check));
                self.next_check = Some(check);
                self.recheck = Some(r);
            }
        }
        self
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
            let (idle, cold) = match this.idle_from.take() {
                Some((a, body)) => {
                    let provider = stream.meta().provider.as_deref();
                    let model = body.model.as_deref().unwrap_or("");
                    match (a.measured_idle(model, provider), a.idle) {
                        (Some(d), _) => (Some(d), None),
                        // Nothing measured yet: the cap, read again as the stream waits.
                        (None, Some(limit)) => (
                            Some(limit.max),
                            Some(IdleRecheck {
                                provider: provider.map(str::to_owned),
                                adaptive: a,
                                body,
                                every: limit.min,
                            }),
                        ),
                        (None, None) => (None, None),
                    }
                }
                None => (*this.idle, None),
            };
            if idle.is_none() && this.total_at.is_none() {
                return Poll::Ready(Ok(stream));
            }
            let total_at = *this.total_at;
            return Poll::Ready(Ok(
                stream.wrap(|s| TimeoutStream::new(s, idle, total_at).recheck_idle(cold))
            ));
        }
        let Some(mut sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        loop {
            ready!(sleep.as_mut().poll(cx));
            let now = Instant::now();
            if let (Some(check), Some(r)) = (*this.next_check, this.recheck.as_ref()) {
                if check <= now {
                    let model = r.body.model.as_deref().unwrap_or("");
                    match r.adaptive.measured_first_token(model, r.aimed.as_deref()) {
                        Some(limit) => {
                            let at = *this.started + limit;
                            *this.first_token_at =
                                Some(this.first_token_at.map_or(at, |f| f.min(at)));
                            *this.next_check = None;
                        }
                        None => *this.next_check = Some(now + r.every),
                    }
                }
            }
            let deadline = earliest(*this.first_token_at, *this.total_at);
            if let Some((_, kind)) = deadline.filter(|(at, _)| *at <= now) {
                let which = match kind {
                    TimeoutKind::FirstToken => "no first token in time",
                    _ => "the call's total time ran out before the first token",
                };
                return Poll::Ready(Err(LlmError::timeout(kind).with_message(which)));
            }
            // Not yet: sleep to the next deadline or check, whichever comes first.
            let next = match (deadline.map(|(at, _)| at), *this.next_check) {
                (Some(a), Some(c)) => a.min(c),
                (Some(a), None) => a,
                (None, Some(c)) => c,
                (None, None) => return Poll::Pending,
            };
            sleep.as_mut().reset(next);
        }
    }
}
