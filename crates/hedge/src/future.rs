use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use llm_layers_core::{ChatRequest, ChatStream, ErrorKind, LlmError};
use tokio::time::{Instant, Sleep, sleep};
use tower_service::Service;

use crate::layer::Shared;

type Attempt<F> = (u32, Pin<Box<F>>);

/// How often a call waiting on the cold delay looks at the store again.
const COLD_RECHECK: Duration = Duration::from_millis(100);

pin_project_lite::pin_project! {
    /// The response future of [`Hedge`](crate::Hedge): races the attempts to the first
    /// token; the first to commit wins and the others are dropped (cancelled upstream).
    pub struct ResponseFuture<S>
    where
        S: Service<ChatRequest>,
    {
        // The original, in place (a call that never hedges boxes nothing); the hedges.
        #[pin]
        first: Option<S::Future>,
        hedges: Vec<Attempt<S::Future>>,
        #[pin]
        sleep: Sleep,
        service: S,
        request: ChatRequest,
        shared: Arc<Shared>,
        delay: Duration,
        start: Instant,
        // The delay is the cold guess: look at the store again every `COLD_RECHECK`.
        cold: bool,
        started: u32,
        hedging: bool,
        pending_hedge: Option<ChatRequest>,
        error: Option<LlmError>,
    }
}

impl<S: Service<ChatRequest>> std::fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("started", &self.started)
            .field(
                "running",
                &(usize::from(self.first.is_some()) + self.hedges.len()),
            )
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    pub(crate) fn new(
        first: S::Future,
        service: S,
        request: ChatRequest,
        shared: Arc<Shared>,
        delay: Duration,
        cold: bool,
    ) -> Self {
        let first_wake = if cold { delay.min(COLD_RECHECK) } else { delay };
        ResponseFuture {
            first: Some(first),
            hedges: Vec::new(),
            sleep: sleep(first_wake),
            service,
            request,
            shared,
            delay,
            start: Instant::now(),
            cold,
            started: 1,
            hedging: true,
            pending_hedge: None,
            error: None,
        }
    }
}

/// Whether an attempt is still racing: the original, or a hedge.
fn running<F>(first: bool, hedges: &[Attempt<F>]) -> bool {
    first || !hedges.is_empty()
}

/// How much an error says: an upstream answer beats a transport failure beats a timeout
/// beats a cancellation.
fn weight(e: &LlmError) -> u8 {
    match e.kind() {
        ErrorKind::Status | ErrorKind::Upstream => 4,
        ErrorKind::Cancelled => 0,
        ErrorKind::Timeout(_) => 1,
        ErrorKind::CircuitOpen | ErrorKind::RateLimited | ErrorKind::BadRequest => 3,
        _ => 2,
    }
}

fn keep_best(slot: &mut Option<LlmError>, e: LlmError) {
    match slot {
        Some(best) if weight(best) > weight(&e) => {}
        _ => *slot = Some(e),
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            // The race: the first attempt to commit wins.
            let mut i = 0;
            while i <= this.hedges.len() {
                // Attempt 0 is the original (while it runs), then the hedges.
                let polled = if i == 0 {
                    match this.first.as_mut().as_pin_mut() {
                        Some(f) => f.poll(cx).map(|r| (0, r)),
                        None => Poll::Pending,
                    }
                } else {
                    let (n, f) = &mut this.hedges[i - 1];
                    f.as_mut().poll(cx).map(|r| (*n, r))
                };
                match polled {
                    Poll::Pending => i += 1,
                    Poll::Ready((winner, Ok(mut stream))) => {
                        if *this.started > 1 {
                            // A span event on the call: why the other attempts end now.
                            let losers = usize::from(this.first.is_some()) + this.hedges.len() - 1;
                            tracing::debug!(
                                winner = winner + 1,
                                cancelled = losers as u64,
                                "hedge: first token won"
                            );
                        }
                        let started = *this.started;
                        if started > 1 {
                            metrics::counter!("llm_hedge_wasted_total")
                                .increment(u64::from(started - 1));
                            if winner > 0 {
                                metrics::counter!("llm_hedge_won_total").increment(1);
                            }
                        }
                        let losers = u32::from(this.first.is_some())
                            + u32::try_from(this.hedges.len()).unwrap_or(u32::MAX)
                            - 1;
                        // Dropping the losers cancels them upstream, now.
                        this.first.set(None);
                        this.hedges.clear();
                        let meta = stream.meta_mut();
                        if started > 1 {
                            meta.extensions.insert(crate::HedgeWinner(winner));
                        }
                        if losers > 0 {
                            meta.extensions.insert(crate::HedgeCancelled(losers));
                        }
                        meta.attempts = meta.attempts.max(1) + (started - 1);
                        return Poll::Ready(Ok(stream));
                    }
                    Poll::Ready((_, Err(e))) => {
                        keep_best(this.error, e);
                        if i == 0 {
                            this.first.set(None);
                            i = 1;
                        } else {
                            drop(this.hedges.swap_remove(i - 1));
                        }
                        // A hedge that failed while an attempt is still waiting is replaced
                        // at once (within `max_attempts`): a failed hedge must not leave the
                        // call to wait out a hung original.
                        if *this.started > 1
                            && running(this.first.is_some(), this.hedges)
                            && *this.started < this.shared.max_attempts
                            && this.pending_hedge.is_none()
                        {
                            *this.hedging = true;
                            *this.cold = false;
                            this.sleep.as_mut().reset(Instant::now());
                        }
                    }
                }
            }
            let mut fired = false;
            if *this.hedging
                && this.pending_hedge.is_none()
                && this.sleep.as_mut().poll(cx).is_ready()
            {
                if *this.cold {
                    // Still on the cold guess: has the store learned the model meanwhile?
                    let now = Instant::now();
                    let (delay, cold) = this.shared.delay.lookup(this.request);
                    *this.cold = cold;
                    if !cold {
                        *this.delay = delay;
                    }
                    let at = *this.start + *this.delay;
                    if at > now {
                        let next = if cold { at.min(now + COLD_RECHECK) } else { at };
                        this.sleep.as_mut().reset(next);
                        continue;
                    }
                }
                *this.hedging = false;
                let past_deadline = this.request.deadline().is_some_and(|d| Instant::now() >= d);
                if running(this.first.is_some(), this.hedges)
                    && *this.started < this.shared.max_attempts
                    && !past_deadline
                {
                    if let Some(req) = this.shared.policy.hedge(this.request, *this.started) {
                        // The budget is drawn when the hedge is sent, not here: a race won
                        // while the service gets ready costs nothing.
                        *this.pending_hedge = Some(req);
                    }
                }
            }
            if this.pending_hedge.is_some() {
                // Made ready only now, right before the call (never long before it).
                match this.service.poll_ready(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Err(e)) => {
                        keep_best(this.error, e);
                        *this.pending_hedge = None;
                    }
                    Poll::Ready(Ok(())) => {
                        let req = this
                            .pending_hedge
                            .take()
                            .unwrap_or_else(|| this.request.clone());
                        if !this.shared.budget.withdraw() {
                            metrics::counter!("llm_hedge_budget_exhausted_total").increment(1);
                            continue;
                        }
                        let mut req = req;
                        req.extensions_mut()
                            .insert(llm_layers_core::AttemptKind::Hedge);
                        tracing::debug!(attempt = *this.started + 1, "hedge");
                        let fut = this.service.call(req);
                        this.hedges.push((*this.started, Box::pin(fut)));
                        *this.started += 1;
                        metrics::counter!("llm_hedge_sent_total").increment(1);
                        if *this.started < this.shared.max_attempts {
                            *this.hedging = true;
                            this.sleep.as_mut().reset(Instant::now() + *this.delay);
                        }
                        fired = true;
                    }
                }
            }
            if fired {
                continue;
            }
            if !running(this.first.is_some(), this.hedges) && this.pending_hedge.is_none() {
                // Every attempt failed before committing: the most informative error.
                let e = this.error.take().unwrap_or_else(|| {
                    LlmError::new(ErrorKind::Cancelled).with_message("no attempt left")
                });
                return Poll::Ready(Err(e));
            }
            return Poll::Pending;
        }
    }
}
