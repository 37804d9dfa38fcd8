use std::sync::Arc;
use std::time::Duration;

use llm_layers_core::LlmError;
use tower::retry::budget::TpsBudget;
use tower_layer::Layer;

use crate::policy::{HedgeDelay, HedgePolicy, SameRequest};
use crate::service::Hedge;

pub(crate) struct Shared {
    pub(crate) delay: HedgeDelay,
    pub(crate) policy: Box<dyn HedgePolicy>,
    pub(crate) budget: TpsBudget,
    pub(crate) max_attempts: u32,
}

/// Applies [`Hedge`]. Every service built from one layer (and its clones) shares one budget.
#[derive(Clone)]
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
    /// 10 % of requests plus 1 per second over 10 s.
    pub fn builder() -> HedgeLayerBuilder {
        HedgeLayerBuilder {
            delay: HedgeDelay::Fixed(Duration::from_secs(2)),
            policy: Box::new(SameRequest),
            budget: (Duration::from_secs(10), 1, 0.1),
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
pub struct HedgeLayerBuilder {
    delay: HedgeDelay,
    policy: Box<dyn HedgePolicy>,
    budget: (Duration, u32, f32),
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

    /// What a hedge sends.
    pub fn policy(mut self, p: impl HedgePolicy) -> Self {
        self.policy = Box::new(p);
        self
    }

    /// Hedges may be at most `ratio` of requests (0 to 1) plus `min_per_sec`, over a window
    /// of `ttl` (1 to 60 s). A hedge that would break the budget is not sent.
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        self.budget = (ttl, min_per_sec, ratio);
        self
    }

    /// Attempts per call, the original included (2 to 8; default 2).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<HedgeLayer, LlmError> {
        let (ttl, min_per_sec, ratio) = self.budget;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(LlmError::config(
                "hedge budget window must be 1 to 60 seconds",
            ));
        }
        if !(ratio.is_finite() && (0.0..=1.0).contains(&ratio)) {
            return Err(LlmError::config("hedge budget ratio must be in 0..=1"));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(LlmError::config("hedge budget min_per_sec is too large"));
        }
        if !(2..=8).contains(&self.max_attempts) {
            return Err(LlmError::config("hedge max_attempts must be 2 to 8"));
        }
        match &self.delay {
            HedgeDelay::Fixed(d) if d.is_zero() => {
                return Err(LlmError::config("hedge delay must be above zero"));
            }
            HedgeDelay::Quantile {
                quantile,
                min,
                max,
                cold,
                ..
            } => {
                if !(*quantile > 0.0 && *quantile < 1.0) {
                    return Err(LlmError::config("hedge quantile must be in 0..1"));
                }
                if min.is_zero() || max < min || cold.is_zero() {
                    return Err(LlmError::config(
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
                budget: TpsBudget::new(ttl, min_per_sec, ratio),
                max_attempts: self.max_attempts,
            }),
        })
    }
}
