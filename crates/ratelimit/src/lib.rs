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

use admit::admit_then_call;
use concurrency::Concurrency;
pub use limit::{DefaultEstimator, Key, Limit, Mode, TokenEstimator};
pub use store::{BucketKey, MemoryStore, Rate, Store};

/// The key that overflowing keys share.
pub const OTHER: &str = "_OTHER";

pub(crate) struct Shared {
    pub(crate) requests: Vec<Limit>,
    pub(crate) tokens: Option<(Limit, Box<dyn TokenEstimator>)>,
    pub(crate) concurrency: Option<(Arc<Concurrency>, Key)>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) max_hold: Duration,
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
