use llm_layers_core::ConfigError;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tower::retry::budget::Budget;
use tower_layer::Layer;

use llm_layers_core::budget::{BudgetChoice, TpsParams};

use crate::backoff::{Backoff, ExponentialBackoff};
use crate::policy::{DefaultPolicy, Policy};
use crate::service::Retry;

pub(crate) struct Shared {
    /// Throttle waits, per model.
    pub(crate) waits: crate::waits::ThrottleWaits,
    pub(crate) policy: Box<dyn Policy>,
    pub(crate) backoff: Box<dyn Backoff>,
    pub(crate) budget: Arc<dyn Budget + Send + Sync>,
    pub(crate) max_retry_after: Duration,
    pub(crate) seed: u64,
    pub(crate) calls: AtomicU64,
}

/// Applies [`Retry`]. Every service built from one layer (and from its clones) shares one
/// policy, one backoff and **one retry budget**.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("max_retry_after", &self.shared.max_retry_after)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// A builder with the defaults: [`DefaultPolicy`] with 2 retries, full-jitter
    /// exponential backoff from 250 ms to 10 s, a budget of 20 % of requests plus 10 per
    /// second over 10 s, Retry-After honoured up to 30 s.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder::default()
    }

    /// At most `max_retries` retries per call with [`DefaultPolicy`], every other setting
    /// its default: reads like tower's layers.
    ///
    /// ```
    /// use llm_layers_retry::RetryLayer;
    /// let retry = RetryLayer::new(3);
    /// # let _ = retry;
    /// ```
    pub fn new(max_retries: u32) -> RetryLayer {
        RetryLayerBuilder::default()
            .policy(DefaultPolicy::new(max_retries))
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// The layer with every default.
    pub fn with_defaults() -> RetryLayer {
        RetryLayerBuilder::default()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.shared.clone())
    }
}

/// Builds a [`RetryLayer`], validating every value.
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryLayerBuilder {
    policy: Box<dyn Policy>,
    backoff: Box<dyn Backoff>,
    budget: BudgetChoice,
    max_retry_after: Duration,
    seed: Option<u64>,
}

impl std::fmt::Debug for RetryLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("budget", &self.budget)
            .field("max_retry_after", &self.max_retry_after)
            .finish_non_exhaustive()
    }
}

impl Default for RetryLayerBuilder {
    fn default() -> Self {
        RetryLayerBuilder {
            policy: Box::new(DefaultPolicy::new(2)),
            backoff: Box::new(ExponentialBackoff::default()),
            budget: BudgetChoice::new(TpsParams::new(10, 0.2)),
            max_retry_after: Duration::from_secs(30),
            seed: None,
        }
    }
}

impl RetryLayerBuilder {
    /// Whether to retry and what to send next.
    pub fn policy(mut self, p: impl Policy) -> Self {
        self.policy = Box::new(p);
        self
    }

    /// The wait between attempts when the error names none.
    pub fn backoff(mut self, b: impl Backoff) -> Self {
        self.backoff = Box::new(b);
        self
    }

    /// Retries may be at most `ratio` of requests (0 to 1000; default 0.2, one retry per
    /// five requests) plus [`budget_floor`](Self::budget_floor) per second. When the budget
    /// is empty the last error is returned and counted.
    pub fn budget_ratio(mut self, ratio: f32) -> Self {
        self.budget.params.ratio = ratio;
        self
    }

    /// Retries allowed per second whatever the traffic (default 10), so a quiet service
    /// can still retry.
    pub fn budget_floor(mut self, per_sec: u32) -> Self {
        self.budget.params.min_per_sec = per_sec;
        self
    }

    /// The window the budget counts over (1 to 60 s; default 10 s).
    pub fn budget_window(mut self, ttl: Duration) -> Self {
        self.budget.params.ttl = ttl;
        self
    }

    /// A budget of your own, or one shared with other layers (a hedge layer, another
    /// retry layer): every deposit and withdrawal of each goes to the one budget. Replaces
    /// the ratio, floor and window above.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use llm_layers_retry::RetryLayer;
    /// use tower::retry::budget::{Budget, TpsBudget};
    /// let shared: Arc<dyn Budget + Send + Sync> =
    ///     Arc::new(TpsBudget::new(Duration::from_secs(10), 5, 0.1));
    /// let retry = RetryLayer::builder().budget(shared.clone()).build()?;
    /// # let _ = retry;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn budget(mut self, budget: Arc<dyn Budget + Send + Sync>) -> Self {
        self.budget.given = Some(budget);
        self
    }

    /// The longest `Retry-After` honoured (default 30 s). An error asking for longer is
    /// returned rather than retried early.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// Seeds the jitter, for reproducible runs (default: from the clock).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: a budget out of range (window 1 to 60 s, ratio 0 to 1000).
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        let budget = self.budget.build("retry", 1000.0)?;
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                waits: crate::waits::ThrottleWaits::new(),
                policy: self.policy,
                backoff: self.backoff,
                budget,
                max_retry_after: self.max_retry_after,
                seed,
                calls: AtomicU64::new(0),
            }),
        })
    }
}
