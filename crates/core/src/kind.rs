//! The kinds of an [`LlmError`](crate::LlmError): what failed, which deadline, what was wrong
//! with what the upstream sent.

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// Establishing the TCP/TLS connection took too long.
    Connect,
    /// The first token (the commit point) did not arrive in time.
    FirstToken,
    /// The gap between two chunks of a committed stream was too long.
    Idle,
    /// The whole call, from request to end of stream, took too long.
    Total,
}

impl TimeoutKind {
    /// A short, stable, low-cardinality name (`"first_token"`, ...), fit for a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::FirstToken => "first_token",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Total => "total",
        }
    }
}

/// What was wrong with what the upstream sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtocolKind {
    /// The body was not a valid event stream.
    Sse,
    /// An event or body was not the JSON we expect.
    Json,
    /// One event was larger than the configured maximum.
    Oversize,
    /// An event was not valid UTF-8.
    Utf8,
    /// The response had an unexpected `Content-Type`.
    ContentType,
}

/// The category of an [`LlmError`](crate::LlmError).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection could not be established (DNS, refused, reset before headers).
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The connection failed after it was established (reset, broken pipe) before the
    /// response headers arrived.
    Transport,
    /// The upstream answered with a non-success HTTP status (or a 200 carrying an error).
    Status,
    /// A deadline ran out.
    Timeout(TimeoutKind),
    /// A local rate limit refused or would not wait.
    RateLimited,
    /// Every candidate provider's circuit is open.
    CircuitOpen,
    /// The upstream sent something that is not the protocol.
    Protocol(ProtocolKind),
    /// The upstream reported an error in the middle of a stream.
    Upstream,
    /// The stream ended without its terminator (`data: [DONE]`).
    Truncated,
    /// The call was cancelled (the caller went away, or a hedge lost).
    Cancelled,
    /// The request was rejected locally before any upstream call.
    BadRequest,
    /// An error from outside the stack's own types (a tower middleware's `BoxError` that is
    /// not an [`LlmError`](crate::LlmError)): see `From<BoxError>`.
    Internal,
}

impl ErrorKind {
    /// A short, stable, low-cardinality name, fit for a metric label (`error.type`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Transport => "transport",
            ErrorKind::Status => "status",
            ErrorKind::Timeout(TimeoutKind::Connect) => "timeout_connect",
            ErrorKind::Timeout(TimeoutKind::FirstToken) => "timeout_first_token",
            ErrorKind::Timeout(TimeoutKind::Idle) => "timeout_idle",
            ErrorKind::Timeout(TimeoutKind::Total) => "timeout_total",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Protocol(ProtocolKind::Sse) => "protocol_sse",
            ErrorKind::Protocol(ProtocolKind::Json) => "protocol_json",
            ErrorKind::Protocol(ProtocolKind::Oversize) => "protocol_oversize",
            ErrorKind::Protocol(ProtocolKind::Utf8) => "protocol_utf8",
            ErrorKind::Protocol(ProtocolKind::ContentType) => "protocol_content_type",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Internal => "internal",
        }
    }
}
