//! First-token hedging for an llm-layers stack.
//!
//! Send the request; if it has not **committed** (first token) by the hedge delay, start
//! another attempt. The first attempt to commit wins and its stream is returned; every other
//! attempt is dropped at that instant, which cancels it upstream. An attempt that fails
//! before committing does not end the race while another one runs; the race fails only when
//! every attempt failed, with the most informative error. Hedging races on the first token,
//! not on headers (which OpenRouter sends at once) and not on the whole answer.
//!
//! - **Delay**: [`HedgeDelay::Fixed`], or [`HedgeDelay::Quantile`] of the recent TTFT of the
//!   provider the router sent the first attempt to ([`ProviderPlan`](llm_layers_core::ProviderPlan);
//!   the model's when that provider is unknown, and no later than the plan's race for an
//!   exploring call), read from a [`LatencyStore`](llm_layers_latency::LatencyStore),
//!   clamped, with a cold start value;
//! - **Budget**: hedges (and the races of exploring calls, which are hedges) are at most a
//!   share of requests over a window, a hard cap counted as a bill counts them
//!   ([`ShareBudget`](llm_layers_core::budget::ShareBudget); a small floor for quiet
//!   services, never added to the share), shared by clones; a hedge that would break it is
//!   not sent. No hedge fires past the request's deadline;
//! - **What a hedge sends** is a [`HedgePolicy`]: [`FollowPlan`] (the default: the
//!   router's plan, else the same request), [`SameRequest`], [`SortByLatency`],
//!   [`OtherModels`] (race another model), or a closure; up to `max_attempts` in all;
//! - **Readiness**: the inner service is made ready only when a hedge fires, right before
//!   its call, never long before ([tower#472](https://github.com/tower-rs/tower/pull/472));
//! - the stream's [`ResponseMeta`](llm_layers_core::ResponseMeta) says how many attempts
//!   ran, and its extensions which won ([`HedgeWinner`]); metrics `llm_hedge_sent_total`,
//!   `llm_hedge_won_total`, `llm_hedge_wasted_total`, `llm_hedge_budget_exhausted_total`.
//!
//! # Ordering
//!
//! Inside retry (a race that failed whole can be retried) and outside the per-attempt
//! timeout and latency layers (each attempt gets its own first-token limit, and the store
//! learns per provider). Hedging alone cannot cut the tail below its own delay; with the
//! breaker and the router avoiding slow providers it gets close to the oracle (every call
//! to the fastest provider: see the README's tail table).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, Message};
//! use llm_layers_hedge::{HedgeDelay, HedgeLayer, HedgeWinner};
//! use llm_layers_mock::{MockChat, Script};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mock = MockChat::new();
//! mock.push(Script::tokens(Duration::from_secs(20), 2, Duration::ZERO).provider("Slow"));
//! mock.push(Script::tokens(Duration::from_secs(1), 2, Duration::ZERO).provider("Fast"));
//! let svc = ServiceBuilder::new()
//!     .layer(HedgeLayer::builder().delay(HedgeDelay::Fixed(Duration::from_secs(2))).build()?)
//!     .service(mock.clone());
//! let start = tokio::time::Instant::now();
//! let stream = svc.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
//! assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(3)); // 2 s delay + 1 s
//! assert_eq!(stream.meta().provider.as_deref(), Some("Fast"));
//! assert_eq!(stream.meta().extensions.get::<HedgeWinner>(), Some(&HedgeWinner(1)));
//! assert_eq!(mock.cancelled(), 1); // the slow attempt was dropped
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod future;
mod layer;
mod policy;
mod service;
mod upstreams;

pub use future::ResponseFuture;
pub use layer::{HedgeLayer, HedgeLayerBuilder};
pub use policy::{
    FollowPlan, HedgeDelay, HedgePolicy, NextCandidate, OtherModels, SameRequest, SortByLatency,
};
pub use service::Hedge;
pub use upstreams::{ChooseUpstream, ChooseUpstreamLayer, NextUpstream, Upstreams, UseUpstream};

/// Which attempt won a call that sent a hedge (0 = the original, 1 = the first hedge), in
/// the stream's [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions);
/// absent when no hedge was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HedgeWinner(pub u32);

/// How many attempts of a call were still running when another won, and were cancelled
/// then, in the stream's [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions);
/// absent when none was. An upstream may bill a cancelled attempt for the prompt it read:
/// what a budget charges for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HedgeCancelled(pub u32);
