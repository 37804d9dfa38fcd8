//! Room in the table: idle entries go first, then the least recently used closed one.

use llm_layers_core::hash::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Config, Entry, ModelEntry, State};

/// Frees one entry's room when the table is full: idle entries first, else the least
/// recently used closed, unheld one (an open or held entry is worth more than a new key).
/// Returns whether there is room now.
pub(super) fn make_room(
    map: &mut HashMap<Arc<str>, ModelEntry>,
    count: &mut usize,
    now: Instant,
    cfg: &Config,
) -> bool {
    evict_idle(map, count, now, cfg.idle_ttl);
    if *count < cfg.max_entries {
        return true;
    }
    let lru = map
        .iter()
        .flat_map(|(m, me)| {
            me.providers
                .iter()
                .filter(|(_, e)| e.state == State::Closed && e.held_until.is_none_or(|h| h <= now))
                .map(move |(p, e)| (e.last_used, m.clone(), p.clone()))
        })
        .min_by_key(|(t, _, _)| *t);
    let Some((_, m, p)) = lru else {
        return false;
    };
    if let Some(me) = map.get_mut(&m) {
        me.providers.remove(&p);
        *count -= 1;
    }
    true
}

/// Drops closed entries unused for `ttl`.
pub(super) fn evict_idle(
    map: &mut HashMap<Arc<str>, ModelEntry>,
    count: &mut usize,
    now: Instant,
    ttl: Duration,
) {
    // Closed (or open and long expired) and not held, unused for `ttl`.
    let idle = |e: &Entry| {
        let settled = match e.state {
            State::Closed => true,
            State::Open { until } => now.saturating_duration_since(until) >= ttl,
            State::HalfOpen => e.probes_in_flight == 0,
        };
        settled
            && e.held_until.is_none_or(|h| h <= now)
            && now.saturating_duration_since(e.last_used) >= ttl
    };
    map.retain(|_, me| {
        if me.model.as_ref().is_some_and(idle) {
            me.model = None;
            *count -= 1;
        }
        let before = me.providers.len();
        me.providers.retain(|_, e| !idle(e));
        *count -= before - me.providers.len();
        me.model.is_some() || !me.providers.is_empty()
    });
}
