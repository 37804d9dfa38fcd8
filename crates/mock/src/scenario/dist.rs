//! [`Dist`]: a delay distribution of the scenario, its draws and its quantiles.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::ScenarioError;
use llm_layers_core::stats::normal_quantile;

/// A delay distribution, in milliseconds before scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Always `ms`.
    Fixed {
        /// Milliseconds.
        ms: f64,
    },
    /// Uniform in `[min_ms, max_ms]`.
    Uniform {
        /// Lower bound.
        min_ms: f64,
        /// Upper bound.
        max_ms: f64,
    },
    /// Lognormal with the given median and 99th percentile, capped.
    Lognormal {
        /// Median.
        p50_ms: f64,
        /// 99th percentile.
        p99_ms: f64,
        /// No draw above this.
        #[serde(default = "default_cap")]
        cap_ms: f64,
    },
}

fn default_cap() -> f64 {
    120_000.0
}

/// The z-score of the 99th percentile of a standard normal.
const Z99: f64 = 2.326_347_874;

impl Dist {
    /// Draws one delay in milliseconds (before scaling).
    pub fn sample_ms<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match *self {
            Dist::Fixed { ms } => ms,
            Dist::Uniform { min_ms, max_ms } => {
                if max_ms > min_ms {
                    rng.random_range(min_ms..=max_ms)
                } else {
                    min_ms
                }
            }
            Dist::Lognormal {
                p50_ms,
                p99_ms,
                cap_ms,
            } => {
                let mu = p50_ms.ln();
                let sigma = (p99_ms.ln() - mu) / Z99;
                let z: f64 = StandardNormal.sample(rng);
                (mu + sigma * z).exp().min(cap_ms)
            }
        }
    }

    /// The `q` quantile in milliseconds (before time scaling).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let q = q.clamp(0.0, 1.0);
        match *self {
            Dist::Fixed { ms } => ms,
            Dist::Uniform { min_ms, max_ms } => min_ms + q * (max_ms - min_ms).max(0.0),
            Dist::Lognormal {
                p50_ms,
                p99_ms,
                cap_ms,
            } => {
                let sigma = (p99_ms.ln() - p50_ms.ln()) / Z99;
                let z = normal_quantile(q);
                (p50_ms.ln() + sigma * z).exp().min(cap_ms)
            }
        }
    }

    pub(super) fn validate(&self, field: &str) -> Result<(), ScenarioError> {
        let bad = |f: &str, m: &str| Err(ScenarioError::new(format!("{field}.{f}"), m));
        let pos = |x: f64| x > 0.0 && x.is_finite();
        let non_neg = |x: f64| x >= 0.0 && x.is_finite();
        match *self {
            Dist::Fixed { ms } if !non_neg(ms) => bad("ms", "must be >= 0"),
            Dist::Uniform { min_ms, max_ms } if !non_neg(min_ms) || !non_neg(max_ms - min_ms) => {
                bad("max_ms", "need 0 <= min_ms <= max_ms")
            }
            Dist::Lognormal { p50_ms, .. } if !pos(p50_ms) => bad("p50_ms", "must be > 0"),
            Dist::Lognormal { p50_ms, p99_ms, .. } if !non_neg(p99_ms - p50_ms) => {
                bad("p99_ms", "must be >= p50_ms")
            }
            Dist::Lognormal { cap_ms, .. } if !pos(cap_ms) => bad("cap_ms", "must be > 0"),
            _ => Ok(()),
        }
    }
}
