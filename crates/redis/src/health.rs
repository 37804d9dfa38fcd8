//! The breaker on the store itself: one failure (an error, or no answer within the per-call
//! budget) and every layer answers from local state at once; one probe per `retry` interval
//! finds it back. Each transition is logged once and shown in `llm_store_healthy`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Health {
    healthy: AtomicBool,
    /// When the next probe may go, in ms after `epoch`, while unhealthy.
    next_probe: AtomicU64,
    epoch: Instant,
    retry: Duration,
}

impl Health {
    pub(crate) fn new(retry: Duration) -> Health {
        metrics::gauge!("llm_store_healthy").set(1.0);
        Health {
            healthy: AtomicBool::new(true),
            next_probe: AtomicU64::new(0),
            epoch: Instant::now(),
            retry,
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to the store now: always while healthy; while not, one caller
    /// per retry interval (the probe).
    pub(crate) fn allow(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.ms(Instant::now());
        let next = self.next_probe.load(Ordering::Relaxed);
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now + self.retry_ms(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Whether a call would be let through now (healthy, or a probe is due), without
    /// taking the probe.
    pub(crate) fn probe_due(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            || self.ms(Instant::now()) >= self.next_probe.load(Ordering::Relaxed)
    }

    fn retry_ms(&self) -> u64 {
        u64::try_from(self.retry.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the store is up (as far as the last call knows).
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn ok(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("shared store reachable again: shared state resumes");
            metrics::gauge!("llm_store_healthy").set(1.0);
        }
    }

    pub(crate) fn failed(&self, why: &dyn std::fmt::Display) {
        let next = self.ms(Instant::now()) + self.retry_ms();
        self.next_probe.fetch_max(next, Ordering::AcqRel);
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = %why,
                "shared store unreachable: every layer falls back to local state"
            );
            metrics::gauge!("llm_store_healthy").set(0.0);
        }
    }
}
