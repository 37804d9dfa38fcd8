//! Latency recording for an llm-layers stack: time to first token, time per output chunk,
//! duration, tokens per second and outcome, per (model, provider), to the
//! [`metrics`](https://docs.rs/metrics) facade and to a [`LatencyStore`] that the hedge,
//! breaker and router layers read.
//!
//! TTFT is measured **at the first token** (the commit point), never at the headers or a
//! keep-alive comment: a model's queue shows up there and nowhere else.
//!
//! # Metrics
//!
//! OTel GenAI client metrics in Prometheus form ([`names`]), with the bucket boundaries of
//! the semantic conventions ([`HISTOGRAM_BUCKETS`](names::HISTOGRAM_BUCKETS)):
//!
//! | metric | unit | labels |
//! |---|---|---|
//! | `gen_ai_client_operation_duration_seconds` | s | all, plus `error.type` on failures |
//! | `gen_ai_client_operation_time_to_first_chunk_seconds` | s | all |
//! | `gen_ai_client_operation_time_per_output_chunk_seconds` | s | all |
//! | `gen_ai_client_token_usage` | tokens | all, plus `gen_ai.token.type` = `input`/`output` |
//! | `llm_client_output_tokens_per_second` | tokens/s | all |
//! | `llm_client_calls_total` | calls | all, plus `outcome` = `ok`, an error type, `cancelled` |
//!
//! Labels: `gen_ai.operation.name` = `chat`, `gen_ai.provider.name` = `openrouter`,
//! `gen_ai.request.model` (capped: past `max_models` distinct values, `_OTHER`),
//! `gen_ai.response.model`, `openrouter.provider`, `llm.prompt_size_bucket` (powers of 4 of
//! the prompt's ≈ tokens), `llm.scope` (`call` or `attempt`). No label holds user text or ids.
//!
//! # The store's estimator, and how fast it forgets
//!
//! Per key, HDR sketches (2 significant digits: ±1 % on any quantile) of TTFT, tokens per
//! second, the longest gap per stream and how long censored attempts ran, in two halves of
//! a sliding window (60 s by default): a sample counts for between half and all of the
//! window, so a provider that changed shows within one window and one not called for a
//! window is unknown again. Reads come from a snapshot recomputed at most every 250 ms.
//! A published [`Prior`] (OpenRouter's per-endpoint stats, fetched by a [`PriorFeed`])
//! stands in before the first sample and is worth `prior_weight` calls (5) after it:
//! each quantile is `exp((k·ln prior + n·ln measured) / (k + n))`, `n` counting samples and
//! censored attempts, so it has half the say after 5 of our calls and under a tenth after
//! 50. A prior does not age with the window: it stays until the feed replaces it (every 5
//! minutes by default).
//!
//! # Ordering
//!
//! Twice in a typical stack: outermost with [`Scope::Call`] (what the caller saw, retries
//! and hedges included) and innermost, next to the leaf, with [`Scope::Attempt`] and the
//! store (what each provider did). A `tracing` span covers each call (`llm.call`) or attempt
//! (`llm.attempt`, its `llm_layers.attempt.kind` first, retry, hedge or continuation),
//! attributed by the OpenTelemetry GenAI conventions; layers below and continuations are its
//! children. With no subscriber they are disabled callsites.
//!
//! Several replicas learn once: [`LatencyStore::export`] gives this process's own windows as
//! mergeable [`Summary`]s and [`LatencyStore::merge_fleet`] reads the others' with its own
//! (`llm-layers-redis` carries them).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, Message};
//! use llm_layers_latency::{LatencyLayer, LatencyStore, Scope};
//! use llm_layers_mock::{MockChat, Script};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let store = LatencyStore::builder().min_samples(1).build()?;
//! let mock = MockChat::with_default(Script::tokens(Duration::from_millis(700), 3, Duration::ZERO).provider("Alpha"));
//! let svc = ServiceBuilder::new()
//!     .layer(LatencyLayer::builder().scope(Scope::Attempt).store(store.clone()).build()?)
//!     .service(mock);
//! svc.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?.collect().await?;
//! let p50 = store.ttft_quantile("m", Some("Alpha"), 0.5).ok_or("no p50")?;
//! // The sketch keeps 2 significant digits: within 1 %.
//! assert!(p50 >= Duration::from_millis(700) && p50 <= Duration::from_millis(707));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod future;
mod layer;
pub mod names;
mod priors;
mod service;
mod span;
mod stats;
mod store;
mod stream;

pub use future::ResponseFuture;
pub use layer::{LatencyLayer, LatencyLayerBuilder, Scope};
pub use priors::{FetchEndpoints, OnEndpoints, PriorFeed, PriorFeedBuilder};
pub use service::{Latency, prompt_bucket};
pub use store::{LatencyStore, LatencyStoreBuilder, OTHER, Outcome, Prior, Stats, Summary};
