//! Several API keys for one upstream: chosen in turn, retired on 401, paused on a 402 about
//! their own credit, held on their own 429; never for what one call's input caused, and
//! never the last key that could serve. Key text never leaves this module but as a sensitive header value.

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
    /// The status the last call failed with, when that said the key is bad but it was the
    /// last key that could serve (so kept in turn); cleared when it serves.
    failing: Option<u16>,
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
                    "every API key of this upstream is retired (401, or 402 for a while)".into(),
                );
                LlmError::status(http::StatusCode::UNAUTHORIZED, Some(api))
            }
        })
    }

    /// Whether any key but `i` could serve now (not retired, not paused, not held).
    fn others_usable(&self, i: usize, now: Instant) -> bool {
        self.slots.iter().enumerate().any(|(j, s)| {
            j != i && {
                let st = lock(&s.state);
                st.retired
                    .is_none_or(|until| until.is_some_and(|t| t <= now))
                    && st.held_until.is_none_or(|h| h <= now)
            }
        })
    }

    /// What an error says about key `i`; returns whether the key was taken out of turn (so
    /// another key may be tried at once). Only with more than one key: with one there is
    /// nothing to rotate to, and its errors pass as they are.
    ///
    /// Only evidence about the *key* takes it out: a `401` (invalid or disabled key), a
    /// `402` whose `limit_source` is the key's own credit limit, a key-level `429`. What
    /// one call's input causes never does: a `403` (moderation, permission), a `400`, a
    /// `402` about the account's balance against this request's size. And no error takes
    /// out the last key that could serve: one caller must not be able to stop every call
    /// of every other; that key is marked failing instead ([`KeyRing::health`]).
    pub(crate) fn learn(&self, i: usize, err: &LlmError, now: Instant) -> bool {
        let status = err.status_code().map(|s| s.as_u16());
        let blame = match status {
            Some(401) => Blame::Retire,
            Some(402) => match err.api_error().and_then(ApiError::limit_source) {
                Some("openrouter_key_limit") => Blame::Pause(NO_CREDIT_PAUSE),
                Some("openrouter_in_flight_budget") => {
                    Blame::Hold(err.retry_after().unwrap_or(Duration::from_secs(1)))
                }
                _ => Blame::Call,
            },
            Some(429) if err.is_key_limited() => {
                Blame::Hold(err.retry_after().unwrap_or(Duration::from_secs(1)))
            }
            _ => Blame::Call,
        };
        if matches!(blame, Blame::Call) {
            return false;
        }
        let slot = &self.slots[i];
        if self.slots.len() < 2 || !self.others_usable(i, now) {
            if matches!(blame, Blame::Hold(_)) {
                return false;
            }
            let mut st = lock(&slot.state);
            st.failing = status;
            tracing::error!(
                key = %slot.id,
                status = status.unwrap_or(0),
                "API key refused by the upstream, and no other key can serve: kept in turn"
            );
            return false;
        }
        let mut st = lock(&slot.state);
        match blame {
            Blame::Retire => {
                st.retired = Some(None);
                tracing::error!(
                    key = %slot.id,
                    status = status.unwrap_or(0),
                    "API key rejected by the upstream: retired until the gateway restarts"
                );
            }
            Blame::Pause(d) => {
                st.retired = Some(Some(now + d));
                tracing::warn!(key = %slot.id, "API key's credit limit is spent (402): left alone for 10 minutes");
            }
            Blame::Hold(wait) => {
                st.held_until = Some(now + wait.min(Duration::from_secs(60)));
                tracing::info!(key = %slot.id, wait_ms = wait.as_millis() as u64, "API key at its own rate limit: held");
            }
            Blame::Call => {}
        }
        true
    }

    /// Key `i` served a call: whatever it failed with before is over.
    pub(crate) fn succeeded(&self, i: usize) {
        let mut st = lock(&self.slots[i].state);
        if st.failing.is_some() {
            st.failing = None;
        }
    }

    /// Every key's state now, by id (no key text).
    pub(crate) fn health(&self, now: Instant) -> Vec<KeyHealth> {
        self.slots
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                let state = match (st.retired, st.held_until, st.failing) {
                    (Some(None), _, _) => KeyState::Retired,
                    (Some(Some(t)), _, _) if t > now => {
                        KeyState::Paused(t.saturating_duration_since(now))
                    }
                    (_, Some(h), _) if h > now => KeyState::Held(h.saturating_duration_since(now)),
                    (_, _, Some(status)) => KeyState::Failing(status),
                    _ => KeyState::Ok,
                };
                KeyHealth {
                    id: s.id.clone(),
                    state,
                }
            })
            .collect()
    }
}

/// What an upstream error says about the key that sent it.
enum Blame {
    /// The key is invalid: out until restart.
    Retire,
    /// The key has no credit: out for a while.
    Pause(Duration),
    /// The key is at its own rate limit: out for its `Retry-After`.
    Hold(Duration),
    /// The call's (its input, its size) or the provider's: the key is fine.
    Call,
}

/// One API key's state, as [`OpenRouter::key_health`](crate::OpenRouter::key_health) says
/// it: its id (a name or `…` and its last four characters), never its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHealth {
    /// The key's id.
    pub id: Arc<str>,
    /// Its state.
    pub state: KeyState,
}

/// Whether a key can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Serving.
    Ok,
    /// Refused by the upstream (401): out until the process restarts.
    Retired,
    /// Its credit limit is spent (402): out for this long.
    Paused(Duration),
    /// At its own rate limit (429): out for this long.
    Held(Duration),
    /// The last key that could serve, kept in turn although its last call was refused
    /// with this status (401, or a 402 about its own credit): until it serves again.
    Failing(u16),
}

impl KeyState {
    /// Whether the key can serve (it may be failing, but is not out).
    pub fn is_ok(self) -> bool {
        self == KeyState::Ok
    }
}
