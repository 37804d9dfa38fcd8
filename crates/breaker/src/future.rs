use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use llm_layers_core::{ChatBody, ChatStream, LlmError, StreamChunk};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::layer::Shared;
use crate::registry::{Blocked, blocked_error};

/// An admitted call: counted in flight until it resolves, holding half-open probe slots
/// until it ends; both given back however it ends.
pub(crate) struct ProbeGuard {
    shared: Arc<Shared>,
    model: Arc<str>,
    probes: Vec<crate::registry::Probe>,
    hold_probes: Vec<Arc<str>>,
    in_flight: bool,
}

impl ProbeGuard {
    pub(crate) fn new(
        shared: Arc<Shared>,
        model: Arc<str>,
        probes: Vec<crate::registry::Probe>,
        hold_probes: Vec<Arc<str>>,
    ) -> Self {
        ProbeGuard {
            shared,
            model,
            probes,
            hold_probes,
            in_flight: true,
        }
    }

    /// The call committed or failed: no longer in flight.
    fn resolved(&mut self) {
        if std::mem::replace(&mut self.in_flight, false) {
            self.shared.registry.resolved(&self.model);
        }
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.resolved();
        self.shared.registry.release(&self.model, &self.probes);
        self.shared
            .registry
            .release_hold_probes(&self.model, &self.hold_probes);
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Rejected { error: Option<LlmError> },
        Called {
            #[pin]
            fut: F,
            // Fires at the slow threshold of a call aimed at one provider (see `aimed_at`).
            #[pin]
            watch: Option<Sleep>,
            // Counted slow while in flight: its end is not counted again.
            counted: bool,
            start: Instant,
            model: Arc<str>,
            sent: Arc<ChatBody>,
            ignored: Vec<(String, Blocked)>,
            shared: Arc<Shared>,
            guard: Option<ProbeGuard>,
        },
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Breaker`](crate::Breaker).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn rejected(e: LlmError) -> Self {
        metrics::counter!("llm_breaker_rejected_total").increment(1);
        ResponseFuture {
            kind: Kind::Rejected { error: Some(e) },
        }
    }

    pub(crate) fn called(
        fut: F,
        start: Instant,
        sent: Arc<ChatBody>,
        ignored: Vec<(String, Blocked)>,
        watch: Option<Instant>,
        shared: Arc<Shared>,
        guard: ProbeGuard,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                fut,
                watch: watch.map(sleep_until),
                counted: false,
                start,
                model: guard.model.clone(),
                sent,
                ignored,
                shared,
                guard: Some(guard),
            },
        }
    }
}

/// The one provider a request is aimed at, when it names one: the first of its `order`, or
/// its only `only`, if its own preferences allow it. Evidence about the attempt (no first
/// token yet) can be laid at that provider's door.
pub(crate) fn aimed_at(body: &ChatBody) -> Option<&str> {
    let prefs = body.provider.as_ref()?;
    let target = match prefs.only.as_deref() {
        Some([one]) => one,
        _ => prefs.order.as_deref()?.first()?,
    };
    prefs.allows(target).then_some(target.as_str())
}

/// What an error before the commit point teaches: a throttle holds its provider (and, when
/// another provider is left, marks the error "retry elsewhere now"); a provider failure
/// is counted; an upstream 404 "no endpoints" that our own ignore list caused becomes the
/// fast error it stands for, never a `not_found` for the caller.
fn on_error(
    shared: &Shared,
    model: &str,
    sent: &ChatBody,
    ignored: &[(String, Blocked)],
    mut e: LlmError,
) -> LlmError {
    let now = Instant::now();
    let class = shared.classify.classify(&e);
    if e.status_code().map(|s| s.as_u16()) == Some(404) && !ignored.is_empty() {
        let code = e.api_error().and_then(|a| a.availability_code.as_deref());
        if !matches!(code, Some("model_not_found" | "model_deprecated")) {
            metrics::counter!("llm_breaker_rejected_total").increment(1);
            return blocked_error(model, ignored, now);
        }
    }
    if class.throttled {
        if let Some(p) = e.provider() {
            let slug = shared.slug(p);
            let until = now + shared.registry.hold_for(e.retry_after());
            let hold = shared.registry.hold(sent, &slug, until, now);
            let reason = if e.api_error().and_then(|a| a.availability_code.as_deref())
                == Some("capacity_exhausted")
            {
                "capacity"
            } else {
                "throttled"
            };
            metrics::counter!("llm_provider_holds_total", "reason" => reason).increment(1);
            if hold.elsewhere {
                // Another provider is free: no reason to wait this one's Retry-After.
                e = e.with_retry_elsewhere();
            } else if !hold.worth_waiting {
                // Nothing else is free, and this provider throttles whatever it is sent:
                // waiting its Retry-After would only cost the caller its time.
                e = e.with_no_retry();
            }
        }
    }
    if class.provider_failure {
        let slug = e.provider().map(|p| shared.slug(p));
        // A first token that never came, from a provider we cannot name, says that some
        // provider hung, not that the model is down: hung calls time out together, and
        // counting them against the whole model would fail every call fast while its other
        // providers answer. (The latency store takes them as timeouts.)
        let unnamed_hang = slug.is_none()
            && e.kind()
                == llm_layers_core::ErrorKind::Timeout(llm_layers_core::TimeoutKind::FirstToken);
        // Connecting (DNS, TCP, TLS) failed before any provider was asked: that is this
        // process's egress, not the model. It never opens a model (through a shared store it
        // would fail the model fast on every replica); the leaf says "this replica is sick".
        let our_side = slug.is_none() && e.is_connect();
        if !unnamed_hang && !our_side {
            shared.registry.record(model, slug.as_deref(), true, now);
        }
    }
    e
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatStream, LlmError>>,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| LlmError::circuit_open(Vec::new(), None)))),
            KindProj::Called {
                fut,
                mut watch,
                counted,
                start,
                model,
                sent,
                ignored,
                shared,
                guard,
            } => {
                let res = match fut.poll(cx) {
                    Poll::Ready(res) => res,
                    Poll::Pending => {
                        if let Some(w) = watch.as_mut().as_pin_mut() {
                            if w.poll(cx).is_ready() {
                                watch.set(None);
                                if let Some(t) = aimed_at(sent) {
                                    *counted = true;
                                    metrics::counter!("llm_breaker_slow_in_flight_total")
                                        .increment(1);
                                    shared.registry.record(model, Some(t), true, Instant::now());
                                }
                            }
                        }
                        return Poll::Pending;
                    }
                };
                if let Some(g) = guard.as_mut() {
                    g.resolved();
                }
                match res {
                    Err(e) if *counted => {
                        // Already counted against its provider when it went slow.
                        drop(guard.take());
                        Poll::Ready(Err(e))
                    }
                    Err(e) => {
                        drop(guard.take());
                        Poll::Ready(Err(on_error(shared, model, sent, ignored, e)))
                    }
                    Ok(stream) => {
                        // The first token is the provider's proof of life (or, when too late,
                        // a slow-call failure): record it now, not at the end of the stream,
                        // so slow successes are not outrun by fast failures.
                        let now = Instant::now();
                        let ttft = now.saturating_duration_since(*start);
                        let slow = shared.is_slow(model, ttft);
                        let provider = stream.meta().provider.as_deref().map(|p| shared.slug(p));
                        if !*counted {
                            shared
                                .registry
                                .record(model, provider.as_deref(), slow, now);
                        }
                        let watch = Watch {
                            shared: shared.clone(),
                            model: model.clone(),
                            provider,
                            guard: guard.take(),
                            done: false,
                        };
                        Poll::Ready(Ok(stream.wrap(|s| BreakerStream { inner: s, watch })))
                    }
                }
            }
        }
    }
}

struct Watch {
    shared: Arc<Shared>,
    model: Arc<str>,
    provider: Option<String>,
    guard: Option<ProbeGuard>,
    done: bool,
}

/// A committed stream whose mid-stream failure is recorded (its commit already was). No lock
/// is taken per chunk.
struct BreakerStream {
    inner: ChatStream,
    watch: Watch,
}

impl Stream for BreakerStream {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        let Poll::Ready(item) = &polled else {
            return polled;
        };
        let w = &mut self.watch;
        if !w.done {
            match item {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    w.done = true;
                    if w.shared.classify.classify(e).provider_failure {
                        let p = e
                            .provider()
                            .map(|p| w.shared.slug(p))
                            .or(w.provider.clone());
                        w.shared
                            .registry
                            .record(&w.model, p.as_deref(), true, Instant::now());
                    }
                    w.guard.take();
                }
                None => {
                    w.done = true;
                    w.guard.take();
                }
            }
        }
        polled
    }
}
