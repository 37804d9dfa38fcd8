//! The headers the gateway writes and reads, named once: `HeaderMap::insert` or `get` given a
//! `&str` checks and lowercases the name on every call, a few hundred instructions a header.

use http::HeaderName;

/// Where a call's time went: the gateway's, the wait for a first token, the upstream's.
pub(crate) const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
/// The provider that served the answer.
pub(crate) const PROVIDER: HeaderName = HeaderName::from_static("x-llm-provider");
/// Upstream requests the call made.
pub(crate) const ATTEMPTS: HeaderName = HeaderName::from_static("x-llm-attempts");
/// What the answer cost, USD.
pub(crate) const COST: HeaderName = HeaderName::from_static("x-llm-cost-usd");
/// Whether [`COST`] was reported by the upstream or estimated.
pub(crate) const COST_SOURCE: HeaderName = HeaderName::from_static("x-llm-cost-source");
/// What every attempt cost, the answer's and those given up, USD.
pub(crate) const ATTEMPTS_COST: HeaderName = HeaderName::from_static("x-llm-attempts-cost-usd");
/// Tells a buffering reverse proxy (nginx) to pass an event stream on as it comes.
pub(crate) const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The caller's tenant (trusted keys and an open gateway only).
pub(crate) const TENANT: HeaderName = HeaderName::from_static("x-tenant");
/// `low`, `normal` or `high`.
pub(crate) const PRIORITY: HeaderName = HeaderName::from_static("x-priority");
/// `on` or `off`: mid-stream resume for this call.
pub(crate) const RESUME: HeaderName = HeaderName::from_static("x-llm-resume");
/// `on` or `off`: coalescing for this call.
pub(crate) const COALESCE: HeaderName = HeaderName::from_static("x-llm-coalesce");
/// `fastest`, `cheapest` or `weighted=W`.
pub(crate) const OBJECTIVE: HeaderName = HeaderName::from_static("x-llm-objective");
/// W3C trace context: the caller's span.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C trace context: the vendors' state.
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
