//! The budget a retry or hedge layer spends from: tower's
//! [`tower::retry::budget::Budget`] trait, built from named parameters or given
//! whole (to share one budget between layers).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::ConfigError;

/// The parameters of a [`TpsBudget`]: extra calls may be at most `ratio` of requests plus
/// `min_per_sec`, counted over `ttl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TpsParams {
    /// The window counted over (1 to 60 s).
    pub ttl: Duration,
    /// Extra calls allowed per second whatever the traffic.
    pub min_per_sec: u32,
    /// Extra calls per request.
    pub ratio: f32,
}

impl TpsParams {
    /// Over a 10 s window.
    pub fn new(min_per_sec: u32, ratio: f32) -> TpsParams {
        TpsParams {
            ttl: Duration::from_secs(10),
            min_per_sec,
            ratio,
        }
    }
}

/// The budget a builder will build: from parameters (checked at `build`), unless a budget
/// was given whole, which wins.
#[derive(Clone)]
pub struct BudgetChoice {
    /// The parameters of the budget built when none is given.
    pub params: TpsParams,
    /// A budget given whole, possibly shared.
    pub given: Option<Arc<dyn Budget + Send + Sync>>,
}

impl fmt::Debug for BudgetChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.given {
            Some(_) => f.write_str("BudgetChoice::Given"),
            None => self.params.fmt(f),
        }
    }
}

impl BudgetChoice {
    /// A budget from these parameters.
    pub fn new(params: TpsParams) -> BudgetChoice {
        BudgetChoice {
            params,
            given: None,
        }
    }

    /// The budget: the given one, or one from the parameters, checked. `what` names the
    /// layer in the error, `max_ratio` bounds the ratio.
    ///
    /// # Errors
    ///
    /// A window outside 1 to 60 s, a ratio outside `0..=max_ratio`, or a floor that
    /// [`TpsBudget`] cannot represent (it would panic).
    pub fn build(
        self,
        what: &str,
        max_ratio: f32,
    ) -> Result<Arc<dyn Budget + Send + Sync>, ConfigError> {
        if let Some(b) = self.given {
            return Ok(b);
        }
        let p = self.params;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&p.ttl) {
            return Err(ConfigError::new(format!(
                "{what} budget window must be 1 to 60 seconds"
            )));
        }
        if !(p.ratio.is_finite() && (0.0..=max_ratio).contains(&p.ratio)) {
            return Err(ConfigError::new(format!(
                "{what} budget ratio must be in 0..={max_ratio}"
            )));
        }
        if p.min_per_sec >= i32::MAX as u32 {
            return Err(ConfigError::new(format!(
                "{what} budget floor per second is too large"
            )));
        }
        Ok(Arc::new(TpsBudget::new(p.ttl, p.min_per_sec, p.ratio)))
    }
}
