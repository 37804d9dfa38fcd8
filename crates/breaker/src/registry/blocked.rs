//! Why a provider was kept out of a request, and the fast error when every one is.

use std::time::Duration;

use llm_layers_core::LlmError;
use tokio::time::Instant;

/// Why a provider was kept out of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// Its breaker is open until then (`None`: half-open, its probes are out).
    Open(Option<Instant>),
    /// Throttled until then; `true` when its holds are worth waiting for (its requests
    /// mostly succeed: the throttling is one request's, not the provider's).
    Held(Instant, bool),
}

impl Blocked {
    pub(super) fn until(self) -> Option<Instant> {
        match self {
            Blocked::Open(u) => u,
            Blocked::Held(u, _) => Some(u),
        }
    }
}

/// How soon a caller blocked by a hold worth probing looks again.
const PROBE_AGAIN: Duration = Duration::from_millis(100);

/// The fast error for a request whose every known provider is blocked: `429` with the
/// shortest hold when all are throttled or open but some throttled (with a short wait when a
/// hold is worth probing, and marked not worth retrying when none is), `CircuitOpen` when
/// all are open. The message names each provider and when it comes back.
pub(crate) fn blocked_error(model: &str, blocked: &[(String, Blocked)], now: Instant) -> LlmError {
    let first = blocked
        .iter()
        .filter_map(|(_, b)| b.until())
        .min()
        .map(|u| u.saturating_duration_since(now));
    let names: Vec<String> = blocked.iter().map(|(s, _)| s.clone()).collect();
    let detail = blocked
        .iter()
        .map(|(s, b)| match b {
            Blocked::Held(u, _) => format!(
                "{s} throttled for {:.1}s",
                u.saturating_duration_since(now).as_secs_f64()
            ),
            Blocked::Open(Some(u)) => format!(
                "{s} open for {:.1}s",
                u.saturating_duration_since(now).as_secs_f64()
            ),
            Blocked::Open(None) => format!("{s} being probed"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if blocked.iter().any(|(_, b)| matches!(b, Blocked::Held(..))) {
        let worth = blocked
            .iter()
            .any(|(_, b)| matches!(b, Blocked::Held(_, true)));
        // A hold worth waiting for is probed: look again soon rather than at its end.
        let wait = match first.unwrap_or(Duration::from_secs(1)) {
            w if worth => w.min(PROBE_AGAIN),
            w => w,
        };
        let mut e = LlmError::rate_limited(wait).with_message(format!(
            "every known provider of {model} is throttled or failing ({detail})"
        ));
        e.set_retry_after(Some(wait));
        if !worth {
            // Every provider throttles whatever is sent (or is open): waiting for the hold
            // costs the caller its time and gains nothing; the caller gets the 429 now.
            e = e.with_no_retry();
        }
        return e;
    }
    // Every provider is open (or being probed): none comes back before its breaker's next
    // probe says so, which no caller should sit through; the caller is told at once.
    LlmError::circuit_open(names, first)
        .with_message(format!(
            "every known provider of {model} is open ({detail})"
        ))
        .with_no_retry()
}
