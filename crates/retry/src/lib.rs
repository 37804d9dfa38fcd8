//! Retries for an llm-layers stack, **only before the commit point**.
//!
//! A failed attempt (the response future failed: no token reached the caller) is retried
//! when the [`Policy`] says so; after the commit point errors pass through as stream items,
//! and a stream that yielded content is never replayed. For a caller that wants one whole
//! answer (the [`WholeAnswer`](llm_layers_core::WholeAnswer) extension, which the gateway
//! sets on non-streaming calls) the commit point is the end of the stream, so a mid-stream
//! failure is retried too and the answer is buffered.
//!
//! - the default [`DefaultPolicy`] retries what [`Classify`](llm_layers_core::Classify)
//!   calls retriable and keeps the failing provider out of the next attempt
//!   (`provider.ignore`);
//! - [`ExponentialBackoff`] with **full jitter** by default, or [`DecorrelatedJitter`], from a
//!   seedable RNG ([`RetryLayerBuilder::seed`]);
//! - **Retry-After** is honoured exactly (never earlier), up to a maximum (30 s);
//! - a **retry budget** ([tower's `TpsBudget`](tower::retry::budget::TpsBudget)) shared by
//!   every clone caps retries at a share of requests, so retries cannot storm;
//! - **deadline-aware**: no backoff is slept, and no attempt started, that would end past the
//!   request's [`Deadline`](llm_layers_core::Deadline): the last error is returned at once;
//! - metrics: `llm_retry_requests_total`, `llm_retries_total{reason}`,
//!   `llm_retry_budget_exhausted_total`, `llm_retry_gave_up_total{reason}`;
//!   [`ResponseMeta::attempt`](llm_layers_core::ResponseMeta) says which attempt served.
//!
//! # Ordering
//!
//! Outside the per-attempt timeout (so a first-token timeout is retried) and outside hedge
//! and breaker; inside rate limiting (a retry should not skip the queue) and inside a
//! total-time `TimeoutLayer` whose deadline bounds the retries.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, LlmError, Message};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_retry::{DefaultPolicy, RetryLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mock = MockChat::new();
//! mock.push(Script::error(LlmError::status(http::StatusCode::SERVICE_UNAVAILABLE, None)));
//! mock.push(Script::tokens(Duration::ZERO, 2, Duration::ZERO));
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().policy(DefaultPolicy::new(3)).seed(7).build()?)
//!     .service(mock.clone());
//! let stream = svc.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
//! assert_eq!(stream.meta().attempt, 2);
//! assert_eq!(mock.calls(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backoff;
mod future;
mod layer;
mod policy;
mod service;
mod waits;

pub use backoff::{Backoff, DecorrelatedJitter, ExponentialBackoff};
pub use future::ResponseFuture;
pub use layer::{RetryLayer, RetryLayerBuilder};
pub use policy::{DefaultPolicy, Policy};
pub use service::Retry;
