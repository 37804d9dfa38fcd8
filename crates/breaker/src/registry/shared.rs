//! What other replicas must know (a trip, a close, a hold) and what they told us.
//!
//! The registry does not talk to a shared store itself: with sharing on
//! ([`BreakerLayer::changes`](crate::BreakerLayer::changes) was called), each change of ours
//! goes to an outbox that a sharer drains and publishes, and what the sharer reads back is
//! [`applied`](crate::BreakerLayer::apply) here. Nothing on a call's path waits for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use llm_layers_core::sync::lock;
use tokio::time::Instant;

use super::{Registry, State, has, make_room};

/// The most changes kept for a sharer that does not drain them (older ones are dropped:
/// the next trip says it again).
const OUTBOX_MAX: usize = 4096;

/// A change of one breaker, to share with other replicas or learned from them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// It tripped: open for this long from now (`provider: None`: the model as a whole).
    Opened {
        /// The model.
        model: Arc<str>,
        /// The provider slug.
        provider: Option<Arc<str>>,
        /// How long it stays open from now.
        open_for: Duration,
    },
    /// A probe succeeded: closed.
    Closed {
        /// The model.
        model: Arc<str>,
        /// The provider slug.
        provider: Option<Arc<str>>,
    },
    /// A provider throttled us (a 429): held for this long from now.
    Held {
        /// The model.
        model: Arc<str>,
        /// The provider slug.
        provider: Arc<str>,
        /// How long it is held from now.
        held_for: Duration,
    },
}

impl Change {
    /// `(model, provider)` opened for `open_for` from now.
    pub fn opened(model: Arc<str>, provider: Option<Arc<str>>, open_for: Duration) -> Change {
        Change::Opened {
            model,
            provider,
            open_for,
        }
    }

    /// `(model, provider)` closed.
    pub fn closed(model: Arc<str>, provider: Option<Arc<str>>) -> Change {
        Change::Closed { model, provider }
    }

    /// `(model, provider)` held for `held_for` from now.
    pub fn held(model: Arc<str>, provider: Arc<str>, held_for: Duration) -> Change {
        Change::Held {
            model,
            provider,
            held_for,
        }
    }

    /// The model and provider it is about.
    pub fn key(&self) -> (&str, Option<&str>) {
        match self {
            Change::Opened {
                model, provider, ..
            }
            | Change::Closed { model, provider } => (model, provider.as_deref()),
            Change::Held {
                model, provider, ..
            } => (model, Some(provider)),
        }
    }
}

impl Registry {
    /// Puts a change of ours in the outbox, when a sharer reads it.
    pub(super) fn emit(&self, change: impl FnOnce() -> Change) {
        if !self.sharing.load(Ordering::Relaxed) {
            return;
        }
        let mut out = lock(&self.outbox);
        if out.len() >= OUTBOX_MAX {
            out.remove(0);
        }
        out.push(change());
    }

    /// Takes the changes made here since the last call, and keeps recording them.
    pub(crate) fn drain_changes(&self) -> Vec<Change> {
        self.sharing.store(true, Ordering::Relaxed);
        std::mem::take(&mut *lock(&self.outbox))
    }

    /// Applies a change another replica made. An open or a hold only ever lengthens what is
    /// here; a close ends an open or half-open state (a probe elsewhere succeeded). Nothing
    /// applied goes back to the outbox.
    pub(crate) fn apply(&self, change: &Change, now: Instant) {
        let (model, provider) = change.key();
        let mut guard = lock(&self.map);
        let (map, count) = &mut *guard;
        if !has(map, model, provider) {
            if matches!(change, Change::Closed { .. }) {
                return;
            }
            if !make_room(map, count, now, &self.cfg) {
                return;
            }
            *count += 1;
        }
        let e = map
            .entry(Arc::from(model))
            .or_default()
            .entry(provider, now);
        e.refresh(now);
        let before = e.state;
        match change {
            Change::Opened { open_for, .. } => {
                let until = now + *open_for;
                match e.state {
                    State::Open { until: mine } if mine >= until => {}
                    // Our own probe is out: its result decides, not an older trip.
                    State::HalfOpen if e.probes_in_flight > 0 => {}
                    _ => {
                        e.state = State::Open { until };
                        e.suspected = false;
                        e.remote = true;
                    }
                }
            }
            Change::Closed { .. } => {
                if e.state != State::Closed {
                    e.state = State::Closed;
                    e.trips = 0;
                    e.recent.clear();
                    e.failures = 0;
                    e.consecutive = 0;
                    e.suspected = false;
                }
            }
            Change::Held { held_for, .. } => {
                let until = now + *held_for;
                e.held_until = Some(e.held_until.map_or(until, |h| h.max(until)));
            }
        }
        if e.state != before {
            metrics::gauge!(
                "llm_breaker_state",
                "gen_ai.request.model" => model.to_owned(),
                "openrouter.provider" => provider.unwrap_or("_model").to_owned(),
            )
            .set(e.state.gauge());
        }
    }
}
