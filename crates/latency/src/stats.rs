//! What the store says about a key ([`Stats`]) and how a call ended ([`Outcome`]).

use std::time::Duration;

use llm_layers_core::endpoints::EndpointStats;
use llm_layers_core::{Classify, DefaultClassify, LlmError};

/// Quantiles and rates of one key over the recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Calls that reached an outcome in the window.
    pub calls: u64,
    /// TTFT samples in the window.
    pub ttft_samples: u64,
    /// Time to first token, median.
    pub ttft_p50: Duration,
    /// Time to first token, 90th percentile.
    pub ttft_p90: Duration,
    /// Time to first token, 95th percentile.
    pub ttft_p95: Duration,
    /// Time to first token, 99th percentile.
    pub ttft_p99: Duration,
    /// Output tokens per second, median (0 when unknown).
    pub tokens_per_sec_p50: f64,
    /// Share of calls that failed (any error, timeouts included).
    pub error_rate: f64,
    /// Share of calls that timed out.
    pub timeout_rate: f64,
    /// The longest gap between two output chunks of one stream, 99th percentile over the
    /// streams that ended cleanly (zero when unknown): what a healthy stream of this key
    /// may go quiet for, the base of an adaptive idle limit.
    pub max_gap_p99: Duration,
    /// Streams whose longest gap was recorded.
    pub gap_samples: u64,
    /// Attempts given up before their first token (a hedge lost, the caller left) in the
    /// window: *censored* samples, whose TTFT is only known to exceed the time they ran;
    /// not in the quantiles.
    pub censored: u64,
    /// How long the censored attempts ran, median (zero without any): with
    /// [`censored`](Self::censored), what a reader that ranks providers can make of the
    /// attempts it gave up on (a provider whose attempts mostly lose races at 150 ms is slow
    /// past 150 ms, however fast its few winners were).
    pub censored_p50: Duration,
    /// The weight a published [`Prior`] still has in the TTFT quantiles, in `[0, 1]`: 1
    /// with no measurement, `k / (k + n)` after `n` samples with a prior worth `k` calls,
    /// 0 with no prior.
    pub prior_weight: f64,
}

impl Stats {
    /// Whether the TTFT quantiles say something: at least `min_samples` measured, or a
    /// prior blended in.
    pub fn is_known(&self, min_samples: u64) -> bool {
        self.ttft_samples >= min_samples.max(1) || self.prior_weight > 0.0
    }

    /// The TTFT quantile `q` in `[0, 1]`, read from the sketch's cached points (p50, p90,
    /// p95, p99), interpolating linearly between them; below the median it is the median
    /// (the sketch keeps no lower point, and a line from zero would invent one).
    pub fn ttft_quantile(&self, q: f64) -> Duration {
        let pts = [
            (0.0, self.ttft_p50),
            (0.5, self.ttft_p50),
            (0.9, self.ttft_p90),
            (0.95, self.ttft_p95),
            (0.99, self.ttft_p99),
            (1.0, self.ttft_p99),
        ];
        let q = q.clamp(0.0, 1.0);
        for w in pts.windows(2) {
            let ((q0, v0), (q1, v1)) = (w[0], w[1]);
            if q <= q1 {
                let t = if q1 > q0 { (q - q0) / (q1 - q0) } else { 1.0 };
                return v0 + (v1.saturating_sub(v0)).mul_f64(t);
            }
        }
        self.ttft_p99
    }
}

/// A published first guess about one (model, provider)'s time to first token, e.g. from
/// OpenRouter's endpoint stats ([`Prior::from_endpoint`]). The store blends it into the
/// quantiles as if it were worth a few calls ([`LatencyStoreBuilder::prior_weight`](crate::LatencyStoreBuilder::prior_weight)):
/// each quantile is the weighted geometric mean `exp((k·ln prior + n·ln measured) / (k + n))`,
/// so five local samples halve its say and fifty leave it under a tenth.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Prior {
    /// Median TTFT.
    pub ttft_p50: Duration,
    /// 75th percentile.
    pub ttft_p75: Duration,
    /// 90th percentile.
    pub ttft_p90: Duration,
    /// 99th percentile.
    pub ttft_p99: Duration,
    /// Uptime over the last 5 minutes, in percent, when published.
    pub uptime_5m: Option<f64>,
}

impl Prior {
    /// A prior from a median and a 99th percentile (the other points on the lognormal
    /// through them).
    pub fn lognormal(p50: Duration, p99: Duration) -> Prior {
        let p50s = p50.as_secs_f64().max(1e-6);
        let sigma = (p99.as_secs_f64().max(p50s) / p50s).ln() / Z99;
        let at = |z: f64| Duration::from_secs_f64(p50s * (sigma * z).exp());
        Prior {
            ttft_p50: p50,
            ttft_p75: at(Z75),
            ttft_p90: at(Z90),
            ttft_p99: p99.max(p50),
            uptime_5m: None,
        }
    }

    /// The prior an endpoint's published stats give: its `latency_last_30m` (seconds) and
    /// `uptime_last_5m`. `None` without a published median; missing upper points are
    /// filled in from the ones given, never below the median.
    pub fn from_endpoint(e: &EndpointStats) -> Option<Prior> {
        let l = e.latency_last_30m?;
        let secs = |x: Option<f64>| x.filter(|v| v.is_finite() && *v > 0.0);
        let p50 = secs(l.p50)?;
        let p99 = secs(l.p99)
            .or(secs(l.p90).map(|v| v * 1.8))
            .unwrap_or(p50 * 4.0)
            .max(p50);
        let mut p = Prior::lognormal(Duration::from_secs_f64(p50), Duration::from_secs_f64(p99));
        if let Some(v) = secs(l.p75) {
            p.ttft_p75 = Duration::from_secs_f64(v.clamp(p50, p99));
        }
        if let Some(v) = secs(l.p90) {
            p.ttft_p90 = Duration::from_secs_f64(v.clamp(p50, p99));
        }
        p.uptime_5m = e.uptime_last_5m.filter(|u| u.is_finite());
        Some(p)
    }

    /// Every point times `factor` (a unit correction).
    pub(crate) fn scaled(self, factor: f64) -> Prior {
        if factor == 1.0 {
            return self;
        }
        let f = |d: Duration| Duration::from_secs_f64(d.as_secs_f64() * factor);
        Prior {
            ttft_p50: f(self.ttft_p50),
            ttft_p75: f(self.ttft_p75),
            ttft_p90: f(self.ttft_p90),
            ttft_p99: f(self.ttft_p99),
            uptime_5m: self.uptime_5m,
        }
    }

    /// The 95th percentile, between the 90th and 99th on a lognormal.
    pub fn ttft_p95(&self) -> Duration {
        let (a, b) = (
            self.ttft_p90.as_secs_f64().max(1e-6),
            self.ttft_p99.as_secs_f64().max(1e-6),
        );
        let t = (Z95 - Z90) / (Z99 - Z90);
        Duration::from_secs_f64((a.ln() + t * (b.ln() - a.ln())).exp())
    }
}

const Z75: f64 = 0.674_489_750;
const Z90: f64 = 1.281_551_566;
const Z95: f64 = 1.644_853_627;
const Z99: f64 = 2.326_347_874;

/// How a call ended, for the store's rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stream ended cleanly.
    Ok,
    /// It failed with a timeout.
    Timeout,
    /// It failed, and the provider is to blame.
    Error,
    /// The caller went away: says nothing about the provider (TTFT is still recorded).
    Cancelled,
    /// An error that says nothing about the provider's health: the caller's (400, 402,
    /// 413 ...) or a throttle (429). Not counted in the rates.
    NotCounted,
    /// Given up before the first token (a hedge lost, the caller left): the TTFT given is a
    /// lower bound; counted in [`Stats::censored`], not in the quantiles or the rates.
    Censored,
}

impl Outcome {
    /// The outcome of an error, by [`DefaultClassify`]: a timeout, a provider failure, or
    /// not the provider's business.
    pub fn of(e: &LlmError) -> Outcome {
        Outcome::classified(e, &DefaultClassify)
    }

    /// The outcome of an error by your classification.
    pub fn classified(e: &LlmError, classify: &dyn Classify) -> Outcome {
        if e.is_timeout() {
            Outcome::Timeout
        } else if classify.classify(e).provider_failure {
            Outcome::Error
        } else {
            Outcome::NotCounted
        }
    }
}
