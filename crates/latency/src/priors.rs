//! [`PriorFeed`]: published endpoint stats, fetched in the background, as priors in a
//! [`LatencyStore`].

use llm_layers_core::hash::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use llm_layers_core::endpoints::EndpointStats;
use llm_layers_core::sync::{read, write};
use llm_layers_core::{ConfigError, LlmError};
use tokio::time::Instant;

use crate::{LatencyStore, Prior};

/// What fetches a model's published endpoint stats (for OpenRouter:
/// `OpenRouter::endpoint_stats`).
pub type FetchEndpoints = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Vec<EndpointStats>, LlmError>> + Send>>
        + Send
        + Sync,
>;

/// Called with a model and its endpoints after every successful fetch (a breaker starts an
/// endpoint with low uptime half-open from here).
pub type OnEndpoints = Arc<dyn Fn(&str, &[EndpointStats]) + Send + Sync>;

/// The most models a feed follows; past it, no new model is fetched.
const MAX_MODELS: usize = 1024;

#[derive(Default)]
struct ModelState {
    /// When the last fetch ended (and whether it failed).
    done: Option<(Instant, bool)>,
    in_flight: bool,
    endpoints: Arc<[EndpointStats]>,
}

struct Inner {
    store: LatencyStore,
    fetch: FetchEndpoints,
    ttl: Duration,
    retry_after_failure: Duration,
    hooks: Vec<OnEndpoints>,
    models: RwLock<HashMap<Arc<str>, ModelState>>,
}

/// Seeds a [`LatencyStore`] with the upstream's published per-endpoint stats as
/// [`Prior`]s, so a new process ranks providers from its first calls instead of after
/// hundreds.
///
/// [`touch`](PriorFeed::touch) (the router calls it per request) costs a read lock when
/// the model's stats are fresh; when they are missing or older than the TTL (default
/// 5 minutes) it starts one background fetch and returns at once: **a call never waits for
/// it**, and a failed fetch leaves the store without priors (and is tried again after
/// 30 s), never fails a call. Priors only stand in until local samples replace them.
///
/// ```
/// use std::sync::Arc;
/// use llm_layers_core::endpoints::{EndpointStats, Percentiles};
/// use llm_layers_latency::{LatencyStore, PriorFeed};
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
/// let store = LatencyStore::new();
/// let feed = PriorFeed::builder(store.clone(), Arc::new(|_model: String| {
///     Box::pin(async {
///         Ok(vec![EndpointStats {
///             provider_name: "Alpha".into(),
///             latency_last_30m: Some(Percentiles { p50: Some(0.4), p75: None, p90: Some(0.9), p99: Some(2.0) }),
///             ..Default::default()
///         }])
///     }) as _
/// }))
/// .build()?;
/// assert_eq!(feed.refresh("m/x").await?, 1);
/// let s = store.stats("m/x", Some("Alpha")).unwrap_or_default();
/// assert_eq!((s.ttft_samples, s.prior_weight), (0, 1.0));
/// assert_eq!(s.ttft_p50.as_millis(), 400);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PriorFeed {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PriorFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriorFeed")
            .field("ttl", &self.inner.ttl)
            .field("models", &read(&self.inner.models).len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`PriorFeed`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct PriorFeedBuilder {
    store: LatencyStore,
    fetch: FetchEndpoints,
    ttl: Duration,
    retry_after_failure: Duration,
    hooks: Vec<OnEndpoints>,
}

impl std::fmt::Debug for PriorFeedBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriorFeedBuilder")
            .field("ttl", &self.ttl)
            .field("retry_after_failure", &self.retry_after_failure)
            .finish_non_exhaustive()
    }
}

impl PriorFeedBuilder {
    /// How long fetched stats are used before a refresh (default 5 minutes, at least 1 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long after a failed fetch the next is tried (default 30 s, at least 1 s).
    pub fn retry_after_failure(mut self, d: Duration) -> Self {
        self.retry_after_failure = d;
        self
    }

    /// Also calls `hook` with every model's fetched endpoints.
    pub fn on_endpoints(mut self, hook: OnEndpoints) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when a duration is under a second.
    pub fn build(self) -> Result<PriorFeed, ConfigError> {
        if self.ttl < Duration::from_secs(1) || self.retry_after_failure < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "prior feed ttl and retry_after_failure must be at least 1 s",
            ));
        }
        Ok(PriorFeed {
            inner: Arc::new(Inner {
                store: self.store,
                fetch: self.fetch,
                ttl: self.ttl,
                retry_after_failure: self.retry_after_failure,
                hooks: self.hooks,
                models: RwLock::new(HashMap::default()),
            }),
        })
    }
}

impl PriorFeed {
    /// A feed into `store`, fetching with `fetch`.
    pub fn builder(store: LatencyStore, fetch: FetchEndpoints) -> PriorFeedBuilder {
        PriorFeedBuilder {
            store,
            fetch,
            ttl: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(30),
            hooks: Vec::new(),
        }
    }

    /// Starts a background fetch for `model` when its stats are missing or stale and none
    /// is running; returns at once. Needs a Tokio runtime (without one it does nothing).
    pub fn touch(&self, model: &str) {
        let now = Instant::now();
        {
            let models = read(&self.inner.models);
            match models.get(model) {
                Some(m) if m.in_flight || !self.due(m, now) => return,
                None if models.len() >= MAX_MODELS => return,
                _ => {}
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut models = write(&self.inner.models);
            let m = models.entry(Arc::from(model)).or_default();
            if m.in_flight || !self.due(m, now) {
                return;
            }
            m.in_flight = true;
        }
        let feed = self.clone();
        let model = model.to_owned();
        rt.spawn(async move {
            let _ = feed.refresh(&model).await;
        });
    }

    fn due(&self, m: &ModelState, now: Instant) -> bool {
        match m.done {
            None => true,
            Some((at, failed)) => {
                let ttl = if failed {
                    self.inner.retry_after_failure
                } else {
                    self.inner.ttl
                };
                now.saturating_duration_since(at) >= ttl
            }
        }
    }

    /// Fetches `model`'s endpoint stats now and sets them as priors; returns how many
    /// endpoints gave one. On failure the store keeps what it had.
    ///
    /// # Errors
    ///
    /// The fetch's error.
    pub async fn refresh(&self, model: &str) -> Result<usize, LlmError> {
        let fetched = (self.inner.fetch)(model.to_owned()).await;
        let now = Instant::now();
        let result = match fetched {
            Ok(endpoints) => {
                let mut n = 0;
                for e in &endpoints {
                    if e.provider_name.is_empty() {
                        continue;
                    }
                    let prior = Prior::from_endpoint(e);
                    n += usize::from(prior.is_some());
                    self.inner.store.set_prior(model, &e.provider_name, prior);
                }
                for hook in &self.inner.hooks {
                    hook(model, &endpoints);
                }
                let mut models = write(&self.inner.models);
                let m = models.entry(Arc::from(model)).or_default();
                m.endpoints = endpoints.into();
                m.done = Some((now, false));
                m.in_flight = false;
                Ok(n)
            }
            Err(e) => {
                tracing::debug!(model, error = %e, "endpoint stats fetch failed; no priors");
                let mut models = write(&self.inner.models);
                let m = models.entry(Arc::from(model)).or_default();
                m.done = Some((now, true));
                m.in_flight = false;
                Err(e)
            }
        };
        metrics::counter!(
            "llm_prior_fetches_total",
            "outcome" => if result.is_ok() { "ok" } else { "error" },
        )
        .increment(1);
        result
    }

    /// The endpoints last fetched for `model` (empty when none were).
    pub fn endpoints(&self, model: &str) -> Arc<[EndpointStats]> {
        read(&self.inner.models)
            .get(model)
            .map(|m| m.endpoints.clone())
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// What `provider` (display name) publishes as its price for `model`: its endpoint's
    /// `pricing` (none when it published no usable one).
    pub fn price(&self, model: &str, provider: &str) -> Option<llm_layers_core::price::Price> {
        self.read_endpoint(model, provider, EndpointStats::price)
    }

    /// The routing slug each provider display name was published with, for `model`.
    pub fn slug(&self, model: &str, provider: &str) -> Option<String> {
        self.read_endpoint(model, provider, |e| e.tag.clone())
    }

    /// `read` of `provider`'s endpoint of `model`, under the read lock.
    fn read_endpoint<T>(
        &self,
        model: &str,
        provider: &str,
        read_one: impl FnOnce(&EndpointStats) -> Option<T>,
    ) -> Option<T> {
        let models = read(&self.inner.models);
        models
            .get(model)?
            .endpoints
            .iter()
            .find(|e| e.provider_name == provider)
            .and_then(read_one)
    }
}
