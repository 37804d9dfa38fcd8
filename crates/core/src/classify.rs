//! Error classification: one trait that retry, hedge, the breaker and latency recording share.

use std::sync::Arc;

use crate::error::{ErrorKind, LlmError, TimeoutKind};

/// What a [`Classify`] decides about one error. Start from a constant
/// ([`TRANSIENT`](Self::TRANSIENT), [`THROTTLED`](Self::THROTTLED),
/// [`CALLER`](Self::CALLER)) and set the fields you disagree with: the struct may gain
/// fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorClass {
    /// Worth another attempt before the commit point (possibly after `retry_after`).
    pub retriable: bool,
    /// Counts against the health of the provider (or model) that produced it: a breaker
    /// trips on these, and latency records them as failures. A 400 is the caller's fault,
    /// a 502 the provider's.
    pub provider_failure: bool,
    /// The provider asked us to slow down (a `429`, OpenRouter's `capacity_exhausted`):
    /// throttled is not broken. The breaker *holds* that (model, provider) for its
    /// `Retry-After` instead of counting a failure, and a retry moves to another provider.
    pub throttled: bool,
}

impl ErrorClass {
    /// Retriable, and the provider's fault.
    pub const TRANSIENT: ErrorClass = ErrorClass {
        retriable: true,
        provider_failure: true,
        throttled: false,
    };
    /// Retriable elsewhere or later; the provider is busy, not broken.
    pub const THROTTLED: ErrorClass = ErrorClass {
        retriable: true,
        provider_failure: false,
        throttled: true,
    };
    /// Not retriable, and the caller's fault.
    pub const CALLER: ErrorClass = ErrorClass {
        retriable: false,
        provider_failure: false,
        throttled: false,
    };
}

/// Decides what an error means. Replace it to change what is retried and what trips the
/// breaker, as tower-http's `classify` does for HTTP responses.
///
/// Implemented for closures and for `Arc<dyn Classify>`.
///
/// ```
/// use llm_layers_core::{Classify, DefaultClassify, ErrorClass, LlmError};
/// use http::StatusCode;
/// // Treat a 503 as the provider asking us to slow down, like a 429.
/// let mine = |e: &LlmError| {
///     let mut c = DefaultClassify.classify(e);
///     if e.status_code() == Some(StatusCode::SERVICE_UNAVAILABLE) {
///         c = ErrorClass::THROTTLED;
///     }
///     c
/// };
/// let e = LlmError::status(StatusCode::SERVICE_UNAVAILABLE, None);
/// assert_eq!(mine.classify(&e), ErrorClass::THROTTLED);
/// ```
pub trait Classify: Send + Sync + 'static {
    /// Classifies one error.
    fn classify(&self, error: &LlmError) -> ErrorClass;
}

impl<F> Classify for F
where
    F: Fn(&LlmError) -> ErrorClass + Send + Sync + 'static,
{
    fn classify(&self, error: &LlmError) -> ErrorClass {
        self(error)
    }
}

impl Classify for Arc<dyn Classify> {
    fn classify(&self, error: &LlmError) -> ErrorClass {
        (**self).classify(error)
    }
}

/// The default classification, following OpenRouter's documented error codes
/// (<https://openrouter.ai/docs/api-reference/errors>):
///
/// | error | retriable | provider failure |
/// |---|---|---|
/// | 400, 401, 403, 404, 413, 422 | no | no |
/// | 402 | only with `Retry-After` | no |
/// | 429 from a provider, or `availability.code: capacity_exhausted` | yes, elsewhere (**throttled**) | no |
/// | 429 about the caller's own key ([`LlmError::is_key_limited`]) | no | no |
/// | 408, 500, 502, 503, 524, 529 | yes | yes |
/// | other 5xx | yes | yes |
/// | `availability.retryable` present | as it says | as the status |
/// | mid-stream error event with a code | as that status | as that status |
/// | connect, TLS, transport, first-token/connect timeout, truncated, mid-stream error without a code | yes | yes |
/// | idle or total timeout | no (the stream was committed) | yes |
/// | protocol error | no | yes |
/// | local rate limit | yes (after its wait) | no |
/// | circuit open, bad request, config, cancelled | no | no |
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassify;

impl Classify for DefaultClassify {
    fn classify(&self, e: &LlmError) -> ErrorClass {
        match e.kind() {
            ErrorKind::Status => by_status(e, e.status_code().map_or(0, |s| s.as_u16())),
            // A mid-stream error event carries the upstream's code: a 400 in the stream is
            // the caller's as much as before it. Without a code it is the provider's.
            ErrorKind::Upstream => match e.status_code().map(|s| s.as_u16()) {
                Some(status @ 400..=599) => by_status(e, status),
                _ => {
                    let mut class = ErrorClass::TRANSIENT;
                    if let Some(r) = e.api_error().and_then(|a| a.retryable) {
                        class.retriable = r;
                    }
                    class
                }
            },
            ErrorKind::Connect
            | ErrorKind::Tls
            | ErrorKind::Transport
            | ErrorKind::Truncated
            | ErrorKind::Timeout(TimeoutKind::Connect | TimeoutKind::FirstToken) => {
                ErrorClass::TRANSIENT
            }
            ErrorKind::Timeout(_) | ErrorKind::Protocol(_) => ErrorClass {
                retriable: false,
                provider_failure: true,
                throttled: false,
            },
            ErrorKind::RateLimited => ErrorClass {
                retriable: true,
                provider_failure: false,
                throttled: false,
            },
            _ => ErrorClass::CALLER,
        }
    }
}

/// The class of an upstream status (before the stream, or carried by an error event), with
/// `availability.retryable` deciding when the upstream says.
fn by_status(e: &LlmError, status: u16) -> ErrorClass {
    if e.is_key_limited() {
        // The caller's own key is out of rate or credit: say it, don't retry it.
        return ErrorClass::CALLER;
    }
    let capacity =
        e.api_error().and_then(|a| a.availability_code.as_deref()) == Some("capacity_exhausted");
    let mut class = match status {
        _ if capacity => ErrorClass::THROTTLED,
        402 => ErrorClass {
            retriable: e.retry_after().is_some(),
            provider_failure: false,
            throttled: false,
        },
        429 => ErrorClass::THROTTLED,
        408 | 500..=599 => ErrorClass::TRANSIENT,
        _ => ErrorClass::CALLER,
    };
    if let Some(r) = e.api_error().and_then(|a| a.retryable) {
        class.retriable = r;
    }
    class
}
