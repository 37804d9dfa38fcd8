use llm_layers_core::ConfigError;
use std::sync::Arc;
use std::time::Duration;

use llm_layers_core::budget::{BudgetChoice, TpsParams};
use tower::retry::budget::Budget;
use tower_layer::Layer;

use crate::policy::{FollowPlan, HedgeDelay, HedgePolicy};
use crate::service::Hedge;

pub(crate) struct Shared {
    pub(crate) delay: HedgeDelay,
    pub(crate) policy: Box<dyn HedgePolicy>,
    pub(crate) budget: Arc<dyn Budget + Send + Sync>,
    pub(crate) max_attempts: u32,
}

/// Applies [`Hedge`]. Every service built from one layer (and its clones) shares one budget.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct HedgeLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HedgeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("delay", &self.shared.delay)
            .field("max_attempts", &self.shared.max_attempts)
            .finish_non_exhaustive()
    }
}

impl HedgeLayer {
    /// A builder: fixed 2 s delay, the same request, 2 attempts at most, hedges at most
    /// 10 % of requests over 10 s (or 10 in the window when that is more).
    pub fn builder() -> HedgeLayerBuilder {
        HedgeLayerBuilder {
            delay: HedgeDelay::Fixed(Duration::from_secs(2)),
            policy: Box::new(FollowPlan),
            budget: BudgetChoice::new(TpsParams::new(1, 0.1)),
            max_attempts: 2,
        }
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Hedge<S> {
        Hedge::new(inner, self.shared.clone())
    }
}

/// Builds a [`HedgeLayer`], validating every value.
#[must_use = "a builder does nothing until `build` is called"]
pub struct HedgeLayerBuilder {
    delay: HedgeDelay,
    policy: Box<dyn HedgePolicy>,
    budget: BudgetChoice,
    max_attempts: u32,
}

impl std::fmt::Debug for HedgeLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayerBuilder")
            .field("delay", &self.delay)
            .field("budget", &self.budget)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl HedgeLayerBuilder {
    /// When to hedge.
    pub fn delay(mut self, d: HedgeDelay) -> Self {
        self.delay = d;
        self
    }

    /// What a hedge sends (default [`FollowPlan`](crate::FollowPlan)).
    pub fn policy(mut self, p: impl HedgePolicy) -> Self {
        self.policy = Box::new(p);
        self
    }

    /// Hedges may be at most `ratio` of requests (0 to 1; default 0.1), a hard cap over the
    /// window ([`ShareBudget`](llm_layers_core::budget::ShareBudget)), or
    /// [`budget_floor`](Self::budget_floor) per second when that is more. A hedge that would
    /// break the budget is not sent.
    pub fn budget_ratio(mut self, ratio: f32) -> Self {
        self.budget.params.ratio = ratio;
        self
    }

    /// Hedges allowed per second however few the requests (default 1): the cap is this or
    /// the ratio, whichever is more, never their sum.
    pub fn budget_floor(mut self, per_sec: u32) -> Self {
        self.budget.params.min_per_sec = per_sec;
        self
    }

    /// The window the budget counts over (1 to 60 s; default 10 s).
    pub fn budget_window(mut self, ttl: Duration) -> Self {
        self.budget.params.ttl = ttl;
        self
    }

    /// A budget of your own, or one shared with a retry layer (one allowance for every
    /// extra attempt, hedge or retry). Replaces the ratio, floor and window above.
    pub fn budget(mut self, budget: Arc<dyn Budget + Send + Sync>) -> Self {
        self.budget.given = Some(budget);
        self
    }

    /// Attempts per call, the original included (2 to 8; default 2).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: a budget out of range (window 1 to 60 s, ratio 0 to 1), `max_attempts` outside 2 to 8, or a zero or inverted delay.
    pub fn build(self) -> Result<HedgeLayer, ConfigError> {
        let budget = self.budget.build_capped("hedge", 1.0)?;
        if !(2..=8).contains(&self.max_attempts) {
            return Err(ConfigError::new("hedge max_attempts must be 2 to 8"));
        }
        match &self.delay {
            HedgeDelay::Fixed(d) if d.is_zero() => {
                return Err(ConfigError::new("hedge delay must be above zero"));
            }
            HedgeDelay::Quantile {
                quantile,
                min,
                max,
                cold,
                ..
            } => {
                if !(*quantile > 0.0 && *quantile < 1.0) {
                    return Err(ConfigError::new("hedge quantile must be in 0..1"));
                }
                if min.is_zero() || max < min || cold.is_zero() {
                    return Err(ConfigError::new(
                        "hedge delays need 0 < min <= max and cold > 0",
                    ));
                }
            }
            HedgeDelay::Fixed(_) => {}
        }
        Ok(HedgeLayer {
            shared: Arc::new(Shared {
                delay: self.delay,
                policy: self.policy,
                budget,
                max_attempts: self.max_attempts,
            }),
        })
    }
}
