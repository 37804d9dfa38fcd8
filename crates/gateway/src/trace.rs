//! Following one call across processes: the caller's W3C trace context (`traceparent`,
//! `tracestate`), the span of each request to the gateway, and the headers that carry the
//! trace on to the upstream.
//!
//! The spans are `tracing` spans: the gateway's `gateway.request` here, and below it the
//! stack's `llm.call` and one `llm.attempt` per upstream request (`llm-layers-latency`).
//! With the `otel` feature and an OTLP endpoint in the environment they are exported
//! ([`crate::otel`]); otherwise they cost a disabled-callsite check, and the caller's trace
//! context is sent on to the upstream as it came.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use llm_layers_core::ChatRequest;
use llm_layers_openrouter::RequestHeaders;
use tracing::Span;
use tracing::field::Empty;

/// The longest `tracestate` kept (the W3C limit is 32 entries of at most 256 bytes; real
/// ones are far shorter): a longer one is dropped, never cut.
const MAX_TRACESTATE: usize = 512;

/// The caller's trace context, as it came: a request extension the upstream headers read
/// when no exported span stands between (a gateway that exports nothing is transparent).
#[derive(Debug, Clone)]
pub struct CallerTrace {
    parent: HeaderValue,
    state: Option<HeaderValue>,
}

impl CallerTrace {
    /// The caller's `traceparent` (and `tracestate`), when it is a well-formed version-00
    /// one: 00-{32 hex trace id, not all zero}-{16 hex parent id, not all zero}-{2 hex flags}.
    /// Anything else is ignored (a new trace), as the W3C spec asks.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue};
    /// use llm_layers_gateway::trace::CallerTrace;
    /// let mut h = HeaderMap::new();
    /// h.insert("traceparent", HeaderValue::from_static(
    ///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    /// assert!(CallerTrace::from_headers(&h).is_some());
    /// h.insert("traceparent", HeaderValue::from_static("00-0000-00f067aa0ba902b7-01"));
    /// assert!(CallerTrace::from_headers(&h).is_none());
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Option<CallerTrace> {
        let parent = headers.get(crate::names::TRACEPARENT)?;
        if !well_formed(parent.as_bytes()) {
            return None;
        }
        let state = headers
            .get(crate::names::TRACESTATE)
            .filter(|s| s.len() <= MAX_TRACESTATE && s.to_str().is_ok())
            .cloned();
        Some(CallerTrace {
            parent: parent.clone(),
            state,
        })
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &HeaderValue {
        &self.parent
    }

    /// The `tracestate` value, when one came.
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
    }

    /// Adds both headers to `headers`.
    fn write(&self, headers: &mut HeaderMap) {
        headers.insert(crate::names::TRACEPARENT, self.parent.clone());
        if let Some(s) = &self.state {
            headers.insert(crate::names::TRACESTATE, s.clone());
        }
    }
}

fn well_formed(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let zero = |s: &[u8]| s.iter().all(|&b| b == b'0');
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && &v[..2] == b"00"
        && hex(&v[3..35])
        && !zero(&v[3..35])
        && hex(&v[36..52])
        && !zero(&v[36..52])
        && hex(&v[53..])
}

/// The span of one chat request to the gateway (kind server), the parent of the stack's
/// call span; a child of the caller's trace when it sent one and spans are exported.
pub(crate) fn request_span(caller: Option<&CallerTrace>) -> Span {
    let span = tracing::debug_span!(
        "gateway.request",
        otel.name = "POST /v1/chat/completions",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = "POST",
        http.route = "/v1/chat/completions",
        http.response.status_code = Empty,
        llm_layers.tenant = Empty,
        llm_layers.key = Empty,
        error.type = Empty,
    );
    #[cfg(feature = "otel")]
    if let Some(c) = caller {
        crate::otel::set_parent(&span, c);
    }
    #[cfg(not(feature = "otel"))]
    let _ = caller;
    span
}

/// The leaf's request headers: the trace context of the attempt being sent (its span, when
/// spans are exported), else the caller's as it came, else none.
pub fn upstream_headers() -> RequestHeaders {
    Arc::new(|req: &ChatRequest, headers: &mut HeaderMap| {
        #[cfg(feature = "otel")]
        if crate::otel::inject_current(headers) {
            return;
        }
        if let Some(c) = req.extensions().get::<CallerTrace>() {
            c.write(headers);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_is_kept() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(well_formed(ok));
        let mut bad = *ok;
        bad[0] = b'f';
        assert!(!well_formed(&bad), "another version");
        let mut upper = *ok;
        upper[3] = b'A';
        assert!(!well_formed(&upper), "upper-case hex");
        assert!(!well_formed(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!well_formed(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
        ));
        assert!(!well_formed(&ok[..54]), "short");
        let mut dash = *ok;
        dash[35] = b'x';
        assert!(!well_formed(&dash));
    }

    #[test]
    fn a_long_tracestate_is_dropped_whole() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert(
            "tracestate",
            HeaderValue::from_str(&"a=b,".repeat(200)).unwrap(),
        );
        let c = CallerTrace::from_headers(&h).unwrap();
        assert!(c.tracestate().is_none());
        h.insert("tracestate", HeaderValue::from_static("vendor=1"));
        let c = CallerTrace::from_headers(&h).unwrap();
        assert_eq!(c.tracestate().unwrap(), "vendor=1");
        let mut out = HeaderMap::new();
        c.write(&mut out);
        assert_eq!(out["traceparent"], h["traceparent"]);
        assert_eq!(out["tracestate"], "vendor=1");
    }
}
