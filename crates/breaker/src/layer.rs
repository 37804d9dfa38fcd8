use llm_layers_core::ConfigError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use llm_layers_core::endpoints::EndpointStats;
use llm_layers_core::{Classify, DefaultClassify, default_slug};
use llm_layers_latency::LatencyStore;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::registry::{BreakerInfo, Change, Config, Registry};
use crate::service::Breaker;

/// When a call that succeeded still counts as a failure: it was too slow to its first token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SlowCall {
    /// Slower than this.
    Fixed(Duration),
    /// Slower than `factor` × the model's recorded TTFT p50 (and at least `min`); no rule
    /// until the store has enough samples.
    P50Multiple {
        /// Where TTFTs are recorded.
        store: LatencyStore,
        /// How many times the median.
        factor: f64,
        /// Never slower than this counts as slow.
        min: Duration,
    },
}

impl SlowCall {
    fn threshold(&self, model: &str) -> Option<Duration> {
        match self {
            SlowCall::Fixed(d) => Some(*d),
            SlowCall::P50Multiple { store, factor, min } => store
                .ttft_quantile(model, None, 0.5)
                .map(|p50| p50.mul_f64(*factor).max(*min)),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) classify: Arc<dyn Classify>,
    pub(crate) slow: Option<SlowCall>,
    pub(crate) slugs: HashMap<String, String>,
}

impl Shared {
    /// The routing slug of a provider display name: the configured map, else the default.
    pub(crate) fn slug(&self, display: &str) -> String {
        self.slugs
            .get(display)
            .cloned()
            .unwrap_or_else(|| default_slug(display))
    }

    /// How long a call to `model` may go without a first token before it is slow.
    pub(crate) fn slow_threshold(&self, model: &str) -> Option<Duration> {
        self.slow.as_ref().and_then(|s| s.threshold(model))
    }

    pub(crate) fn is_slow(&self, model: &str, ttft: Duration) -> bool {
        self.slow
            .as_ref()
            .and_then(|s| s.threshold(model))
            .is_some_and(|t| ttft > t)
    }
}

/// Applies [`Breaker`]. Every service built from one layer (and its clones) shares one
/// registry.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct BreakerLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("entries", &self.shared.registry.entries())
            .finish_non_exhaustive()
    }
}

impl BreakerLayer {
    /// A builder with the defaults: trip on 5 consecutive failures, or half of the last 20
    /// calls (10 at least) failing; open 5 s doubling to 5 min with ±20 % jitter; 1 probe;
    /// 1,024 entries, idle ones evicted after 10 min; a throttled provider held for its
    /// `Retry-After` (1 s without one, 60 s at most).
    pub fn builder() -> BreakerLayerBuilder {
        BreakerLayerBuilder {
            cfg: Config {
                window: 20,
                min_calls: 10,
                failure_ratio: 0.5,
                consecutive: 5,
                open_base: Duration::from_secs(5),
                open_max: Duration::from_secs(300),
                jitter: 0.2,
                probes: 1,
                max_entries: 1024,
                idle_ttl: Duration::from_secs(600),
                default_hold: Duration::from_secs(1),
                max_hold: Duration::from_secs(60),
            },
            classify: Arc::new(DefaultClassify),
            slow: None,
            slugs: HashMap::new(),
            seed: 0,
        }
    }

    /// The state of every breaker.
    pub fn snapshot(&self) -> Vec<BreakerInfo> {
        self.shared.registry.snapshot(Instant::now())
    }

    /// The trips, closes and holds made here since the last call, for a sharer to publish
    /// to other replicas (`llm-layers-redis` does). From the first call on, changes are
    /// kept until taken (at most 4,096; older ones are dropped).
    pub fn changes(&self) -> Vec<Change> {
        self.shared.registry.drain_changes()
    }

    /// Applies a change another replica made: an open or a hold only lengthens what is
    /// here, a close ends an open or half-open breaker (a probe elsewhere succeeded).
    pub fn apply(&self, change: &Change) {
        self.shared.registry.apply(change, Instant::now());
    }

    /// Starts `(model, provider slug)` half-open, unless its breaker already saw calls:
    /// until one call through it succeeds, one probe at a time goes there and other calls
    /// avoid it. For a provider published as failing (see
    /// [`suspect_low_uptime`](Self::suspect_low_uptime)).
    pub fn suspect(&self, model: &str, provider: &str) -> bool {
        self.shared
            .registry
            .suspect(model, provider, Instant::now())
    }

    /// Starts half-open every endpoint of `model` whose published `uptime_last_5m` is
    /// under `min_uptime` percent (a `PriorFeed` hook); returns how many.
    pub fn suspect_low_uptime(
        &self,
        model: &str,
        endpoints: &[EndpointStats],
        min_uptime: f64,
    ) -> usize {
        endpoints
            .iter()
            .filter(|e| e.uptime_last_5m.is_some_and(|u| u < min_uptime))
            .filter(|e| {
                let slug = e
                    .tag
                    .clone()
                    .unwrap_or_else(|| default_slug(&e.provider_name));
                self.suspect(model, &slug)
            })
            .count()
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker::new(inner, self.shared.clone())
    }
}

/// Builds a [`BreakerLayer`], validating every value.
#[must_use = "a builder does nothing until `build` is called"]
pub struct BreakerLayerBuilder {
    cfg: Config,
    classify: Arc<dyn Classify>,
    slow: Option<SlowCall>,
    slugs: HashMap<String, String>,
    seed: u64,
}

impl std::fmt::Debug for BreakerLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerLayerBuilder")
            .field("cfg", &self.cfg)
            .field("slow", &self.slow)
            .finish_non_exhaustive()
    }
}

impl BreakerLayerBuilder {
    /// Trip after `n` failures in a row (at least 1).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.cfg.consecutive = n;
        self
    }

    /// Trip when `ratio` (0 to 1; default 0.5) of the last [`window`](Self::window) calls
    /// failed, once at least [`min_calls`](Self::min_calls) were seen.
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.cfg.failure_ratio = ratio;
        self
    }

    /// How many recent calls the failure ratio is read over (default 20).
    pub fn window(mut self, calls: usize) -> Self {
        self.cfg.window = calls;
        self
    }

    /// The fewest calls in the window before the ratio may trip (default 10, at most the
    /// window).
    pub fn min_calls(mut self, calls: usize) -> Self {
        self.cfg.min_calls = calls;
        self
    }

    /// Open for `base` after the first trip (default 5 s), doubling per trip in a row up to
    /// [`max_open_for`](Self::max_open_for).
    pub fn open_for(mut self, base: Duration) -> Self {
        self.cfg.open_base = base;
        self
    }

    /// The longest a breaker stays open, however many trips in a row (default 300 s).
    pub fn max_open_for(mut self, max: Duration) -> Self {
        self.cfg.open_max = max;
        self
    }

    /// Each open period is multiplied by a uniform factor in `1 ± jitter` (0 to 1; default
    /// 0.2), so breakers opened together do not probe together.
    pub fn open_jitter(mut self, jitter: f64) -> Self {
        self.cfg.jitter = jitter;
        self
    }

    /// How many probe requests a half-open breaker admits at once (at least 1).
    pub fn probes(mut self, n: u32) -> Self {
        self.cfg.probes = n;
        self
    }

    /// The most (model, provider) entries (default 1,024).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.cfg.max_entries = n;
        self
    }

    /// When an unused closed entry may be evicted (default 600 s).
    pub fn idle_ttl(mut self, idle: Duration) -> Self {
        self.cfg.idle_ttl = idle;
        self
    }

    /// How long a throttled (model, provider) is held when the `429` says no `Retry-After`
    /// (default 1 s; above zero, at most [`max_hold`](Self::max_hold)).
    pub fn hold(mut self, default: Duration) -> Self {
        self.cfg.default_hold = default;
        self
    }

    /// The longest hold whatever the `Retry-After` says (default 60 s): a
    /// `Retry-After: 86400` must not take a provider away for a day.
    pub fn max_hold(mut self, max: Duration) -> Self {
        self.cfg.max_hold = max;
        self
    }

    /// What counts as a failure (default [`DefaultClassify`]'s `provider_failure`) and what
    /// as a throttle (`throttled`).
    pub fn classify(mut self, c: impl Classify) -> Self {
        self.classify = Arc::new(c);
        self
    }

    /// Count slow first tokens as failures.
    pub fn slow_call(mut self, rule: SlowCall) -> Self {
        self.slow = Some(rule);
        self
    }

    /// Display names (as responses give them) to routing slugs, where the default
    /// (lowercase, dashes) is wrong; e.g. from `OpenRouter::providers()`.
    pub fn provider_slugs(mut self, map: HashMap<String, String>) -> Self {
        self.slugs = map;
        self
    }

    /// Seeds the jitter.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: a ratio, window, open period, jitter or hold out of range, or a slow-call threshold of zero.
    pub fn build(self) -> Result<BreakerLayer, ConfigError> {
        let c = &self.cfg;
        if c.consecutive == 0 {
            return Err(ConfigError::new("consecutive_failures must be at least 1"));
        }
        if !(c.failure_ratio > 0.0 && c.failure_ratio <= 1.0) {
            return Err(ConfigError::new("failure_ratio must be in (0, 1]"));
        }
        if c.window == 0 || c.min_calls == 0 || c.min_calls > c.window {
            return Err(ConfigError::new("need 0 < min_calls <= window"));
        }
        if c.open_base.is_zero() || c.open_max < c.open_base {
            return Err(ConfigError::new("need 0 < open_for <= max_open_for"));
        }
        if !(0.0..=1.0).contains(&c.jitter) {
            return Err(ConfigError::new("open_jitter must be in 0..=1"));
        }
        if c.default_hold.is_zero() || c.max_hold < c.default_hold {
            return Err(ConfigError::new("need 0 < hold <= max_hold"));
        }
        if c.probes == 0 || c.max_entries == 0 {
            return Err(ConfigError::new(
                "probes and max_entries must be at least 1",
            ));
        }
        match &self.slow {
            Some(SlowCall::Fixed(d)) if d.is_zero() => {
                return Err(ConfigError::new(
                    "slow_call: a fixed threshold must be above zero",
                ));
            }
            Some(SlowCall::P50Multiple { factor, .. })
                if !(*factor >= 1.0 && factor.is_finite()) =>
            {
                return Err(ConfigError::new(
                    "slow_call: the factor must be a finite number >= 1",
                ));
            }
            _ => {}
        }
        Ok(BreakerLayer {
            shared: Arc::new(Shared {
                registry: Registry::new(self.cfg, self.seed),
                classify: self.classify,
                slow: self.slow,
                slugs: self.slugs,
            }),
        })
    }
}
