//! First-token, idle-gap and total deadlines for an llm-layers stack.
//!
//! One `timeout = 120` hides the truth: a provider that stalls for 120 s looks like a slow
//! model. [`TimeoutLayer`] splits it into three independent limits, each optional:
//!
//! - **first token**: the response future (which resolves at the commit point) must resolve
//!   in time, else [`TimeoutKind::FirstToken`](llm_layers_core::TimeoutKind::FirstToken);
//! - **idle**: once streaming, the gap between two chunks must stay under the limit, else an
//!   `Err` item [`TimeoutKind::Idle`](llm_layers_core::TimeoutKind::Idle) ends the stream
//!   and the upstream is dropped (keep-alive comments never reach the stream, so they do
//!   not reset it);
//! - **total**: from the call to the end of the stream, else an `Err` item (or a failed
//!   future) [`TimeoutKind::Total`](llm_layers_core::TimeoutKind::Total). The total limit
//!   also sets (or tightens) the request's [`Deadline`](llm_layers_core::Deadline), so
//!   retry and hedge inside it know how much time is left.
//!
//! Limits may also be derived from what was measured ([`TimeoutLayerBuilder::idle_adaptive`],
//! [`TimeoutLayerBuilder::first_token_adaptive`]): `factor ×` a quantile the latency store
//! keeps for the model (and, for the idle limit, the provider that serves), clamped to
//! `[min, max]`, `max` while nothing is measured (a limit set so is read again every `min`
//! while the attempt or the stream waits). A stream that goes quiet is then cut within seconds
//! of what that provider's streams really do.
//!
//! The connect timeout lives on the leaf's connector
//! (`OpenRouter::builder().connect_timeout(..)`). One call's timeline:
//!
//! ```text
//! call ──connect──► headers ──(keep-alives)──► first token ──chunk──chunk──► end
//! |<- connect ->|                                 |<-idle->|<-idle->|
//! |<----------------- first token ------------->|
//! |<------------------------------------ total ------------------------------>|
//! ```
//!
//! # Differences from `tower::timeout::Timeout`
//!
//! In an llm-layers stack the response future resolves at the first token, so
//! `tower::timeout::Timeout` already is a first-token timeout; it knows nothing of the
//! stream after it, and its error is a `BoxError`. This layer adds the idle and total limits
//! on the stream, typed [`LlmError`](llm_layers_core::LlmError)s, per-request overrides and
//! the deadline extension.
//!
//! # Ordering
//!
//! Put it inside retry and hedge (so each attempt has its own first-token limit and a
//! timed-out attempt can be retried) and, for the total limit, outside them too: a second
//! `TimeoutLayer` with only `total` at the top of the stack bounds the whole call, and its
//! deadline stops retries and hedges that could not finish.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, ErrorKind, Message, TimeoutKind};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_timeout::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mock = MockChat::with_default(Script::tokens(Duration::from_secs(9), 3, Duration::ZERO));
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::builder()
//!         .first_token(Duration::from_secs(5))
//!         .idle(Duration::from_secs(10))
//!         .total(Duration::from_secs(120))
//!         .build()
//!         ?)
//!     .service(mock);
//! let err = svc.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod future;
mod layer;
mod service;
mod stream;

pub use future::ResponseFuture;
pub use layer::{AdaptiveLimit, TimeoutLayer, TimeoutLayerBuilder, Timeouts};
pub use service::Timeout;
pub use stream::TimeoutStream;
