//! Several API keys for one upstream: chosen in turn, retired on 401/403 and 402, held on
//! their own 429. Key text never leaves this module but as a sensitive header value.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use llm_layers_core::sync::lock;
use llm_layers_core::{ApiError, ErrorCode, LlmError};
use tokio::time::Instant;

/// How the next key is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyChoice {
    /// Each call takes the next usable key (default).
    #[default]
    RoundRobin,
    /// Each call takes the usable key unused for longest.
    LeastRecentlyUsed,
}

/// How long a key that answered 402 (no credit) is left alone.
pub(crate) const NO_CREDIT_PAUSE: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct SlotState {
    /// Retired: `Some(None)` until the process restarts, `Some(Some(t))` until `t`.
    retired: Option<Option<Instant>>,
    held_until: Option<Instant>,
    last_used: Option<Instant>,
}

struct Slot {
    id: Arc<str>,
    auth: HeaderValue,
    state: Mutex<SlotState>,
}

/// The keys of one upstream.
pub(crate) struct KeyRing {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    choice: KeyChoice,
}

/// A key's public name: the one given, or its last four characters.
pub(crate) fn key_id(name: Option<&str>, key: &str) -> Arc<str> {
    match name {
        Some(n) => Arc::from(n),
        None => {
            let tail: String = key
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Arc::from(format!("…{tail}"))
        }
    }
}

impl KeyRing {
    pub(crate) fn new(keys: Vec<(Arc<str>, HeaderValue)>, choice: KeyChoice) -> KeyRing {
        KeyRing {
            slots: keys
                .into_iter()
                .map(|(id, auth)| Slot {
                    id,
                    auth,
                    state: Mutex::new(SlotState::default()),
                })
                .collect(),
            next: AtomicUsize::new(0),
            choice,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn id(&self, i: usize) -> &Arc<str> {
        &self.slots[i].id
    }

    pub(crate) fn auth(&self, i: usize) -> &HeaderValue {
        &self.slots[i].auth
    }

    /// The ids of every key, for `Debug`.
    pub(crate) fn ids(&self) -> Vec<&str> {
        self.slots.iter().map(|s| &*s.id).collect()
    }

    /// A usable key not in `tried`, marked used; the error says why there is none.
    pub(crate) fn pick(&self, now: Instant, tried: &[usize]) -> Result<usize, LlmError> {
        let n = self.slots.len();
        if n == 1 && tried.is_empty() {
            lock(&self.slots[0].state).last_used = Some(now);
            return Ok(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, Option<Instant>)> = None;
        let mut soonest_hold: Option<Instant> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if tried.contains(&i) {
                continue;
            }
            let mut st = lock(&self.slots[i].state);
            if let Some(until) = st.retired {
                match until {
                    Some(t) if t <= now => st.retired = None,
                    _ => continue,
                }
            }
            if let Some(h) = st.held_until {
                if h > now {
                    soonest_hold = Some(soonest_hold.map_or(h, |s| s.min(h)));
                    continue;
                }
                st.held_until = None;
            }
            match self.choice {
                KeyChoice::RoundRobin => {
                    st.last_used = Some(now);
                    return Ok(i);
                }
                KeyChoice::LeastRecentlyUsed => {
                    if best.is_none_or(|(_, used)| st.last_used < used) {
                        best = Some((i, st.last_used));
                    }
                }
            }
        }
        if let Some((i, _)) = best {
            lock(&self.slots[i].state).last_used = Some(now);
            return Ok(i);
        }
        Err(match soonest_hold {
            Some(h) => LlmError::rate_limited(h.saturating_duration_since(now))
                .with_message("every API key of this upstream is at its own rate limit")
                .with_key_limited(),
            None => {
                let mut api = ApiError::default();
                api.code = Some(ErrorCode::Number(401));
                api.message = Some(
                    "every API key of this upstream is retired (401/403, or 402 for a while)"
                        .into(),
                );
                LlmError::status(http::StatusCode::UNAUTHORIZED, Some(api))
            }
        })
    }

    /// What an error says about key `i`; returns whether the key was taken out of turn (so
    /// another key may be tried at once). Only with more than one key: with one there is
    /// nothing to rotate to, and its errors pass as they are.
    pub(crate) fn learn(&self, i: usize, err: &LlmError, now: Instant) -> bool {
        if self.slots.len() < 2 {
            return false;
        }
        let slot = &self.slots[i];
        let mut st = lock(&slot.state);
        match err.status_code().map(|s| s.as_u16()) {
            Some(401 | 403) => {
                st.retired = Some(None);
                tracing::error!(
                    key = %slot.id,
                    status = err.status_code().map_or(0, |s| s.as_u16()),
                    "API key rejected by the upstream: retired until the gateway restarts"
                );
                true
            }
            Some(402) => {
                st.retired = Some(Some(now + NO_CREDIT_PAUSE));
                tracing::warn!(key = %slot.id, "API key has no credit (402): left alone for 10 minutes");
                true
            }
            Some(429) if err.is_key_limited() => {
                let wait = err.retry_after().unwrap_or(Duration::from_secs(1));
                st.held_until = Some(now + wait.min(Duration::from_secs(60)));
                tracing::info!(key = %slot.id, wait_ms = wait.as_millis() as u64, "API key at its own rate limit: held");
                true
            }
            _ => false,
        }
    }
}
