//! Backoff between attempts, as its own trait, with an injectable RNG.

use llm_layers_core::ConfigError;
use std::time::Duration;

use rand::{Rng, RngCore};

/// How long to wait before retry number `retry` (1 for the first retry).
pub trait Backoff: Send + Sync + 'static {
    /// The wait before retry `retry`, given the previous wait (zero before the first).
    fn delay(&self, retry: u32, previous: Duration, rng: &mut dyn RngCore) -> Duration;
}

/// Exponential backoff with **full jitter** (a uniform draw in `[0, min(cap, base ·
/// factor^(retry-1))]`), as AWS's "Exponential Backoff And Jitter" recommends: it spreads
/// retries of many clients the most. `without_jitter` gives the plain exponential.
///
/// ```
/// use std::time::Duration;
/// use llm_layers_retry::ExponentialBackoff;
/// let b = ExponentialBackoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(10))?;
/// assert!(ExponentialBackoff::new(Duration::ZERO, 2.0, Duration::from_secs(1)).is_err());
/// # let _ = b;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct ExponentialBackoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: bool,
}

impl ExponentialBackoff {
    /// Validates: `base` above zero, `factor` at least 1 and finite, `cap` at least `base`.
    pub fn new(base: Duration, factor: f64, cap: Duration) -> Result<Self, ConfigError> {
        if base.is_zero() {
            return Err(ConfigError::new("backoff base must be above zero"));
        }
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(ConfigError::new(
                "backoff factor must be a finite number >= 1",
            ));
        }
        if cap < base {
            return Err(ConfigError::new("backoff cap must be at least the base"));
        }
        Ok(ExponentialBackoff {
            base,
            factor,
            cap,
            jitter: true,
        })
    }

    /// No jitter: exactly `min(cap, base · factor^(retry-1))`.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The upper bound of the draw before retry `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = self.factor.powi(retry.saturating_sub(1).min(1024) as i32);
        let secs = (self.base.as_secs_f64() * exp).min(self.cap.as_secs_f64());
        Duration::from_secs_f64(secs)
    }
}

impl Default for ExponentialBackoff {
    /// 250 ms doubling up to 10 s, full jitter.
    fn default() -> Self {
        ExponentialBackoff {
            base: Duration::from_millis(250),
            factor: 2.0,
            cap: Duration::from_secs(10),
            jitter: true,
        }
    }
}

impl Backoff for ExponentialBackoff {
    fn delay(&self, retry: u32, _previous: Duration, rng: &mut dyn RngCore) -> Duration {
        let ceiling = self.ceiling(retry);
        if !self.jitter {
            return ceiling;
        }
        Duration::from_secs_f64(rng.random_range(0.0..=ceiling.as_secs_f64()))
    }
}

/// "Decorrelated jitter": each wait is a uniform draw in `[base, 3 · previous]`, capped.
#[derive(Debug, Clone, Copy)]
pub struct DecorrelatedJitter {
    base: Duration,
    cap: Duration,
}

impl DecorrelatedJitter {
    /// Validates: `base` above zero, `cap` at least `base`.
    pub fn new(base: Duration, cap: Duration) -> Result<Self, ConfigError> {
        if base.is_zero() || cap < base {
            return Err(ConfigError::new("need 0 < base <= cap"));
        }
        Ok(DecorrelatedJitter { base, cap })
    }
}

impl Backoff for DecorrelatedJitter {
    fn delay(&self, _retry: u32, previous: Duration, rng: &mut dyn RngCore) -> Duration {
        let lo = self.base.as_secs_f64();
        let hi = (previous.as_secs_f64() * 3.0).max(lo);
        Duration::from_secs_f64(rng.random_range(lo..=hi).min(self.cap.as_secs_f64()))
    }
}
