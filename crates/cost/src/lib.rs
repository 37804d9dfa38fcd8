//! What each call cost, for an llm-layers stack: the upstream's own figure (`usage.cost`,
//! which OpenRouter reports) when it gives one, else the call's usage at the serving
//! endpoint's price; and what the attempts the stack gave up before their first token cost
//! (a hedge that lost, an attempt cut by a first-token deadline: an upstream may bill each
//! for the prompt it read, and reports nothing for them), estimated at the model's price.
//!
//! [`CostLayer`] puts a [`CostReport`] in every stream's
//! [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions), filled when the
//! usage chunk passes: read it once the stream has ended. Prices come from a function of
//! (model, provider): a catalog you fetched, a config file, OpenRouter's per-endpoint
//! `pricing` (`llm_layers_latency::PriorFeed::price`). A model with no price gets no
//! estimate, never a cost of 0.
//!
//! # Ordering
//!
//! Outside retry and hedge, so it sees the stream the caller gets and the attempts given up
//! on the way: it gives each call a [`GivenUp`](llm_layers_core::GivenUp) count (unless the
//! request carries one) that a per-attempt `LatencyLayer` below counts into.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, Message, price::{Cost, Price}};
//! use llm_layers_cost::{CostLayer, CostReport};
//! use llm_layers_mock::{MockChat, Script};
//! use tower::{Layer, ServiceExt};
//!
//! let price = Price { prompt: 0.000001, completion: 0.000002, request: 0.0, cache_read: None };
//! let layer = CostLayer::new(move |_model: &str, _provider: Option<&str>| Some(price));
//! let mock = MockChat::with_default(
//!     Script::tokens(Duration::ZERO, 3, Duration::ZERO).finish("stop").usage(100, 3),
//! );
//! let stream = layer.layer(mock).oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
//! let report = stream.meta().extensions.get::<CostReport>().cloned().ok_or("a report")?;
//! stream.collect().await?;
//! // 100 × 1e-6 + 3 × 2e-6, an estimate: the mock reports no cost.
//! let cost = report.cost().ok_or("a cost")?;
//! assert!(matches!(cost, Cost::Estimated(_)) && (cost.usd() - 0.000106).abs() < 1e-12);
//! assert_eq!(report.given_up(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod future;
mod layer;
mod report;
mod service;

pub use future::ResponseFuture;
pub use layer::{CostLayer, PriceFn};
pub use report::CostReport;
pub use service::Costed;
