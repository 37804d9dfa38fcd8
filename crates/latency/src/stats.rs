//! What the store says about a key ([`Stats`]) and how a call ended ([`Outcome`]).

use std::time::Duration;

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
}

impl Stats {
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
