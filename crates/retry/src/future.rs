use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use llm_layers_core::{ChatRequest, ChatStream, LlmError, StreamChunk};
use rand::rngs::SmallRng;
use tokio::time::{Instant, Sleep, sleep};
use tower_service::Service;

use crate::layer::Shared;

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] fut: F },
        Draining { stream: ChatStream, chunks: Vec<StreamChunk> },
        Waiting { #[pin] sleep: Sleep },
        Readying,
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Retry`](crate::Retry).
    pub struct ResponseFuture<S>
    where
        S: Service<ChatRequest>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        request: ChatRequest,
        shared: Arc<Shared>,
        rng: SmallRng,
        attempt: u32,
        previous: Duration,
        whole: bool,
    }
}

impl<S: Service<ChatRequest>> std::fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
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
        rng: SmallRng,
        whole: bool,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { fut: first },
            service,
            request,
            shared,
            rng,
            attempt: 1,
            previous: Duration::ZERO,
            whole,
        }
    }
}

/// What to do after a failed attempt: wait this long and retry, or give up.
fn plan_retry(
    shared: &Shared,
    request: &mut ChatRequest,
    error: &LlmError,
    attempt: u32,
    previous: Duration,
    rng: &mut SmallRng,
) -> Option<Duration> {
    if !shared.policy.retry(request, error, attempt) {
        return None;
    }
    let wait = match error.retry_after() {
        // The throttle concerned one provider and another is free: go now.
        _ if error.retry_elsewhere() => Duration::ZERO,
        // Never earlier than the upstream asked; longer than we accept: give up.
        Some(after) if after > shared.max_retry_after => {
            metrics::counter!("llm_retry_gave_up_total", "reason" => "retry_after_too_long")
                .increment(1);
            return None;
        }
        Some(after) => after,
        None => shared.backoff.delay(attempt, previous, rng),
    };
    if let Some(deadline) = request.deadline() {
        if Instant::now() + wait >= deadline {
            metrics::counter!("llm_retry_gave_up_total", "reason" => "deadline").increment(1);
            return None;
        }
    }
    if shared.policy.charges_budget(error) && !shared.budget.withdraw() {
        metrics::counter!("llm_retry_budget_exhausted_total").increment(1);
        return None;
    }
    // Waiting out a throttle is drawn from the model's own allowance: a share of its recent
    // successes, and a small floor. A model whose providers all throttle (a dead one) gets
    // its 429 at once, rather than every caller waiting and sending again.
    if !wait.is_zero()
        && !shared.policy.charges_budget(error)
        && !shared.waits.withdraw(request.model())
    {
        metrics::counter!("llm_retry_gave_up_total", "reason" => "throttle_budget").increment(1);
        return None;
    }
    metrics::counter!("llm_retries_total", "reason" => error.kind().as_str()).increment(1);
    // A span event on the call: what failed, and how long the retry waits.
    tracing::debug!(
        reason = error.kind().as_str(),
        status = error.status_code().map(|s| s.as_u16()),
        provider = error.provider().filter(|p| p.len() <= 64),
        wait_ms = wait.as_millis() as u64,
        attempt = attempt + 1,
        "retry"
    );
    request
        .extensions_mut()
        .insert(llm_layers_core::AttemptKind::Retry);
    Some(wait)
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let error = match this.state.as_mut().project() {
                StateProj::Calling { fut } => match ready!(fut.poll(cx)) {
                    Ok(mut stream) => {
                        this.shared.waits.deposit(this.request.model());
                        let meta = stream.meta_mut();
                        meta.attempts = meta.attempts.max(1) + (*this.attempt - 1);
                        meta.attempt = *this.attempt;
                        if !*this.whole {
                            return Poll::Ready(Ok(stream));
                        }
                        this.state.set(State::Draining {
                            stream,
                            chunks: Vec::new(),
                        });
                        continue;
                    }
                    Err(e) => e,
                },
                StateProj::Draining { stream, chunks } => {
                    match ready!(Pin::new(&mut *stream).poll_next(cx)) {
                        Some(Ok(c)) => {
                            chunks.push(c);
                            continue;
                        }
                        // `[DONE]` after an answer no choice finished is a cut answer.
                        None if !chunks.iter().any(StreamChunk::has_finish) => {
                            LlmError::truncated()
                                .with_message("the answer ended without a finish_reason")
                                .with_provider_opt(stream.meta().provider.clone())
                        }
                        None => {
                            let meta = stream.meta().clone();
                            let mut done = ChatStream::from_chunks(std::mem::take(chunks));
                            *done.meta_mut() = meta;
                            return Poll::Ready(Ok(done));
                        }
                        // Nothing reached the caller yet: a mid-stream failure of a
                        // whole-answer call is retried like one before the first token.
                        Some(Err(e)) => e,
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                    continue;
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx))?;
                    let fut = this.service.call(this.request.clone());
                    this.state.set(State::Calling { fut });
                    continue;
                }
            };
            let Some(wait) = plan_retry(
                this.shared,
                this.request,
                &error,
                *this.attempt,
                *this.previous,
                this.rng,
            ) else {
                return Poll::Ready(Err(error));
            };
            *this.attempt += 1;
            *this.previous = wait;
            this.state.set(State::Waiting { sleep: sleep(wait) });
        }
    }
}
