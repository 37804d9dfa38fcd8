//! The one error type of the stack: [`LlmError`], opaque, with kind predicates.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub use crate::api_error::{ApiError, ErrorCode, parse_retry_after};
pub use crate::kind::{ErrorKind, ProtocolKind, TimeoutKind};

/// A type-erased error, as used between tower layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of every service in the stack.
///
/// Opaque, in the style of hyper-util's client error: ask it what it is with
/// [`kind`](LlmError::kind) and the predicates. It never contains the API key.
///
/// ```
/// use llm_layers_core::{LlmError, ErrorKind, TimeoutKind};
/// let e = LlmError::timeout(TimeoutKind::FirstToken);
/// assert!(e.is_timeout());
/// assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
/// assert!(e.is_retriable());
/// ```
#[derive(Clone)]
pub struct LlmError {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: Option<String>,
    status: Option<StatusCode>,
    api: Option<ApiError>,
    retry_after: Option<Duration>,
    provider: Option<String>,
    providers: Vec<String>,
    key_limited: bool,
    elsewhere: bool,
    no_retry: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl LlmError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind) -> LlmError {
        LlmError {
            inner: Box::new(Inner {
                kind,
                message: None,
                status: None,
                api: None,
                retry_after: None,
                provider: None,
                providers: Vec::new(),
                key_limited: false,
                elsewhere: false,
                no_retry: false,
                source: None,
            }),
        }
    }

    /// An HTTP status error from the upstream, with its parsed body.
    pub fn status(status: StatusCode, api: Option<ApiError>) -> LlmError {
        let mut e = LlmError::new(ErrorKind::Status);
        e.inner.status = Some(status);
        if let Some(p) = api.as_ref().and_then(|a| a.provider_name.clone()) {
            e.inner.provider = Some(p);
        }
        e.inner.api = api;
        e
    }

    /// A deadline ran out.
    pub fn timeout(which: TimeoutKind) -> LlmError {
        LlmError::new(ErrorKind::Timeout(which))
    }

    /// A protocol violation by the upstream.
    pub fn protocol(which: ProtocolKind, message: impl Into<String>) -> LlmError {
        LlmError::new(ErrorKind::Protocol(which)).with_message(message)
    }

    /// An error event in the middle of a stream (`{"error": ...}` on a `data` line).
    pub fn upstream(api: ApiError) -> LlmError {
        let mut e = LlmError::new(ErrorKind::Upstream);
        e.inner.status = api.status_code();
        e.inner.provider = api.provider_name.clone();
        e.inner.api = Some(api);
        e
    }

    /// The stream ended without `data: [DONE]`.
    pub fn truncated() -> LlmError {
        LlmError::new(ErrorKind::Truncated).with_message("stream ended without [DONE]")
    }

    /// A request rejected locally.
    pub fn bad_request(message: impl Into<String>) -> LlmError {
        LlmError::new(ErrorKind::BadRequest).with_message(message)
    }

    /// A local rate limit refused; `wait` is how long until it would admit.
    pub fn rate_limited(wait: Duration) -> LlmError {
        LlmError::new(ErrorKind::RateLimited).with_retry_after(wait)
    }

    /// Every candidate provider is open; `retry_after` is when the first one half-opens.
    pub fn circuit_open(providers: Vec<String>, retry_after: Option<Duration>) -> LlmError {
        let mut e = LlmError::new(ErrorKind::CircuitOpen);
        e.inner.providers = providers;
        e.inner.retry_after = retry_after;
        e
    }

    /// Sets a human-readable message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> LlmError {
        self.inner.message = Some(message.into());
        self
    }

    /// Sets the `Retry-After` hint.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> LlmError {
        self.inner.retry_after = Some(after);
        self
    }

    /// Sets the provider (display name) that served or failed.
    #[must_use]
    pub fn with_provider(mut self, provider: impl Into<String>) -> LlmError {
        self.inner.provider = Some(provider.into());
        self
    }

    /// Marks a `429` (or `402`) as being about the caller's own key (an OpenRouter platform
    /// limit, which carries `X-RateLimit-*` headers), not a provider being busy: it is not
    /// retried and holds no provider.
    #[must_use]
    pub fn with_key_limited(mut self) -> LlmError {
        self.inner.key_limited = true;
        self
    }

    /// Marks a throttle whose `Retry-After` concerns only the provider that sent it: another
    /// provider is free now, so a retry need not wait (the breaker sets it; the retry layer
    /// reads it). The `Retry-After` itself is kept for the caller, should every retry fail.
    #[must_use]
    pub fn with_retry_elsewhere(mut self) -> LlmError {
        self.inner.elsewhere = true;
        self
    }

    /// Whether a retry may go at once to another provider (see
    /// [`with_retry_elsewhere`](LlmError::with_retry_elsewhere)).
    pub fn retry_elsewhere(&self) -> bool {
        self.inner.elsewhere
    }

    /// Marks an error no retry should follow: the layer that raised it knows that waiting
    /// for its `Retry-After` cannot help (every provider throttles whatever is sent), so the
    /// caller is told at once. The `Retry-After` is kept for the caller.
    #[must_use]
    pub fn with_no_retry(mut self) -> LlmError {
        self.inner.no_retry = true;
        self
    }

    /// Whether no retry should follow (see [`with_no_retry`](LlmError::with_no_retry)).
    pub fn no_retry(&self) -> bool {
        self.inner.no_retry
    }

    /// Sets or clears the `Retry-After` hint.
    pub fn set_retry_after(&mut self, after: Option<Duration>) {
        self.inner.retry_after = after;
    }

    /// Sets the provider (display name) when one is known.
    #[must_use]
    pub fn with_provider_opt(mut self, provider: Option<String>) -> LlmError {
        if provider.is_some() {
            self.inner.provider = provider;
        }
        self
    }

    /// Sets the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> LlmError {
        self.inner.source = Some(Arc::from(source.into()));
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The upstream HTTP status, when there was one.
    pub fn status_code(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The parsed upstream error body, when there was one.
    pub fn api_error(&self) -> Option<&ApiError> {
        self.inner.api.as_ref()
    }

    /// How long the upstream (or a local limit) asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The provider that failed, when known.
    pub fn provider(&self) -> Option<&str> {
        self.inner.provider.as_deref()
    }

    /// For [`ErrorKind::CircuitOpen`]: the providers that are open.
    pub fn open_providers(&self) -> &[String] {
        &self.inner.providers
    }

    /// The message: ours, or the upstream's.
    pub fn message(&self) -> Option<&str> {
        self.inner
            .message
            .as_deref()
            .or_else(|| self.inner.api.as_ref()?.message.as_deref())
    }

    /// Whether the default classification ([`DefaultClassify`](crate::DefaultClassify))
    /// calls this error worth retrying before the commit point.
    pub fn is_retriable(&self) -> bool {
        crate::classify::DefaultClassify.classify(self).retriable
    }

    /// A limit on the caller's own key (rate or credit), as opposed to a provider being
    /// busy. See [`with_key_limited`](LlmError::with_key_limited).
    pub fn is_key_limited(&self) -> bool {
        self.inner.key_limited
    }

    /// A deadline ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.inner.kind, ErrorKind::Timeout(_))
    }

    /// Connecting (or the TLS handshake) failed.
    pub fn is_connect(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Connect | ErrorKind::Tls | ErrorKind::Timeout(TimeoutKind::Connect)
        )
    }

    /// The upstream answered with an error status.
    pub fn is_status(&self) -> bool {
        self.inner.kind == ErrorKind::Status
    }

    /// The upstream sent something that is not the protocol.
    pub fn is_protocol(&self) -> bool {
        matches!(self.inner.kind, ErrorKind::Protocol(_))
    }

    /// The call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.kind == ErrorKind::Cancelled
    }
}

use crate::classify::Classify as _;

impl fmt::Debug for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("LlmError");
        d.field("kind", &self.inner.kind);
        if let Some(m) = &self.inner.message {
            d.field("message", m);
        }
        if let Some(s) = &self.inner.status {
            d.field("status", s);
        }
        if let Some(a) = &self.inner.api {
            d.field("api", a);
        }
        if let Some(r) = &self.inner.retry_after {
            d.field("retry_after", r);
        }
        if let Some(p) = &self.inner.provider {
            d.field("provider", p);
        }
        if !self.inner.providers.is_empty() {
            d.field("providers", &self.inner.providers);
        }
        if self.inner.key_limited {
            d.field("key_limited", &true);
        }
        if let Some(s) = &self.inner.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.kind {
            ErrorKind::Connect => f.write_str("connection failed")?,
            ErrorKind::Tls => f.write_str("TLS handshake failed")?,
            ErrorKind::Transport => f.write_str("connection broken before the response")?,
            ErrorKind::Status => match self.inner.status {
                Some(s) => write!(f, "upstream returned {s}")?,
                None => f.write_str("upstream returned an error")?,
            },
            ErrorKind::Timeout(k) => write!(f, "{} timeout", k.as_str())?,
            ErrorKind::RateLimited => f.write_str("rate limited")?,
            ErrorKind::CircuitOpen => {
                write!(f, "circuit open for {}", self.inner.providers.join(", "))?
            }
            ErrorKind::Protocol(_) => f.write_str("protocol error")?,
            ErrorKind::Upstream => f.write_str("upstream error mid-stream")?,
            ErrorKind::Truncated => f.write_str("truncated stream")?,
            ErrorKind::Cancelled => f.write_str("cancelled")?,
            ErrorKind::BadRequest => f.write_str("bad request")?,
            ErrorKind::Internal => f.write_str("internal error")?,
        }
        if let Some(m) = self.message() {
            write!(f, ": {m}")?;
        }
        if let Some(p) = &self.inner.provider {
            write!(f, " (provider {p})")?;
        }
        if let Some(r) = self.inner.retry_after {
            write!(f, " (retry after {:.3}s)", r.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for LlmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

/// Interop with tower's own middleware (`Buffer`, `ConcurrencyLimit`, `LoadShed`,
/// `tower::timeout`), whose errors are `BoxError`s: an [`LlmError`] inside comes back as it
/// was (a `Buffer` in front of our layers passes ours through); anything else becomes an
/// [`ErrorKind::Internal`] error carrying it as its source and message.
///
/// ```
/// use llm_layers_core::{BoxError, ErrorKind, LlmError, TimeoutKind};
/// let ours: BoxError = Box::new(LlmError::timeout(TimeoutKind::Idle));
/// assert_eq!(LlmError::from(ours).kind(), ErrorKind::Timeout(TimeoutKind::Idle));
/// let theirs: BoxError = "request timed out".into();
/// let e = LlmError::from(theirs);
/// assert_eq!(e.kind(), ErrorKind::Internal);
/// assert_eq!(e.message(), Some("request timed out"));
/// ```
impl From<BoxError> for LlmError {
    fn from(e: BoxError) -> LlmError {
        match e.downcast::<LlmError>() {
            Ok(ours) => *ours,
            Err(other) => {
                let message = other.to_string();
                LlmError::new(ErrorKind::Internal)
                    .with_message(message)
                    .with_source(other)
            }
        }
    }
}
