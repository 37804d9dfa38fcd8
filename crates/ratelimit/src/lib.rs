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
//!   every clone of the layer; the limit is applied in the response future, so `poll_ready`
//!   forwards to the inner service and reserves nothing.
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
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, ErrorKind, Message};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_ratelimit::{Key, Limit, Mode, RateLimitLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let layer = RateLimitLayer::builder()
//!     .requests(Limit::new(2, Duration::from_secs(1)).burst(2).key(Key::model()).mode(Mode::Reject))
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(MockChat::with_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO)));
//! let req = || ChatRequest::new("m", vec![Message::user("hi")]);
//! assert!(svc.clone().oneshot(req()).await.is_ok());
//! assert!(svc.clone().oneshot(req()).await.is_ok());
//! let e = svc.clone().oneshot(req()).await.unwrap_err();
//! assert_eq!(e.kind(), ErrorKind::RateLimited);
//! assert_eq!(e.retry_after(), Some(Duration::from_millis(500)));
//! # });
//! ```

mod concurrency;
mod store;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use llm_layers_core::{ChatChunk, ChatRequest, ChatStream, LlmError, Priority, Tenant};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use concurrency::{Concurrency, Permit};
pub use store::{BucketKey, MemoryStore, Rate, Store};

/// The key that overflowing keys share.
pub const OTHER: &str = "_OTHER";

type KeyFn = dyn Fn(&ChatRequest) -> Option<Arc<str>> + Send + Sync;

/// Which bucket a request goes to: a function of the request. `None` skips the limit.
#[derive(Clone)]
pub struct Key(Arc<KeyFn>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// One bucket for everything.
    pub fn global() -> Key {
        let all: Arc<str> = Arc::from("*");
        Key(Arc::new(move |_| Some(all.clone())))
    }

    /// A bucket per model id.
    pub fn model() -> Key {
        Key(Arc::new(|r| Some(Arc::from(r.model()))))
    }

    /// A bucket per [`Tenant`] extension; requests without one are not limited.
    pub fn tenant() -> Key {
        Key(Arc::new(|r| {
            r.extensions().get::<Tenant>().map(|t| t.0.clone())
        }))
    }

    /// Your own key function.
    pub fn from_fn(f: impl Fn(&ChatRequest) -> Option<Arc<str>> + Send + Sync + 'static) -> Key {
        Key(Arc::new(f))
    }

    fn of(&self, r: &ChatRequest) -> Option<Arc<str>> {
        (self.0)(r)
    }
}

/// What to do when a bucket is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait until it fits, up to this long (and never past the request's deadline); then
    /// reject.
    Wait(Duration),
    /// Reject at once with the exact wait.
    Reject,
}

/// One rate limit: `amount` units per `period`, a burst, a key, a mode.
#[derive(Debug, Clone)]
pub struct Limit {
    rate: Rate,
    key: Key,
    mode: Mode,
}

impl Limit {
    /// `amount` per `period`; the burst defaults to `amount`, the key to global, the mode to
    /// waiting up to 5 s.
    pub fn new(amount: u64, period: Duration) -> Limit {
        Limit {
            rate: Rate {
                amount,
                period,
                burst: amount,
            },
            key: Key::global(),
            mode: Mode::Wait(Duration::from_secs(5)),
        }
    }

    /// Units that may go at once from a full bucket.
    pub fn burst(mut self, burst: u64) -> Limit {
        self.rate.burst = burst;
        self
    }

    /// The bucket key.
    pub fn key(mut self, key: Key) -> Limit {
        self.key = key;
        self
    }

    /// Wait or reject.
    pub fn mode(mut self, mode: Mode) -> Limit {
        self.mode = mode;
        self
    }

    fn validate(&self, what: &str) -> Result<(), LlmError> {
        let r = &self.rate;
        if r.amount == 0 || r.burst == 0 || r.period.is_zero() {
            return Err(LlmError::config(format!(
                "{what} limit: amount, burst and period must be above zero"
            )));
        }
        if r.interval().is_zero() {
            return Err(LlmError::config(format!(
                "{what} limit: more than one unit per nanosecond"
            )));
        }
        Ok(())
    }
}

/// Estimates the LLM tokens a request will use, for the token limit's reservation.
pub trait TokenEstimator: Send + Sync + 'static {
    /// Prompt and completion tokens expected.
    fn estimate(&self, req: &ChatRequest) -> u64;
}

/// Prompt bytes / 4, plus `max_tokens` (or `default_output` when the request sets none).
#[derive(Debug, Clone, Copy)]
pub struct DefaultEstimator {
    /// The output assumed when the request sets no limit.
    pub default_output: u64,
}

impl Default for DefaultEstimator {
    fn default() -> Self {
        DefaultEstimator {
            default_output: 1024,
        }
    }
}

impl TokenEstimator for DefaultEstimator {
    fn estimate(&self, req: &ChatRequest) -> u64 {
        req.body().approx_prompt_tokens()
            + req
                .body()
                .max_output_tokens()
                .map_or(self.default_output, u64::from)
    }
}

struct Shared {
    requests: Vec<Limit>,
    tokens: Option<(Limit, Box<dyn TokenEstimator>)>,
    concurrency: Option<(Arc<Concurrency>, Key)>,
    store: Arc<dyn Store>,
    max_hold: Duration,
}

/// Applies [`RateLimit`]. Every service built from one layer (and its clones) shares one
/// store: the limits hold across clones.
#[derive(Clone)]
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
        }
    }
}

/// Builds a [`RateLimitLayer`].
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
    pub fn build(self) -> Result<RateLimitLayer, LlmError> {
        for l in &self.requests {
            l.validate("request")?;
        }
        if let Some((l, _)) = &self.tokens {
            l.validate("token")?;
        }
        if self.requests.is_empty() && self.tokens.is_none() && self.concurrency.is_none() {
            return Err(LlmError::config(
                "a rate-limit layer needs at least one limit",
            ));
        }
        if self.max_keys == 0 {
            return Err(LlmError::config("max_keys must be at least 1"));
        }
        let concurrency = match self.concurrency {
            Some((0, _, _)) => {
                return Err(LlmError::config("concurrency limit must be at least 1"));
            }
            Some((max, key, shed)) => Some((
                Arc::new(Concurrency::new(max, shed, self.queue.0, self.queue.1)),
                key,
            )),
            None => None,
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new(self.max_keys)));
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                requests: self.requests,
                tokens: self.tokens,
                concurrency,
                store,
                max_hold: self.max_hold,
            }),
        })
    }
}

/// Limits calls of an inner chat service. See the [crate docs](crate).
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The response future of [`RateLimit`]: admission (which may wait), then the inner call.
/// One allocation per call, at this admission boundary.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<ChatStream, LlmError>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<ChatStream, LlmError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S> Service<ChatRequest> for RateLimit<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture;

    /// Forwards to the inner service; reserves nothing (the key needs the request).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> ResponseFuture {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture {
            inner: Box::pin(admit_then_call(shared, inner, req)),
        }
    }
}

/// Takes `cost` from one limit's bucket, waiting as its mode allows.
async fn take(
    store: &dyn Store,
    key: &BucketKey,
    cost: u64,
    limit: &Limit,
    deadline: Option<Instant>,
) -> Result<(), LlmError> {
    let mut waited = Duration::ZERO;
    loop {
        let now = Instant::now();
        let wait = match store.take(key, cost, &limit.rate, now) {
            Ok(()) => return Ok(()),
            Err(w) => w,
        };
        let can_wait = match limit.mode {
            Mode::Reject => false,
            Mode::Wait(max) => waited + wait <= max && deadline.is_none_or(|d| now + wait < d),
        };
        if !can_wait {
            metrics::counter!("llm_ratelimit_rejected_total", "limit" => if key.limit == usize::MAX { "tokens" } else { "requests" }).increment(1);
            return Err(LlmError::rate_limited(wait)
                .with_message(format!("rate limit for {} reached", key.key)));
        }
        tokio::time::sleep(wait).await;
        waited += wait;
    }
}

const TOKENS: usize = usize::MAX;

async fn admit_then_call<S>(
    shared: Arc<Shared>,
    mut inner: S,
    req: ChatRequest,
) -> Result<ChatStream, LlmError>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    let deadline = req.deadline();
    let store = &*shared.store;
    // Units taken so far go back if a later limit refuses: a rejected call costs nothing.
    let mut taken = Taken {
        shared: &shared,
        keys: Vec::with_capacity(shared.requests.len()),
        kept: false,
    };
    for (i, limit) in shared.requests.iter().enumerate() {
        if let Some(k) = limit.key.of(&req) {
            let key = BucketKey { limit: i, key: k };
            take(store, &key, 1, limit, deadline).await?;
            taken.keys.push(key);
        }
    }
    let mut reservation = None;
    if let Some((limit, estimator)) = &shared.tokens {
        if let Some(k) = limit.key.of(&req) {
            let key = BucketKey {
                limit: TOKENS,
                key: k,
            };
            let estimate = estimator.estimate(&req);
            // A request larger than the whole burst could never fit: charge the burst.
            let cost = estimate.min(limit.rate.burst);
            take(store, &key, cost, limit, deadline).await?;
            let prompt = req.body().approx_prompt_tokens();
            reservation = Some(Reservation {
                shared: shared.clone(),
                key,
                reserved: cost,
                prompt,
                delivered: 0,
                usage: None,
                settled: false,
            });
        }
    }
    let permit = match &shared.concurrency {
        Some((c, key)) => match key.of(&req) {
            Some(k) => {
                let priority = req
                    .extensions()
                    .get::<Priority>()
                    .copied()
                    .unwrap_or_default();
                // A refusal here drops the reservation, which settles to zero.
                Some(c.acquire(k, priority, deadline).await?)
            }
            None => None,
        },
        None => None,
    };
    taken.kept = true;
    let request_keys = std::mem::take(&mut taken.keys);
    let result = async {
        ServiceExt::ready(&mut inner).await?;
        inner.call(req).await
    }
    .await;
    match result {
        Err(e) => {
            // Only a limit on our own key holds the whole key: a provider's 429 is the
            // breaker's to hold, for that provider alone.
            if e.is_key_limited() {
                if let Some(after) = e.retry_after() {
                    let until = store::later(Instant::now(), after.min(shared.max_hold));
                    for k in &request_keys {
                        store.hold(k, until);
                    }
                }
            }
            // Nothing was generated: the reservation goes back whole (settle on drop).
            if let Some(mut r) = reservation {
                r.finish(Some(0));
            }
            drop(permit);
            Err(e)
        }
        Ok(stream) => {
            if reservation.is_none() && permit.is_none() {
                return Ok(stream);
            }
            Ok(stream.wrap(|s| Settling {
                inner: s,
                reservation,
                _permit: permit,
            }))
        }
    }
}

/// Request units taken by a call still being admitted: given back on drop unless kept.
struct Taken<'a> {
    shared: &'a Shared,
    keys: Vec<BucketKey>,
    kept: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let now = Instant::now();
        for k in &self.keys {
            if let Some(limit) = self.shared.requests.get(k.limit) {
                self.shared.store.settle(k, 1, &limit.rate, now);
            }
        }
    }
}

/// A token reservation, settled once: to the real usage, or to what was delivered.
struct Reservation {
    shared: Arc<Shared>,
    key: BucketKey,
    reserved: u64,
    prompt: u64,
    delivered: u64,
    usage: Option<u64>,
    settled: bool,
}

impl Reservation {
    /// Settles to `actual` tokens, or to the usage seen, or to prompt + chunks delivered.
    fn finish(&mut self, actual: Option<u64>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        // Usage comes from the upstream: bound it to one whole burst past the reservation,
        // so a wild number cannot put the bucket in debt for years.
        let bound = self.shared.tokens.as_ref().map_or(u64::MAX, |(l, _)| {
            self.reserved.saturating_add(l.rate.burst)
        });
        let actual = actual
            .or(self.usage)
            .unwrap_or(self.prompt.saturating_add(self.delivered))
            .min(bound);
        let units =
            i64::try_from(i128::from(self.reserved) - i128::from(actual)).unwrap_or(i64::MIN);
        if let Some((limit, _)) = &self.shared.tokens {
            self.shared
                .store
                .settle(&self.key, units, &limit.rate, Instant::now());
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// A committed stream holding its concurrency permit and token reservation until its end.
struct Settling {
    inner: ChatStream,
    reservation: Option<Reservation>,
    _permit: Option<Permit>,
}

impl Stream for Settling {
    type Item = Result<ChatChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(i) => i,
        };
        if let Some(r) = self.reservation.as_mut() {
            if let Some(Ok(c)) = &item {
                if c.has_output() {
                    r.delivered += 1;
                }
                if let Some(u) = &c.usage {
                    r.usage = Some(u.prompt_tokens.saturating_add(u.completion_tokens));
                }
            }
            if !matches!(item, Some(Ok(_))) {
                r.finish(None);
            }
        }
        Poll::Ready(item)
    }
}
