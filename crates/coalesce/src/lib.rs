//! Request coalescing for an llm-layers stack: identical concurrent calls that are
//! deterministic (`temperature: 0`, or marked with the [`Coalesce`] extension) share **one**
//! upstream call. The first caller's call goes upstream; a caller with the same body while
//! it runs joins it: it gets the first token when the first caller does (or at once, if it
//! has come), and a late joiner is replayed the prefix, so every caller sees the whole
//! answer. Each caller may leave at any time without cutting the others; the upstream call
//! is cancelled when the last one leaves. Off unless a stack adds the layer; metric
//! `llm_coalesced_calls_total` counts the upstream calls saved.
//!
//! Two calls are identical when their bodies serialize to the same bytes (model, messages,
//! parameters, provider preferences: everything sent) **and** they are in the same
//! partition: by default the same [`Tenant`] and [`Priority`], so tenants never share a
//! call, a bill or a limit ([`CoalesceLayer::partition_by`] adds what else must match, the
//! gateway its resume choice). Joining and leaving are atomic: a flight whose callers have
//! all left takes no joiner. A late joiner is replayed what it missed, from a buffer bounded
//! by [`CoalesceLayer::replay_limit`] (64 KiB by default): past it, the flight takes no more
//! joiners and lets go of each chunk once every caller has read it. A shared call that ends
//! abnormally (its task panicked or was cancelled) ends every caller's stream with an error
//! and is forgotten, so a later identical call starts afresh.
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

mod flight;
use flight::{Flight, Ticket, park};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use llm_layers_core::sync::lock;
use llm_layers_core::{
    ChatRequest, ChatStream, ErrorKind, LlmError, Priority, StreamChunk, Tenant,
};
use tower_layer::Layer;
use tower_service::Service;

/// A request extension: coalesce this call with identical ones even though it is not
/// `temperature: 0` (the caller says its answers may be shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce;

type Partition = dyn Fn(&ChatRequest) -> String + Send + Sync;

/// Applies [`CoalesceService`]. Every service built from one layer (and its clones)
/// shares the calls in flight.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct CoalesceLayer {
    shared: Arc<Shared>,
}

struct Shared {
    flights: Mutex<HashMap<Bytes, Arc<Flight>>>,
    partition: Option<Box<Partition>>,
    replay_limit: usize,
}

impl Shared {
    /// What two calls must share besides their body: the tenant, the priority, and the
    /// layer's own partition.
    fn partition(&self, req: &ChatRequest) -> String {
        let tenant = req.extensions().get::<Tenant>().map_or("", |t| &t.0);
        let priority = req.extensions().get::<Priority>().map_or(1, |p| p.0);
        let extra = self.partition.as_ref().map(|f| f(req)).unwrap_or_default();
        format!("{tenant}\u{1f}{priority}\u{1f}{extra}")
    }
}

impl std::fmt::Debug for CoalesceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("in_flight", &lock(&self.shared.flights).len())
            .field("replay_limit", &self.shared.replay_limit)
            .finish_non_exhaustive()
    }
}

impl Default for CoalesceLayer {
    fn default() -> Self {
        CoalesceLayer::new()
    }
}

impl CoalesceLayer {
    /// A layer coalescing `temperature: 0` calls and calls marked [`Coalesce`], of the same
    /// tenant and priority, with a replay buffer of 64 KiB.
    pub fn new() -> Self {
        CoalesceLayer {
            shared: Arc::new(Shared {
                flights: Mutex::new(HashMap::new()),
                partition: None,
                replay_limit: 64 * 1024,
            }),
        }
    }

    /// Changes the configuration; a layer already cloned starts a table of flights of its
    /// own (configure it before use).
    fn configure(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|s| Shared {
            flights: Mutex::new(HashMap::new()),
            partition: None,
            replay_limit: s.replay_limit,
        });
        f(&mut shared);
        CoalesceLayer {
            shared: Arc::new(shared),
        }
    }

    /// What else two calls must have in common to share one upstream call, on top of the
    /// tenant and priority (say, a per-request option a layer below reads). Calls for which
    /// `f` differs never share.
    ///
    /// ```
    /// use llm_layers_coalesce::CoalesceLayer;
    /// let layer = CoalesceLayer::new().partition_by(|r| format!("{:?}", r.extensions().get::<u32>()));
    /// # let _ = layer;
    /// ```
    pub fn partition_by(self, f: impl Fn(&ChatRequest) -> String + Send + Sync + 'static) -> Self {
        self.configure(|s| s.partition = Some(Box::new(f)))
    }

    /// The most bytes of chunks a flight keeps for callers that join late (default
    /// 64 KiB): past it, the flight takes no more joiners and lets go of each chunk once
    /// every caller has read it.
    pub fn replay_limit(self, bytes: usize) -> Self {
        self.configure(|s| s.replay_limit = bytes)
    }

    /// Flights in progress (shared calls not ended yet).
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.flights).len()
    }

    /// About how many bytes of chunks the flights in progress keep for their callers.
    pub fn held_bytes(&self) -> usize {
        let flights: Vec<Arc<Flight>> = lock(&self.shared.flights).values().cloned().collect();
        flights.iter().map(|f| lock(&f.state).bytes).sum()
    }
}

impl<S> Layer<S> for CoalesceLayer {
    type Service = CoalesceService<S>;

    fn layer(&self, inner: S) -> CoalesceService<S> {
        CoalesceService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Shares one upstream call between identical concurrent deterministic calls. See the
/// [crate docs](crate).
#[derive(Clone)]
pub struct CoalesceService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for CoalesceService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalesceService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
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
        let Ok(body) = req.body().to_json_with(None, None) else {
            return Either::Left(self.inner.call(req));
        };
        let mut key = self.shared.partition(&req).into_bytes();
        key.push(0);
        key.extend_from_slice(&body);
        let key = Bytes::from(key);
        let (ticket, lead) = {
            let mut flights = lock(&self.shared.flights);
            match flights.get(&key).and_then(Flight::join) {
                Some(t) => (t, None),
                None => {
                    let f = Arc::new(Flight::new(self.shared.replay_limit));
                    let t = f.join().expect("a new flight takes its first caller");
                    flights.insert(key.clone(), f.clone());
                    (t, Some(f))
                }
            }
        };
        let joined = lead.is_none();
        match lead {
            Some(flight) => {
                // The ready service serves this call from its own task; a clone stays.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                let fut = ready.call(req);
                let guard = Ending {
                    flight,
                    shared: self.shared.clone(),
                    key,
                };
                tokio::spawn(drive(fut, guard));
            }
            None => metrics::counter!("llm_coalesced_calls_total").increment(1),
        }
        Either::Right(Waiting {
            joined,
            ticket: Some(ticket),
        })
    }
}

/// Ends a flight when its task does, however it does: a flight whose task panicked or was
/// dropped (a runtime shutting down) ends every caller's stream with an error, and is
/// forgotten so the next identical call starts afresh.
struct Ending {
    flight: Arc<Flight>,
    shared: Arc<Shared>,
    key: Bytes,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.flight.update(|st| {
            st.joinable = false;
            if st.end.is_none() {
                st.end = Some(Err(LlmError::new(ErrorKind::Internal).with_message(
                    "the shared call ended abnormally (its task panicked or was cancelled)",
                )));
            }
        });
        // New callers start a call of their own from now on.
        let mut map = lock(&self.shared.flights);
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
    }
}

/// Runs the shared call: records its chunks for the callers, stops when the last leaves.
async fn drive<F>(fut: F, guard: Ending)
where
    F: Future<Output = Result<ChatStream, LlmError>>,
{
    let flight = guard.flight.clone();
    let abandoned = flight.abandoned.notified();
    tokio::pin!(abandoned);
    let gone = || {
        LlmError::new(ErrorKind::Cancelled).with_message("every caller of this coalesced call left")
    };
    tokio::select! {
        _ = &mut abandoned => flight.update(|st| st.end = Some(Err(gone()))),
        r = fut => match r {
            Err(e) => flight.update(|st| {
                st.joinable = false;
                st.end = Some(Err(e));
            }),
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
                            Some(Ok(c)) => flight.push(c),
                            Some(Err(e)) => {
                                flight.update(|st| {
                                    st.joinable = false;
                                    st.end = Some(Err(e));
                                });
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
    drop(guard);
}

/// A response extension: this caller joined a call another caller started, and was served
/// from it; the upstream took (and bills) that one call once. A budget charges the call to
/// the caller that started it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Joined;

/// Waits for a shared call's first token (or its error).
pub struct Waiting {
    ticket: Option<Ticket>,
    /// Whether this caller joined a call another started.
    joined: bool,
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
            return Poll::Ready(Err(LlmError::new(ErrorKind::Internal)
                .with_message("a coalesced call was polled after it resolved")));
        };
        let flight = ticket.flight.clone();
        let id = ticket.id;
        let mut st = lock(&flight.state);
        if let Some(Err(e)) = st.end.as_ref().filter(|_| st.meta.is_none()) {
            return Poll::Ready(Err(e.clone()));
        }
        match &st.meta {
            Some(meta) => {
                let mut meta = meta.clone();
                drop(st);
                if self.joined {
                    meta.extensions.insert(Joined);
                }
                let ticket = self.ticket.take();
                Poll::Ready(Ok(ChatStream::from_parts(
                    Default::default(),
                    Follow {
                        ticket,
                        done: false,
                    },
                    meta,
                )))
            }
            None => {
                park(&mut st, id, cx);
                Poll::Pending
            }
        }
    }
}

/// A caller's view of a shared call: every chunk from the first, then its end.
struct Follow {
    ticket: Option<Ticket>,
    done: bool,
}

impl Stream for Follow {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let Some((flight, id)) = self.ticket.as_ref().map(|t| (t.flight.clone(), t.id)) else {
            return Poll::Ready(None);
        };
        let mut st = lock(&flight.state);
        let next = st.callers.get(&id).map_or(0, |f| f.next);
        let chunk = next
            .checked_sub(st.base)
            .and_then(|i| st.chunks.get(i))
            .cloned();
        if let Some(c) = chunk {
            if let Some(f) = st.callers.get_mut(&id) {
                f.next += 1;
            }
            st.trim();
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
                park(&mut st, id, cx);
                Poll::Pending
            }
        }
    }
}
