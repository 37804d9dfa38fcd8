//! One key's measurements: two half-window sketches and what is computed from them.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::stats::{Prior, Stats};

pub(super) const TTFT_UNIT_US: f64 = 100.0; // 0.1 ms resolution
pub(super) const TTFT_MAX: u64 = 6_000_000; // 600 s in 0.1 ms
pub(super) const TPS_MAX: u64 = 10_000_000; // 100,000 tokens/s in 0.01 tok/s

fn hist(max: u64) -> Histogram<u32> {
    Histogram::new_with_bounds(1, max, 2).unwrap_or_else(|_| unreachable!("valid bounds"))
}

pub(super) struct Half {
    pub(super) ttft: Histogram<u32>,
    pub(super) tps: Histogram<u32>,
    pub(super) gap: Histogram<u32>,
    /// How long censored attempts ran (lower bounds of their TTFT).
    pub(super) cens: Histogram<u32>,
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) timeouts: u64,
    pub(super) censored: u64,
}

impl Half {
    pub(super) fn new() -> Half {
        Half {
            ttft: hist(TTFT_MAX),
            tps: hist(TPS_MAX),
            gap: hist(TTFT_MAX),
            cens: hist(TTFT_MAX),
            ok: 0,
            errors: 0,
            timeouts: 0,
            censored: 0,
        }
    }

    pub(super) fn reset(&mut self) {
        self.ttft.reset();
        self.tps.reset();
        self.gap.reset();
        self.cens.reset();
        self.ok = 0;
        self.errors = 0;
        self.timeouts = 0;
        self.censored = 0;
    }

    pub(super) fn counts(&self) -> [u64; 4] {
        [self.ok, self.errors, self.timeouts, self.censored]
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ttft.is_empty() && self.gap.is_empty() && self.ok + self.errors + self.censored == 0
    }
}

pub(super) struct Windows {
    pub(super) current: Half,
    pub(super) previous: Half,
    pub(super) rotated_at: Instant,
    /// A published first guess, blended into the TTFT quantiles.
    pub(super) prior: Option<Prior>,
    /// What other replicas measured (merged summaries), read with ours until then.
    pub(super) fleet: Option<(Box<Half>, Instant)>,
}

impl Windows {
    /// The halves read: ours, and the fleet's while it is fresh.
    fn halves(&self) -> impl Iterator<Item = &Half> {
        let fleet = self
            .fleet
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(h, _)| &**h);
        [&self.previous, &self.current].into_iter().chain(fleet)
    }
}

/// The median TTFT of the window counting given-up attempts at the time they ran (lower
/// bounds: a provider whose slow attempts keep losing races is not judged by its fast ones
/// alone), and how many samples of ours it rests on (committed ones).
pub(super) fn median_with_given_up(w: &Windows) -> (Duration, u64) {
    let mut all = w.previous.ttft.clone();
    let _ = all.add(&w.previous.cens);
    let mut committed = w.previous.ttft.len();
    for h in w.halves().skip(1) {
        let _ = all.add(&h.ttft);
        let _ = all.add(&h.cens);
        committed += h.ttft.len();
    }
    let median = if all.is_empty() {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(all.value_at_quantile(0.5) as f64 * TTFT_UNIT_US / 1e6)
    };
    (median, committed)
}

pub(super) fn compute_with(w: &Windows, prior: Option<Prior>, prior_weight: f64) -> Stats {
    let mut ttft = w.previous.ttft.clone();
    let mut tps = w.previous.tps.clone();
    let mut gap = w.previous.gap.clone();
    let mut cens = w.previous.cens.clone();
    let [mut ok, mut errors, mut timeouts, mut censored] = w.previous.counts();
    for h in w.halves().skip(1) {
        let _ = ttft.add(&h.ttft);
        let _ = tps.add(&h.tps);
        let _ = gap.add(&h.gap);
        let _ = cens.add(&h.cens);
        let [a, b, c, d] = h.counts();
        (ok, errors, timeouts, censored) = (ok + a, errors + b, timeouts + c, censored + d);
    }
    let calls = ok + errors;
    let q = |h: &Histogram<u32>, q: f64| {
        if h.is_empty() {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(h.value_at_quantile(q) as f64 * TTFT_UNIT_US / 1e6)
        }
    };
    // A prior worth `k` calls against `n` samples and `c` censored attempts: a weighted
    // geometric mean per point. A censored attempt counts against the prior as a sample
    // does (it is evidence of ours), and with no sample at all the median time censored
    // attempts ran stands for the measurement: a lower bound, which is what a prior
    // claiming a provider fast must answer to when its attempts keep losing races.
    let n = ttft.len() as f64;
    let c = cens.len() as f64;
    let share = prior.map_or(0.0, |_| prior_weight / (prior_weight + n + c));
    let floor = (n == 0.0 && c > 0.0).then(|| q(&cens, 0.5));
    let blend = |measured: Duration, published: Option<Duration>| match published {
        Some(p) if n == 0.0 && c == 0.0 => p,
        Some(p) if n == 0.0 => {
            let m = floor.unwrap_or(p).max(p).as_secs_f64().max(1e-6);
            let p = p.as_secs_f64().max(1e-6);
            Duration::from_secs_f64((share * p.ln() + (1.0 - share) * m.ln()).exp())
        }
        Some(p) => {
            let (m, p) = (measured.as_secs_f64().max(1e-6), p.as_secs_f64().max(1e-6));
            Duration::from_secs_f64((share * p.ln() + (1.0 - share) * m.ln()).exp())
        }
        None => measured,
    };
    let pr = prior;
    Stats {
        calls,
        ttft_samples: ttft.len(),
        ttft_p50: blend(q(&ttft, 0.5), pr.map(|p| p.ttft_p50)),
        ttft_p90: blend(q(&ttft, 0.9), pr.map(|p| p.ttft_p90)),
        ttft_p95: blend(q(&ttft, 0.95), pr.map(|p| p.ttft_p95())),
        ttft_p99: blend(q(&ttft, 0.99), pr.map(|p| p.ttft_p99)),
        prior_weight: share,
        tokens_per_sec_p50: if tps.is_empty() {
            0.0
        } else {
            tps.value_at_quantile(0.5) as f64 / 100.0
        },
        error_rate: if calls == 0 {
            0.0
        } else {
            errors as f64 / calls as f64
        },
        timeout_rate: if calls == 0 {
            0.0
        } else {
            timeouts as f64 / calls as f64
        },
        max_gap_p99: q(&gap, 0.99),
        gap_samples: gap.len(),
        censored,
        censored_p50: q(&cens, 0.5),
    }
}
