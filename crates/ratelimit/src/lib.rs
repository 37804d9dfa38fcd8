//! Rate limiting for an llm-layers stack: keyed token buckets for **requests** and for
//! **LLM tokens**, and a keyed, **priority-aware concurrency limit**. Limit yourself before
//! the provider does.
//!
//! - each [`Limit`] is keyed by a function of the request ([`Key`]: global, by model, by
//!   tenant, or your own) and is a GCRA token bucket (burst and sustained rate);
//! - a **token** limit reserves an estimate before the call ([`TokenEstimator`]: prompt
//!   bytes / 4 + `max_tokens`) and settles it to the real `usage` when the stream ends (a
//!   refund or a debit); a cancelled stream settles on what was delivered;
//! - each limit **waits** (up to a maximum, never past the request's deadline) or
//!   **rejects** at once with [`ErrorKind::RateLimited`](llm_layers_core::ErrorKind::RateLimited)
//!   carrying the exact wait;
//! - an upstream **429 about our own key** (an OpenRouter platform limit, see
//!   [`LlmError::is_key_limited`]) holds that key's request buckets for its Retry-After
//!   (capped, 60 s by default), so the whole process backs off, not just one retry; a
//!   provider's 429 is not ours to hold (the breaker holds that provider alone);
//! - the concurrency limit sheds low [`Priority`] calls when
//!   full and queues the others, highest priority first, in a bounded queue with a
//!   maximum wait ([`RateLimitLayerBuilder::concurrency_queue`]);
//! - a call refused by one limit gives back what earlier limits took;
//! - state lives behind the [`Store`] trait ([`MemoryStore`] in process, bounded), shared by
//!   every clone of the layer; a store may need a round trip for a decision
//!   ([`Take::Pending`]), which is how `llm-layers-redis` shares the limits of several
//!   replicas (awaited once, off the allocation-free path a local store takes);
//! - a global concurrency limit is also a readiness concern (see [`RateLimit`]'s
//!   *Readiness*); buckets act in `call`, which calls the inner service at once, without
//!   allocation, when nothing has to wait.
//!
//! # Why not `governor`
//!
//! governor's keyed GCRA is excellent, but it runs on its own clock (not `tokio::time`, so
//! paused-time tests need a custom clock), cannot give tokens back (a token reservation must
//! settle to real usage), and has no per-key hold for upstream 429s. The GCRA here is a few
//! lines over `tokio::time`; the bench compares their decision costs.
//!
//! # Ordering
//!
//! Outside retry and hedge (a retry or a hedge should not skip the queue, and the limit
//! counts calls, not attempts), inside the per-call latency layer.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, ErrorKind, Message};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_ratelimit::{Key, Limit, Mode, RateLimitLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let layer = RateLimitLayer::builder()
//!     .requests(Limit::new(2, Duration::from_secs(1)).burst(2).key(Key::model()).mode(Mode::Reject))
//!     .build()
//!     ?;
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(MockChat::with_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO)));
//! let req = || ChatRequest::new("m", vec![Message::user("hi")]);
//! assert!(svc.clone().oneshot(req()).await.is_ok());
//! assert!(svc.clone().oneshot(req()).await.is_ok());
//! let e = svc.clone().oneshot(req()).await.unwrap_err();
//! assert_eq!(e.kind(), ErrorKind::RateLimited);
//! assert_eq!(e.retry_after(), Some(Duration::from_millis(500)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admit;
mod concurrency;
mod limit;
mod store;

use llm_layers_core::ConfigError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use llm_layers_core::{ChatRequest, ChatStream, LlmError, Priority};
use tower_layer::Layer;
use tower_service::Service;

use admit::{Admitted, Progress, admit_then_call};
use concurrency::{Concurrency, Permit};
pub use limit::{DefaultEstimator, Key, Limit, Mode, TokenEstimator};
use pin_project_lite::pin_project;
pub use store::{BucketKey, LimitId, MemoryStore, Pending, Rate, Store, Take};

/// The key that overflowing keys share.
pub const OTHER: &str = "_OTHER";

pub(crate) struct Shared {
    pub(crate) requests: Vec<Limit>,
    /// The stable names of `requests`' buckets, in order, and of the token limit's.
    pub(crate) names: Vec<Arc<str>>,
    pub(crate) token_name: Arc<str>,
    pub(crate) tokens: Option<(Limit, Box<dyn TokenEstimator>)>,
    pub(crate) concurrency: Option<(Arc<Concurrency>, Key)>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) max_hold: Duration,
}

/// Applies [`RateLimit`]. Every service built from one layer (and its clones) shares one
/// store: the limits hold across clones.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("requests", &self.shared.requests)
            .field("keys", &self.shared.store.len())
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A builder with no limit yet.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            requests: Vec::new(),
            tokens: None,
            concurrency: None,
            queue: (1024, Duration::from_secs(30)),
            store: None,
            max_keys: 100_000,
            max_hold: Duration::from_secs(60),
        }
    }

    /// Buckets held in the store (bounded by `max_keys`).
    pub fn keys(&self) -> usize {
        self.shared.store.len()
    }

    /// Concurrency slots in use, by key count (keys with nothing in flight are dropped).
    pub fn concurrency_keys(&self) -> usize {
        self.shared
            .concurrency
            .as_ref()
            .map_or(0, |(c, _)| c.keys())
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
            reserved: None,
        }
    }
}

/// Builds a [`RateLimitLayer`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct RateLimitLayerBuilder {
    requests: Vec<Limit>,
    tokens: Option<(Limit, Box<dyn TokenEstimator>)>,
    concurrency: Option<(usize, Key, Priority)>,
    queue: (usize, Duration),
    store: Option<Arc<dyn Store>>,
    max_keys: usize,
    max_hold: Duration,
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("requests", &self.requests)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// Adds a request limit (one unit per call). Several may be added (per tenant and
    /// global, say); a call must fit them all.
    pub fn requests(mut self, limit: Limit) -> Self {
        self.requests.push(limit);
        self
    }

    /// Sets the LLM-token limit, with the [`DefaultEstimator`].
    pub fn tokens(self, limit: Limit) -> Self {
        self.tokens_with(limit, DefaultEstimator::default())
    }

    /// Sets the LLM-token limit with your estimator.
    pub fn tokens_with(mut self, limit: Limit, estimator: impl TokenEstimator) -> Self {
        self.tokens = Some((limit, Box::new(estimator)));
        self
    }

    /// At most `max` calls in flight per key; when full, calls below `shed_below` priority
    /// are shed at once, the others wait, highest priority first.
    pub fn concurrency(mut self, max: usize, key: Key, shed_below: Priority) -> Self {
        self.concurrency = Some((max, key, shed_below));
        self
    }

    /// Bounds the concurrency queue: at most `max_waiters` calls wait per key (more are
    /// refused at once), and none waits longer than `max_wait` or past its deadline; a call
    /// refused either way gets [`ErrorKind::RateLimited`](llm_layers_core::ErrorKind) with a
    /// `Retry-After`. Default 1,024 waiters, 30 s.
    pub fn concurrency_queue(mut self, max_waiters: usize, max_wait: Duration) -> Self {
        self.queue = (max_waiters, max_wait);
        self
    }

    /// The longest an upstream key-level `429` holds the request buckets, whatever its
    /// `Retry-After` says (default 60 s).
    pub fn max_hold(mut self, d: Duration) -> Self {
        self.max_hold = d;
        self
    }

    /// Another store (a distributed one); the default is a [`MemoryStore`].
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The most buckets of the default store (default 100,000).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: no limit at all, a limit with a zero amount, burst or period, a concurrency or `max_keys` of zero.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        for l in &self.requests {
            l.validate("request")?;
        }
        if let Some((l, _)) = &self.tokens {
            l.validate("token")?;
        }
        if self.requests.is_empty() && self.tokens.is_none() && self.concurrency.is_none() {
            return Err(ConfigError::new(
                "a rate-limit layer needs at least one limit",
            ));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys must be at least 1"));
        }
        let concurrency = match self.concurrency {
            Some((0, _, _)) => {
                return Err(ConfigError::new("concurrency limit must be at least 1"));
            }
            Some((max, key, shed)) => Some((
                Arc::new(Concurrency::new(max, shed, self.queue.0, self.queue.1)),
                key,
            )),
            None => None,
        };
        let names: Vec<Arc<str>> = self
            .requests
            .iter()
            .map(|l| l.stable_name("requests:"))
            .collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(ConfigError::new(format!(
                    "two request limits are both named {n}: give one another name (Limit::name)"
                )));
            }
        }
        let token_name = self
            .tokens
            .as_ref()
            .map_or_else(|| Arc::from("tokens"), |(l, _)| l.stable_name("tokens:"));
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new(self.max_keys)));
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                requests: self.requests,
                names,
                token_name,
                tokens: self.tokens,
                concurrency,
                store,
                max_hold: self.max_hold,
            }),
        })
    }
}

/// Limits calls of an inner chat service. See the [crate docs](crate).
///
/// # Readiness
///
/// `poll_ready` is the inner service's readiness, and, when the concurrency limit is keyed
/// by [`Key::global`], that limit's too, as in tower's `ConcurrencyLimit`: a free slot is
/// taken in `poll_ready` and held by this service until its next `call` (a clone starts
/// without one), and `poll_ready` is `Pending` while no call could be admitted (every slot
/// taken and the queue full), so `LoadShed` or `Buffer` above see the backpressure. Buckets
/// and keyed limits depend on the request, which `poll_ready` does not have: they act in
/// `call`.
///
/// # Calls
///
/// A call every limit admits at once is made at once, without allocation. One that must
/// wait gets a boxed future holding a **clone** of the inner service, made ready only once
/// admitted: the ready service stays here, so nothing below (a `ConcurrencyLimit` permit,
/// a `Buffer` slot) is held across the wait.
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
    reserved: Option<Permit>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            reserved: None,
        }
    }
}

impl<S> RateLimit<S> {
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

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("reserved", &self.reserved.is_some())
            .finish_non_exhaustive()
    }
}

type Waiting = Pin<Box<dyn Future<Output = Result<ChatStream, LlmError>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`]: the inner call of an admitted request, or the
    /// admission that waits (boxed) and then the call.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] fut: F, admitted: Option<Admitted> },
        Waiting { fut: Waiting },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatStream, LlmError>>,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, admitted } => {
                let result = std::task::ready!(fut.poll(cx));
                Poll::Ready(match admitted.take() {
                    Some(a) => admit::finish(a, result),
                    None => result,
                })
            }
            StateProj::Waiting { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S> Service<ChatRequest> for RateLimit<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        if self.reserved.is_none() {
            if let Some((c, key)) = &self.shared.concurrency {
                if let Some(k) = key.global_key() {
                    match c.poll_reserve(cx, k) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(permit) => self.reserved = permit,
                    }
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> ResponseFuture<S::Future> {
        let state = match admit::try_admit(&self.shared, &req, &mut self.reserved) {
            Progress::Admitted(mut admitted) => {
                // Sent: from here a dropped call keeps what it spent.
                admitted.sent();
                State::Called {
                    fut: self.inner.call(req),
                    admitted: Some(admitted),
                }
            }
            Progress::Partial(partial, pending) => {
                // A call that waits on a bucket holds no concurrency slot while it waits:
                // one tenant's wait must not be everyone's. It queues for a slot, by
                // priority, once its buckets admit it.
                let reserved = self.reserved.take().filter(|_| !partial.before_slot());
                State::Waiting {
                    fut: Box::pin(admit_then_call(
                        (partial, pending),
                        self.inner.clone(),
                        req,
                        reserved,
                    )),
                }
            }
        };
        ResponseFuture { state }
    }
}
