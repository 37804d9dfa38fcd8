//! How far the published priors are from what this store measures, across every
//! (model, provider) that has both: a unit scale and a trust.
//!
//! A prior is a hypothesis. Per pair with a prior and enough samples of ours, the error is
//! `ln(measured p50 / published p50)`. The **scale** is the unit the upstream publishes in,
//! as far as the errors tell: ×1 (seconds, as documented by the TypeScript example),
//! ×1/1000 (milliseconds, as the Go and Python SDK docs say), or ×1000, whichever the
//! median error is nearest (within ×10 of it); the rest of the error is the priors' own.
//! The **trust** is `1 / (1 + (rms / 0.5)²)` of those rest errors: priors within about
//! ×1.3 of what we measure keep about 80 % of their weight, priors off by ×4 about 10 %,
//! so a wrong prior stops steering calls after a provider or two were measured. With
//! nothing measured yet, the priors are taken at their word (trust 1, scale 1).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use llm_layers_core::hash::HashMap;
use llm_layers_core::sync::lock;

/// Errors kept at most (pairs); past it the oldest state is dropped and rebuilt.
const MAX_PAIRS: usize = 1024;
/// The rms error (natural log) at which a prior keeps half its weight.
const HALF_TRUST_ERROR: f64 = 0.5;
/// ln(1000): a milliseconds-for-seconds mistake.
const LN_1000: f64 = 3.0 * std::f64::consts::LN_10;
/// How close (natural log) the median error must be to a unit's to be read as it: ×10.
const UNIT_MARGIN: f64 = std::f64::consts::LN_10;

pub(super) struct Calibration {
    errors: Mutex<HashMap<Arc<str>, f64>>,
    /// ln of the factor published values are multiplied by (f64 bits).
    scale_log: AtomicU64,
    /// The share of its weight a prior keeps (f64 bits).
    trust: AtomicU64,
}

impl Calibration {
    pub(super) fn new() -> Calibration {
        Calibration {
            errors: Mutex::new(HashMap::default()),
            scale_log: AtomicU64::new(0f64.to_bits()),
            trust: AtomicU64::new(1f64.to_bits()),
        }
    }

    /// The factor published values are multiplied by.
    pub(super) fn scale(&self) -> f64 {
        f64::from_bits(self.scale_log.load(Ordering::Relaxed)).exp()
    }

    /// The share of its weight a prior keeps.
    pub(super) fn trust(&self) -> f64 {
        f64::from_bits(self.trust.load(Ordering::Relaxed))
    }

    /// The error of the pair `key` (`ln(measured p50 / published p50)`, unscaled), or
    /// `None` when it has no prior or too few samples to say.
    pub(super) fn observe(&self, key: &str, error: Option<f64>) {
        let mut errors = lock(&self.errors);
        let changed = match error.filter(|e| e.is_finite()) {
            Some(e) => {
                if errors.len() >= MAX_PAIRS && !errors.contains_key(key) {
                    errors.clear();
                }
                errors.insert(Arc::from(key), e) != Some(e)
            }
            None => errors.remove(key).is_some(),
        };
        if !changed {
            return;
        }
        let (scale_log, trust) = derive(errors.values().copied().collect());
        drop(errors);
        self.scale_log.store(scale_log.to_bits(), Ordering::Relaxed);
        self.trust.store(trust.to_bits(), Ordering::Relaxed);
    }
}

/// (ln scale, trust) from the pairs' errors.
fn derive(mut errors: Vec<f64>) -> (f64, f64) {
    if errors.is_empty() {
        return (0.0, 1.0);
    }
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    // The unit error: published values times exp(unit) are what we measure.
    let unit = [-LN_1000, 0.0, LN_1000]
        .into_iter()
        .find(|u| (median - u).abs() < UNIT_MARGIN)
        .unwrap_or(0.0);
    let ms = errors.iter().map(|e| (e - unit) * (e - unit)).sum::<f64>() / errors.len() as f64;
    (unit, trust_of(ms))
}

/// The share of its weight a prior keeps when its squared log error is `ms`.
pub(super) fn trust_of(ms: f64) -> f64 {
    1.0 / (1.0 + ms / (HALF_TRUST_ERROR * HALF_TRUST_ERROR))
}

#[cfg(test)]
mod tests {
    use super::derive;

    #[test]
    fn units_and_trust_from_the_errors() {
        let (s, t) = derive(vec![0.1, -0.05, 0.2]);
        assert_eq!(s, 0.0);
        assert!(t > 0.85, "{t}");
        // Published in milliseconds, read as seconds: 1000× too slow.
        let ms = 1000f64.ln();
        let (s, t) = derive(vec![-ms + 0.1, -ms - 0.1]);
        assert!(
            (s.exp() - 0.001).abs() < 1e-9,
            "published ×1/1000: {}",
            s.exp()
        );
        assert!(t > 0.9, "{t}");
        // Fastest and slowest swapped: errors of ±1.5.
        let (s, t) = derive(vec![1.5, 0.0, -1.5]);
        assert_eq!(s, 0.0);
        assert!(t < 0.25, "{t}");
        assert_eq!(derive(Vec::new()), (0.0, 1.0));
    }
}
