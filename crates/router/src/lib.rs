//! Routing for an llm-layers stack, decided in the caller at the first token: **latency
//! tiers** (a model is a candidate set with an SLA) and a **learned provider order** per
//! model.
//!
//! OpenRouter's `sort: "latency"` and `preferred_max_latency` rank providers by what
//! OpenRouter measures on its side and know nothing of your SLA. This layer reads the
//! [`LatencyStore`](llm_layers_latency::LatencyStore) that a per-attempt `LatencyLayer`
//! fills: TTFT quantiles and success rates per model and per (model, provider), measured at
//! the first token, as your callers see them.
//!
//! - **Tiers** ([`TierConfig`]): a request whose `model` is `tier:NAME` (or that carries
//!   the [`UseTier`] extension) goes to the first candidate whose TTFT quantile and success
//!   rate meet the tier's SLA; candidates with too few samples get a bounded share of calls
//!   (`explore`, counted exactly, no randomness); when none meet it, the best measured one.
//!   A candidate that breaks the SLA is skipped for a cool-down, then explored, and chosen
//!   again only once its quantile is under `recover_ratio` of the bound: no flapping. The
//!   other candidates go into the [`Alternatives`](llm_layers_core::Alternatives) extension
//!   (a hedge policy can race the next one) and, with `fallback_models`, into OpenRouter's
//!   `models` fallback list. An unknown tier is
//!   [`ErrorKind::BadRequest`](llm_layers_core::ErrorKind::BadRequest).
//! - **Learned provider order** ([`LearnedOrderConfig`], on by default): every request's
//!   `provider.order` is set to the providers of its model, fastest measured first (by a
//!   TTFT quantile, leaving out those failing too often; the leader keeps its place until
//!   clearly beaten). `allow_fallbacks` is kept, and a caller's own `order` or `sort` is
//!   never overwritten; its `only` and `ignore` filter the order. A bounded share of calls
//!   is left to OpenRouter's own routing or sent to the least-sampled provider, so every
//!   provider keeps being measured and a change shows within the store's window.
//! - The decision and its reason are in the stream's
//!   [`Route`] in [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions) and in the metric
//!   `llm_router_decisions_total{tier, reason, order}`; `llm_router_downgrades_total{tier,
//!   model}` counts SLA breaks.
//!
//! Configuration is a serde type ([`RouterConfig`]), validated by
//! [`RouterLayer::from_config`] with typed errors.
//!
//! # Ordering
//!
//! Outside retry and hedge, so each attempt sees the routed model and order; inside the
//! per-call latency layer and the rate limiter. The store it reads is filled by a
//! per-attempt `LatencyLayer` next to the leaf.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, Message};
//! use llm_layers_latency::{LatencyLayer, LatencyStore, Outcome};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_router::{Route, RouteReason, RouterConfig, RouterLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let store = LatencyStore::builder().min_samples(5).build().unwrap();
//! let config: RouterConfig = serde_json::from_value(serde_json::json!({
//!     "tiers": [{"name": "fast", "models": ["big/slow", "small/quick"],
//!                "sla": {"ttft_ms": 1500, "ttft_quantile": 0.95}}]
//! })).unwrap();
//! let router = RouterLayer::from_config(config, store.clone()).unwrap();
//! let mock = MockChat::with_default(Script::tokens(Duration::from_millis(100), 2, Duration::ZERO));
//! let svc = ServiceBuilder::new()
//!     .layer(router)
//!     .layer(LatencyLayer::builder().store(store.clone()).build().unwrap())
//!     .service(mock.clone());
//!
//! // The slow model's recent p95 breaks the 1.5 s SLA; the quick one meets it.
//! for _ in 0..10 {
//!     store.record(("big/slow", None), Some(Duration::from_secs(4)), None, Outcome::Ok);
//!     store.record(("small/quick", None), Some(Duration::from_millis(300)), None, Outcome::Ok);
//! }
//! let stream = svc.oneshot(ChatRequest::new("tier:fast", vec![Message::user("hi")])).await.unwrap();
//! let route = stream.meta().extensions.get::<Route>().cloned().unwrap();
//! assert_eq!((route.model.as_str(), route.reason), ("small/quick", RouteReason::Sla));
//! assert_eq!(mock.requests()[0].model(), "small/quick");
//! # });
//! ```

pub mod config;
mod future;
mod layer;
mod order;
mod route;
mod service;
mod tier;

pub use config::{CandidateConfig, LearnedOrderConfig, RouterConfig, SlaConfig, TierConfig};
pub use future::ResponseFuture;
pub use layer::{RouterLayer, RouterLayerBuilder, TIER_PREFIX, UseTier};
pub use route::{OrderDecision, Route, RouteReason};
pub use service::Router;
