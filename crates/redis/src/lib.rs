//! State shared by llm-layers replicas through **Redis 7 or Valkey**: rate limits, upstream
//! holds, breaker trips and latency profiles, so four gateway replicas behind a load balancer
//! behave as one, and a restart or a new replica starts from what the fleet knows.
//!
//! - [`RedisStore`]: a rate-limit [`Store`](llm_layers_ratelimit::Store). GCRA for requests
//!   and LLM tokens as one atomic Lua script per decision (`EVALSHA`, reloaded on
//!   `NOSCRIPT`; time from Redis `TIME`, not the replica's clock; cost = tokens), a refund
//!   script for the token limit's settle-to-usage, the upstream 429 hold as `SET PX` that a
//!   longer hold extends and a shorter never shortens. Requests and tokens of one key share a
//!   hash tag (`{key}`), so a cluster puts them in one slot. In [`LimitMode::Lease`] a replica
//!   takes about its local rate × 250 ms of units in one call, spends them locally, gives
//!   back what is left; it never over-admits. A refused key is remembered as refused until
//!   its retry-after, so a hot rejected key costs no round trip.
//! - [`BreakerSync`]: a trip, close or hold on one replica reaches all within one sync
//!   interval (**polling**: one script per interval publishes our changes and reads
//!   everyone's; no pub/sub connection to keep), and half-open probing is claimed in Redis
//!   (`SET NX PX`): one replica probes, the others keep the provider out until it is
//!   decided.
//! - [`LatencySync`]: each replica pushes its own latency windows per (model, provider) as a
//!   mergeable [`Summary`](llm_layers_latency::Summary) (HDR histograms of 2 significant
//!   digits, so any quantile read back is within 1 %) every few seconds, and merges the
//!   others' on read.
//! - [`RedisLedger`]: budgets' spend (USD per tenant per calendar window, in nano-dollars),
//!   one counter per tenant and window that every replica reserves from (one atomic script)
//!   and settles to, so N replicas keep one budget.
//! - **Redis down is not an outage.** Every call to Redis has a budget (default 50 ms). A
//!   failure or a late answer opens a breaker on the store itself: every layer answers from
//!   local state at once (a limit from a local bucket of limit ÷ the configured replica
//!   count, never the whole limit per replica), `llm_store_fallback_total{op}` counts it,
//!   `llm_store_healthy` shows it, the log says it once per transition, and one probe per
//!   second finds the store back (the connection reconnects by itself). No call fails
//!   because Redis failed.
//!
//! One [`Redis`] per process: one multiplexed `ConnectionManager` (no pool on top).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_breaker::BreakerLayer;
//! use llm_layers_latency::LatencyStore;
//! use llm_layers_ratelimit::{Limit, RateLimitLayer};
//! use llm_layers_redis::{BreakerSync, LatencySync, LimitMode, Redis};
//!
//! // Nothing connects yet: a Redis that is down is local state, not an error.
//! let redis = Redis::builder("redis://127.0.0.1:6379").replica("gw-1").build()?;
//! let limits = RateLimitLayer::builder()
//!     .requests(Limit::new(600, Duration::from_secs(60)))
//!     .store(redis.limit_store().mode(LimitMode::Lease).replicas(4).build()?)
//!     .build()?;
//! let breaker = BreakerLayer::builder().build()?;
//! let latency = LatencyStore::new();
//! let breaker_sync = BreakerSync::new(&redis, &breaker, Duration::from_secs(1)).spawn();
//! let latency_sync = LatencySync::new(&redis, &latency, Duration::from_secs(5)).spawn();
//! # let _ = (limits, breaker_sync, latency_sync);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```

mod breaker;
mod health;
mod latency;
mod ledger;
mod limits;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use breaker::BreakerSync;
use health::Health;
pub use latency::LatencySync;
pub use ledger::RedisLedger;
pub use limits::{LimitMode, LimitStoreBuilder, RedisStore};

/// Runs `round` every `period` (a missed tick is not made up) on a task of its own.
fn every<F, Fut>(period: Duration, mut round: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            round().await;
        }
    })
}

/// Why a call to Redis gave no answer (the caller falls back to local state).
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's breaker is open: not asked.
    Down,
    /// No answer within the budget.
    Timeout,
    /// Redis answered with an error, or the connection failed.
    Redis(redis::RedisError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Down => f.write_str("shared store is down"),
            StoreError::Timeout => f.write_str("shared store gave no answer in time"),
            StoreError::Redis(e) => write!(f, "shared store: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

struct Inner {
    con: ConnectionManager,
    health: Health,
    budget: Duration,
    prefix: Arc<str>,
    replica: Arc<str>,
    fallbacks: std::sync::atomic::AtomicU64,
}

/// A connection to Redis shared by every sharer of this process, with its health.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.inner.prefix)
            .field("replica", &self.inner.replica)
            .field("budget", &self.inner.budget)
            .field("healthy", &self.inner.health.is_healthy())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Redis`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RedisBuilder {
    url: String,
    budget: Duration,
    retry: Duration,
    prefix: String,
    replica: Option<String>,
}

impl RedisBuilder {
    /// The most a call to Redis may take before the caller answers from local state
    /// (default 50 ms).
    pub fn budget(mut self, d: Duration) -> Self {
        self.budget = d;
        self
    }

    /// How often the store is probed while down (default 1 s).
    pub fn retry(mut self, d: Duration) -> Self {
        self.retry = d;
        self
    }

    /// The prefix of every key (default `llm`): replicas that share state use the same.
    pub fn prefix(mut self, p: impl Into<String>) -> Self {
        self.prefix = p.into();
        self
    }

    /// This replica's name, unique in the fleet (default: host name and process id).
    pub fn replica(mut self, name: impl Into<String>) -> Self {
        self.replica = Some(name.into());
        self
    }

    /// Builds it. Nothing is connected yet: the first call connects, and a Redis that is
    /// down at start is a store that is down (local state), not an error.
    ///
    /// # Errors
    ///
    /// A URL `redis` cannot read, a zero budget, or no Tokio runtime.
    pub fn build(self) -> Result<Redis, llm_layers_core::ConfigError> {
        let bad = |e: &dyn fmt::Display| llm_layers_core::ConfigError::new(format!("redis: {e}"));
        if self.budget.is_zero() || self.retry.is_zero() {
            return Err(bad(&"budget and retry must be above zero"));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(bad(
                &"build it inside a Tokio runtime (it reconnects on one)",
            ));
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| bad(&e))?;
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.budget))
            .set_connection_timeout(Some(self.budget.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client, cfg).map_err(|e| bad(&e))?;
        let replica = self.replica.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(Redis {
            inner: Arc::new(Inner {
                con,
                health: Health::new(self.retry),
                budget: self.budget,
                prefix: Arc::from(self.prefix),
                replica: Arc::from(replica),
                fallbacks: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }
}

impl Redis {
    /// A builder for `url` (`redis://host:port/db`, `rediss://` is not built in).
    pub fn builder(url: impl Into<String>) -> RedisBuilder {
        RedisBuilder {
            url: url.into(),
            budget: Duration::from_millis(50),
            retry: Duration::from_secs(1),
            prefix: "llm".into(),
            replica: None,
        }
    }

    /// Whether the store answered the last call (`false`: layers use local state).
    pub fn is_healthy(&self) -> bool {
        self.inner.health.is_healthy()
    }

    /// How many answers came from local state because the store gave none (also
    /// `llm_store_fallback_total{op}`).
    pub fn fallbacks(&self) -> u64 {
        self.inner
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one answer from local state because the store gave none.
    pub(crate) fn fell_back(&self, op: &'static str) {
        self.inner
            .fallbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("llm_store_fallback_total", "op" => op).increment(1);
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// A rate-limit store on this connection.
    pub fn limit_store(&self) -> LimitStoreBuilder {
        LimitStoreBuilder::new(self.clone())
    }

    pub(crate) fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}:{parts}", self.inner.prefix)
    }

    /// Runs one operation within the budget, through the store's breaker.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let h = &self.inner.health;
        if !h.allow() {
            return Err(StoreError::Down);
        }
        match tokio::time::timeout(self.inner.budget, op(self.inner.con.clone())).await {
            Ok(Ok(v)) => {
                h.ok();
                Ok(v)
            }
            Ok(Err(e)) => {
                h.failed(&e);
                Err(StoreError::Redis(e))
            }
            Err(_) => {
                h.failed(&"no answer within the budget");
                Err(StoreError::Timeout)
            }
        }
    }
}
