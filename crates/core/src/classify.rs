//! Error classification: one trait that retry, hedge, the breaker and latency recording share.

use std::sync::Arc;

use crate::error::{ErrorKind, LlmError, TimeoutKind};

/// What a [`Classify`] decides about one error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// Worth another attempt before the commit point (possibly after `retry_after`).
    pub retriable: bool,
    /// Counts against the health of the provider (or model) that produced it: a breaker
    /// trips on these, and latency records them as failures. A 400 is the caller's fault,
    /// a 502 the provider's.
    pub provider_failure: bool,
}

impl ErrorClass {
    /// Retriable, and the provider's fault.
    pub const TRANSIENT: ErrorClass = ErrorClass {
        retriable: true,
        provider_failure: true,
    };
    /// Not retriable, and the caller's fault.
    pub const CALLER: ErrorClass = ErrorClass {
        retriable: false,
        provider_failure: false,
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
/// // Also retry 500s without hesitation, and never blame the provider for a 429.
/// let mine = |e: &LlmError| {
///     let mut c = DefaultClassify.classify(e);
///     if e.status_code() == Some(StatusCode::TOO_MANY_REQUESTS) {
///         c.provider_failure = false;
///     }
///     c
/// };
/// let e = LlmError::status(StatusCode::TOO_MANY_REQUESTS, None);
/// assert_eq!(mine.classify(&e), ErrorClass { retriable: true, provider_failure: false });
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

/// The default classification, following the OpenRouter status table
/// (`openrouter-wire.md` §1.6):
///
/// | error | retriable | provider failure |
/// |---|---|---|
/// | 400, 401, 403, 404, 413, 422 | no | no |
/// | 402 | only with `Retry-After` | no |
/// | 408, 429, 500, 502, 503, 524, 529 | yes | yes |
/// | other 5xx | yes | yes |
/// | `availability.retryable` present | as it says | as the status |
/// | connect, TLS, transport, first-token/connect timeout, truncated, mid-stream error | yes | yes |
/// | idle or total timeout | no (the stream was committed) | yes |
/// | protocol error | no | yes |
/// | local rate limit | yes (after its wait) | no |
/// | circuit open, bad request, config, cancelled | no | no |
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassify;

impl Classify for DefaultClassify {
    fn classify(&self, e: &LlmError) -> ErrorClass {
        match e.kind() {
            ErrorKind::Status => {
                let status = e.status_code().map(|s| s.as_u16()).unwrap_or(0);
                let mut class = match status {
                    402 => ErrorClass {
                        retriable: e.retry_after().is_some(),
                        provider_failure: false,
                    },
                    408 | 429 | 500..=599 => ErrorClass::TRANSIENT,
                    _ => ErrorClass::CALLER,
                };
                if let Some(r) = e.api_error().and_then(|a| a.retryable) {
                    class.retriable = r;
                }
                class
            }
            ErrorKind::Connect
            | ErrorKind::Tls
            | ErrorKind::Transport
            | ErrorKind::Truncated
            | ErrorKind::Upstream
            | ErrorKind::Timeout(TimeoutKind::Connect | TimeoutKind::FirstToken) => {
                ErrorClass::TRANSIENT
            }
            ErrorKind::Timeout(_) | ErrorKind::Protocol(_) => ErrorClass {
                retriable: false,
                provider_failure: true,
            },
            ErrorKind::RateLimited => ErrorClass {
                retriable: true,
                provider_failure: false,
            },
            _ => ErrorClass::CALLER,
        }
    }
}
