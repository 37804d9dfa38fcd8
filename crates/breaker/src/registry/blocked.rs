//! Why a provider was kept out of a request, and the fast error when every one is.

use std::time::Duration;

use llm_layers_core::LlmError;
use tokio::time::Instant;

/// Why a provider was kept out of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// Its breaker is open until then (`None`: half-open, its probes are out).
    Open(Option<Instant>),
    /// Throttled until then.
    Held(Instant),
}

impl Blocked {
    pub(super) fn until(self) -> Option<Instant> {
        match self {
            Blocked::Open(u) => u,
            Blocked::Held(u) => Some(u),
        }
    }
}

/// The fast error for a request whose every known provider is blocked: `429` with the
/// shortest hold when all are throttled or open but some throttled, `CircuitOpen` when all
/// are open. The message names each provider and when it comes back.
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
            Blocked::Held(u) => format!(
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
    if blocked.iter().any(|(_, b)| matches!(b, Blocked::Held(_))) {
        let wait = first.unwrap_or(Duration::from_secs(1));
        let mut e = LlmError::rate_limited(wait).with_message(format!(
            "every known provider of {model} is throttled or failing ({detail})"
        ));
        e.set_retry_after(Some(wait));
        return e;
    }
    LlmError::circuit_open(names, first).with_message(format!(
        "every known provider of {model} is open ({detail})"
    ))
}
