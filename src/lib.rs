//! llm-layers: composable Tower middleware for calling LLM providers, around a leaf service
//! that streams chat completions from OpenRouter.
//!
//! This umbrella crate re-exports the workspace crates, one Cargo feature per crate:
//!
//! | feature | crate | what |
//! |---|---|---|
//! | (always) | [`core`] | `ChatRequest`, `ChatStream`, `LlmError`, `Classify`, the SSE parser |
//! | `openrouter` | `openrouter` | the leaf service: pooled hyper + rustls, HTTP/2, SSE |
//! | `timeout` | `timeout` | first-token, idle and total deadlines |
//! | `retry` | `retry` | retries before the first token: jitter, Retry-After, budget |
//! | `latency` | `latency` | TTFT, chunk gaps, duration, tokens/s to `metrics` and a store |
//! | `hedge` | `hedge` | a second attempt when the first token is late; first to commit wins |
//! | `breaker` | `breaker` | per (model, provider) circuit breaker writing `provider.ignore` |
//! | `ratelimit` | `ratelimit` | keyed buckets for requests and tokens, priority concurrency |
//! | `router` | `router` | latency tiers with SLAs, learned provider order per model |
//! | `mock` | `mock` | a scripted service and a mock OpenRouter server |
//! | `coalesce` | `coalesce` | identical concurrent calls share one upstream call |
//! | `cost` | `cost` | what each call cost (reported, else usage at the endpoint's price), attempts given up included |
//! | `redis` | `redis` | limits, holds, breakers and latency shared by replicas through Redis |
//! | `full` | all of the above | |
//!
//! Every service is a `Service<ChatRequest, Response = ChatStream, Error = LlmError>` whose
//! future resolves **at the first token**; see [`core`].
//!
//! ```
//! # #[cfg(all(feature = "mock", feature = "timeout", feature = "retry"))]
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers::core::{ChatRequest, Message};
//! use llm_layers::mock::{MockChat, Script};
//! use llm_layers::retry::RetryLayer;
//! use llm_layers::timeout::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // In production the innermost service is `llm_layers::openrouter::OpenRouter`.
//! let upstream = MockChat::new();
//! upstream.push(Script::tokens(Duration::from_secs(60), 1, Duration::ZERO)); // stuck provider
//! upstream.push(Script::tokens(Duration::from_millis(800), 3, Duration::from_millis(20)));
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().seed(1).build()?)
//!     .layer(TimeoutLayer::builder().first_token(Duration::from_secs(5)).build()?)
//!     .service(upstream);
//! let answer = svc.oneshot(ChatRequest::new("openai/gpt-4o-mini", vec![Message::user("hi")]))
//!     .await?
//!     .collect().await?;
//! assert_eq!(answer.choices[0].message.content.as_deref(), Some("t0 t1 t2 "));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "breaker")]
pub use llm_layers_breaker as breaker;
#[cfg(feature = "coalesce")]
pub use llm_layers_coalesce as coalesce;
pub use llm_layers_core as core;
#[cfg(feature = "cost")]
pub use llm_layers_cost as cost;
#[cfg(feature = "hedge")]
pub use llm_layers_hedge as hedge;
#[cfg(feature = "latency")]
pub use llm_layers_latency as latency;
#[cfg(feature = "mock")]
pub use llm_layers_mock as mock;
#[cfg(feature = "openrouter")]
pub use llm_layers_openrouter as openrouter;
#[cfg(feature = "ratelimit")]
pub use llm_layers_ratelimit as ratelimit;
#[cfg(feature = "redis")]
pub use llm_layers_redis as redis;
#[cfg(feature = "resume")]
pub use llm_layers_resume as resume;
#[cfg(feature = "retry")]
pub use llm_layers_retry as retry;
#[cfg(feature = "router")]
pub use llm_layers_router as router;
#[cfg(feature = "timeout")]
pub use llm_layers_timeout as timeout;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(all(
    doctest,
    feature = "openrouter",
    feature = "timeout",
    feature = "retry"
))]
#[doc = include_str!("../README.md")]
mod readme {}
