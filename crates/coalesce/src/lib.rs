//! Request coalescing for an llm-layers stack: identical concurrent calls that are
//! deterministic (`temperature: 0`, or marked with the [`Coalesce`] extension) share **one**
//! upstream call. The first caller's call goes upstream; a caller with the same body while
//! it runs joins it: it gets the first token when the first caller does (or at once, if it
//! has come), and a late joiner is replayed the prefix, so every caller sees the whole
//! answer. Each caller may leave at any time without cutting the others; the upstream call
//! is cancelled when the last one leaves. Off unless a stack adds the layer; metric
//! `llm_coalesced_calls_total` counts the upstream calls saved.
//!
//! Two bodies are identical when they serialize to the same bytes (model, messages,
//! parameters, provider preferences: everything sent). Chunks are kept for the length of
//! the call (what a late joiner needs), then dropped.
//!
//! # Ordering
//!
//! Outside retry and hedge (a shared call is retried and hedged once for all) and outside
//! a router that draws a provider order per call (identical calls are compared as their
//! callers sent them), so outside the rate limiter too: a joiner costs no upstream call.
//! Inside the per-call latency layer.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_coalesce::CoalesceLayer;
//! use llm_layers_core::{ChatRequest, Message};
//! use llm_layers_mock::{MockChat, Script};
//! use tower::{Layer, ServiceExt};
//!
//! let mock = MockChat::with_default(Script::tokens(Duration::from_millis(100), 3, Duration::from_millis(10)));
//! let svc = CoalesceLayer::new().layer(mock.clone());
//! let req = || {
//!     let mut r = ChatRequest::new("m", vec![Message::user("same")]);
//!     r.body_mut().temperature = Some(0.0);
//!     r
//! };
//! let (a, b) = tokio::join!(svc.clone().oneshot(req()), svc.clone().oneshot(req()));
//! let (a, b) = (a?.collect().await?, b?.collect().await?);
//! assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
//! assert_eq!(mock.calls(), 1, "one upstream call for both");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use llm_layers_core::sync::lock;
use llm_layers_core::{ChatChunk, ChatRequest, ChatStream, LlmError, ResponseMeta};
use tokio::sync::Notify;
use tower_layer::Layer;
use tower_service::Service;

/// A request extension: coalesce this call with identical ones even though it is not
/// `temperature: 0` (the caller says its answers may be shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce;

/// Applies [`CoalesceService`]. Every service built from one layer (and its clones)
/// shares the calls in flight.
#[derive(Debug, Clone, Default)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct CoalesceLayer {
    flights: Arc<Flights>,
}

type Flights = Mutex<HashMap<Bytes, Arc<Flight>>>;

impl CoalesceLayer {
    /// A layer coalescing `temperature: 0` calls and calls marked [`Coalesce`].
    pub fn new() -> Self {
        CoalesceLayer::default()
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = CoalesceService<S>;

    fn layer(&self, inner: S) -> CoalesceService<S> {
        CoalesceService {
            inner,
            flights: self.flights.clone(),
        }
    }
}

/// Shares one upstream call between identical concurrent deterministic calls. See the
/// [crate docs](crate).
#[derive(Debug, Clone)]
pub struct CoalesceService<S> {
    inner: S,
    flights: Arc<Flights>,
}

impl<S> CoalesceService<S> {
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

#[derive(Default)]
struct State {
    meta: Option<ResponseMeta>,
    chunks: Vec<ChatChunk>,
    /// How it ended: `Some(Ok)` cleanly, `Some(Err)` with an error (before or after the
    /// first token).
    end: Option<Result<(), LlmError>>,
    wakers: Vec<Waker>,
}

/// One upstream call and the callers sharing it.
#[derive(Default)]
struct Flight {
    state: Mutex<State>,
    callers: AtomicUsize,
    /// Told when the last caller leaves.
    abandoned: Notify,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("callers", &self.callers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Flight {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let wakers = {
            let mut st = lock(&self.state);
            f(&mut st);
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// A caller's share of a flight: leaving (dropping it) may end the flight.
struct Ticket(Arc<Flight>);

impl Ticket {
    fn join(f: &Arc<Flight>) -> Ticket {
        f.callers.fetch_add(1, Ordering::AcqRel);
        Ticket(f.clone())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.callers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.abandoned.notify_one();
        }
    }
}

fn eligible(req: &ChatRequest) -> bool {
    req.extensions().get::<Coalesce>().is_some() || req.body().temperature == Some(0.0)
}

/// The response future: the inner call's, or a wait for a shared call's first token.
pub type ResponseFuture<F> = futures_util::future::Either<F, Waiting>;

impl<S> Service<ChatRequest> for CoalesceService<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        use futures_util::future::Either;
        if !eligible(&req) {
            return Either::Left(self.inner.call(req));
        }
        let Ok(key) = req.body().to_json_with(None, None) else {
            return Either::Left(self.inner.call(req));
        };
        let key = Bytes::from(key);
        let (flight, ticket, lead) = {
            let mut flights = lock(&self.flights);
            // A flight given up by all its callers is not joined (its end is an error).
            let open = |f: &Arc<Flight>| !matches!(lock(&f.state).end, Some(Err(_)));
            match flights.get(&key).filter(|f| open(f)) {
                Some(f) => (f.clone(), Ticket::join(f), false),
                None => {
                    let f = Arc::new(Flight::default());
                    let t = Ticket::join(&f);
                    flights.insert(key.clone(), f.clone());
                    (f, t, true)
                }
            }
        };
        if lead {
            // The ready service serves this call from its own task; a clone stays.
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            let fut = ready.call(req);
            tokio::spawn(drive(fut, flight, self.flights.clone(), key));
        } else {
            metrics::counter!("llm_coalesced_calls_total").increment(1);
        }
        Either::Right(Waiting {
            ticket: Some(ticket),
        })
    }
}

/// Runs the shared call: records its chunks for the callers, stops when the last leaves.
async fn drive<F>(fut: F, flight: Arc<Flight>, flights: Arc<Flights>, key: Bytes)
where
    F: Future<Output = Result<ChatStream, LlmError>>,
{
    let abandoned = flight.abandoned.notified();
    tokio::pin!(abandoned);
    let gone = || {
        LlmError::new(llm_layers_core::ErrorKind::Cancelled)
            .with_message("every caller of this coalesced call left")
    };
    tokio::select! {
        _ = &mut abandoned => flight.update(|st| st.end = Some(Err(gone()))),
        r = fut => match r {
            Err(e) => flight.update(|st| st.end = Some(Err(e))),
            Ok(mut stream) => {
                let meta = stream.meta().clone();
                flight.update(|st| st.meta = Some(meta));
                loop {
                    tokio::select! {
                        _ = &mut abandoned => {
                            flight.update(|st| st.end = Some(Err(gone())));
                            break;
                        }
                        c = stream.next() => match c {
                            Some(Ok(c)) => flight.update(|st| st.chunks.push(c)),
                            Some(Err(e)) => {
                                flight.update(|st| st.end = Some(Err(e)));
                                break;
                            }
                            None => {
                                flight.update(|st| st.end = Some(Ok(())));
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    // New callers start a call of their own from now on.
    let mut map = lock(&flights);
    if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
        map.remove(&key);
    }
}

/// Waits for a shared call's first token (or its error).
pub struct Waiting {
    ticket: Option<Ticket>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting").finish_non_exhaustive()
    }
}

impl Future for Waiting {
    type Output = Result<ChatStream, LlmError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(ticket) = self.ticket.as_ref() else {
            return Poll::Ready(Err(LlmError::new(llm_layers_core::ErrorKind::Internal)
                .with_message("a coalesced call was polled after it resolved")));
        };
        let flight = ticket.0.clone();
        let mut st = lock(&flight.state);
        if let Some(Err(e)) = st.end.as_ref().filter(|_| st.chunks.is_empty()) {
            return Poll::Ready(Err(e.clone()));
        }
        match &st.meta {
            Some(meta) => {
                let meta = meta.clone();
                drop(st);
                let ticket = self.ticket.take();
                Poll::Ready(Ok(ChatStream::from_parts(
                    Default::default(),
                    Follow {
                        ticket,
                        next: 0,
                        done: false,
                    },
                    meta,
                )))
            }
            None => {
                st.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A caller's view of a shared call: every chunk from the first, then its end.
struct Follow {
    ticket: Option<Ticket>,
    next: usize,
    done: bool,
}

impl Stream for Follow {
    type Item = Result<ChatChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some(flight) = self.ticket.as_ref().map(|t| t.0.clone()) else {
            return Poll::Ready(None);
        };
        let mut st = lock(&flight.state);
        if let Some(c) = st.chunks.get(self.next) {
            let c = c.clone();
            drop(st);
            self.next += 1;
            return Poll::Ready(Some(Ok(c)));
        }
        match &st.end {
            Some(end) => {
                let end = end.clone();
                drop(st);
                self.done = true;
                self.ticket = None;
                Poll::Ready(end.err().map(Err))
            }
            None => {
                st.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
