//! The breaker of one (model, provider), and of one model's providers: its state, its recent
//! outcomes, its holds.

use std::collections::VecDeque;
use std::sync::Arc;

use llm_layers_core::hash::HashMap;
use tokio::time::Instant;

use super::State;

pub(super) struct Entry {
    pub(super) state: State,
    pub(super) recent: VecDeque<bool>,
    pub(super) failures: usize,
    pub(super) consecutive: u32,
    pub(super) trips: u32,
    pub(super) probes_in_flight: u32,
    /// Counts half-open periods, so a probe from an earlier one cannot give back a slot of
    /// the current one.
    pub(super) period: u32,
    pub(super) last_used: Instant,
    pub(super) held_until: Option<Instant>,
    /// Started half-open on published evidence ([`Registry::suspect`]) and not called
    /// since: no evidence of ours.
    pub(super) suspected: bool,
    /// Opened by another replica's trip ([`Registry::apply`]) and not called here since:
    /// like a suspicion, it never makes a call fail fast on its own (this replica may not
    /// know the providers the other one saw answer).
    pub(super) remote: bool,
    /// Hold episodes in a row with no success in between: each one after the first holds
    /// twice as long (capped), so a provider that throttles whatever we do costs a request
    /// per hold, not one per call.
    pub(super) streak: u32,
    /// The share of recent outcomes that were successes (an average of the last ten or so;
    /// a throttle counts as none): whether its holds are worth waiting for or probing
    /// (independent throttling: the next request succeeds as usual), or not (saturated or
    /// dead: everything throttles until the hold ends, and after).
    pub(super) ok_share: f64,
    /// Calls let through to it while it is held (probes of a hold), in flight.
    pub(super) hold_probes: u32,
}

/// How much one outcome moves `ok_share`.
pub(super) const OK_SHARE_WEIGHT: f64 = 0.1;
/// From this share of successes, a hold is worth probing (and waiting for).
pub(super) const PROBE_SHARE: f64 = 0.2;
/// Calls in flight to a held provider at most, when it is worth probing.
pub(super) const HOLD_PROBES: u32 = 4;

impl Entry {
    pub(super) fn new(now: Instant) -> Entry {
        Entry {
            state: State::Closed,
            recent: VecDeque::new(),
            failures: 0,
            consecutive: 0,
            trips: 0,
            probes_in_flight: 0,
            period: 0,
            last_used: now,
            held_until: None,
            suspected: false,
            remote: false,
            streak: 0,
            ok_share: 1.0,
            hold_probes: 0,
        }
    }

    /// Whether its holds are worth probing and waiting for.
    pub(super) fn worth_probing(&self) -> bool {
        self.ok_share >= PROBE_SHARE
    }

    /// When this entry's hold ends, if it is held now.
    pub(super) fn held(&mut self, now: Instant) -> Option<Instant> {
        match self.held_until {
            Some(h) if h > now => Some(h),
            Some(_) => {
                self.held_until = None;
                None
            }
            None => None,
        }
    }

    /// Moves an expired open state to half-open.
    pub(super) fn refresh(&mut self, now: Instant) {
        if let State::Open { until } = self.state {
            if now >= until {
                self.state = State::HalfOpen;
                self.probes_in_flight = 0;
                self.period = self.period.wrapping_add(1);
            }
        }
    }
}

#[derive(Default)]
pub(super) struct ModelEntry {
    pub(super) model: Option<Entry>,
    pub(super) providers: HashMap<Arc<str>, Entry>,
    /// Calls admitted and not yet resolved (committed or failed): their provider is not
    /// known yet, and they may all still succeed.
    pub(super) in_flight: usize,
}

impl ModelEntry {
    /// The breaker of `provider` (`None`: the model as a whole), created closed if new.
    pub(super) fn entry(&mut self, provider: Option<&str>, now: Instant) -> &mut Entry {
        match provider {
            None => self.model.get_or_insert_with(|| Entry::new(now)),
            Some(p) => self
                .providers
                .entry(Arc::from(p))
                .or_insert_with(|| Entry::new(now)),
        }
    }
}

/// Whether `(model, provider)` has a breaker (`None`: the model as a whole).
pub(super) fn has(
    map: &HashMap<Arc<str>, ModelEntry>,
    model: &str,
    provider: Option<&str>,
) -> bool {
    map.get(model).is_some_and(|m| match provider {
        None => m.model.is_some(),
        Some(p) => m.providers.contains_key(p),
    })
}
