//! Trials: first attempts in flight to providers the router takes on trust, so that the
//! calls arriving while a hypothesis is tested are not all sent its way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// First attempts in flight to providers taken on trust (their rank rests on a published
/// prior, or on our own samples that do not yet test it), per (model, slug), with when each
/// started. At most [`MAX_TRIALS`] at once each, so the calls that arrive while a
/// hypothesis is being tested are not all sent its way; and in-flight evidence counts at
/// once: when [`OVERDUE`] of them are still silent past the provider's believed p90 (which a
/// true belief makes one attempt in ten), it takes no more first attempts until samples of
/// ours test it.
#[derive(Debug, Default)]
pub(super) struct Trials(std::sync::Mutex<llm_layers_core::hash::HashMap<Arc<str>, Arc<TrialSet>>>);

/// The start times of one pair's trials in flight, by id.
#[derive(Debug, Default)]
pub(super) struct TrialSet {
    started: std::sync::Mutex<Vec<(u64, Instant)>>,
    next: AtomicU64,
}

/// First attempts in flight to one untested provider at most.
pub(super) const MAX_TRIALS: usize = 4;
/// Trials silent past the believed p90 that discredit an untested provider for now.
pub(super) const OVERDUE: usize = 2;
/// Pairs tracked at most; past it, the idle ones are dropped.
const MAX_TRIAL_KEYS: usize = 4096;

impl Trials {
    pub(super) fn set(&self, model: &str, slug: &str, create: bool) -> Option<Arc<TrialSet>> {
        let key = format!("{model}\u{0}{slug}");
        let mut map = llm_layers_core::sync::lock(&self.0);
        if let Some(c) = map.get(key.as_str()) {
            return Some(c.clone());
        }
        if !create {
            return None;
        }
        if map.len() >= MAX_TRIAL_KEYS {
            map.retain(|_, c| !llm_layers_core::sync::lock(&c.started).is_empty());
        }
        Some(map.entry(Arc::from(key)).or_default().clone())
    }

    /// (in flight, of which silent since before `now - p90`, how long they have run:
    /// median).
    pub(super) fn state(&self, model: &str, slug: &str, p90: Duration, now: Instant) -> TrialState {
        self.set(model, slug, false)
            .map_or_else(TrialState::default, |set| {
                let started = llm_layers_core::sync::lock(&set.started);
                let mut ran: Vec<Duration> = started
                    .iter()
                    .map(|(_, at)| now.saturating_duration_since(*at))
                    .collect();
                drop(started);
                ran.sort_unstable();
                TrialState {
                    in_flight: ran.len(),
                    overdue: ran.iter().filter(|r| **r > p90).count(),
                    ran: ran.get(ran.len() / 2).copied().unwrap_or_default(),
                }
            })
    }

    pub(super) fn start(&self, model: &str, slug: &str, now: Instant) -> Option<Trial> {
        let set = self.set(model, slug, true)?;
        let id = set.next.fetch_add(1, Ordering::Relaxed);
        llm_layers_core::sync::lock(&set.started).push((id, now));
        Some(Trial { set, id })
    }
}

/// Where one pair's trials stand now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TrialState {
    pub(super) overdue: usize,
    pub(super) in_flight: usize,
    /// How long they have run, median.
    pub(super) ran: Duration,
}

/// A first attempt in flight to an untested provider: counted until dropped (the router's
/// future drops it when the call commits or fails).
#[derive(Debug)]
pub(crate) struct Trial {
    set: Arc<TrialSet>,
    id: u64,
}

impl Drop for Trial {
    fn drop(&mut self) {
        llm_layers_core::sync::lock(&self.set.started).retain(|(id, _)| *id != self.id);
    }
}
