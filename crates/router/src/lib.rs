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
//!   `provider.order` is set to the providers of its model, the one a Thompson draw finds
//!   fastest first (by a TTFT quantile, leaving out those failing too often), the others by
//!   measured TTFT. A provider known to be clearly slower is drawn only as often as its
//!   uncertainty allows (few samples, or samples gone stale), and such an *exploring* call
//!   carries a [`ProviderPlan`](llm_layers_core::ProviderPlan) asking the hedge to race the
//!   best provider after that one's own p75: learning costs no tail. `allow_fallbacks` is
//!   kept, and a caller's own `order` or `sort` is never overwritten; its `only` and
//!   `ignore` filter the order. A small share (`explore`, 1 %) is left to the upstream's own
//!   routing, raced the same way, so new providers show up. See [the
//!   estimator](#the-estimator-and-how-fast-it-forgets).
//! - **Objectives** ([`Objective`]): a tier (`"objective"`), the learned order of concrete
//!   models ([`LearnedOrderConfig::objective`]) or a call (the [`Objective`] extension)
//!   chooses what the provider order optimises: `fastest` (the above), `cheapest` that
//!   meets the SLA (each endpoint's published price at the call's token estimate, its TTFT
//!   quantile and success rate read with the same uncertainty), or `weighted=W`. The hedge
//!   of a priced order races the same choice, never a dearer endpoint.
//! - **Priors** ([`RouterLayerBuilder::priors`]): a
//!   [`PriorFeed`](llm_layers_latency::PriorFeed) fetches the upstream's published
//!   per-endpoint stats (OpenRouter's `/models/{id}/endpoints`) in the background and puts
//!   them in the store as priors worth a few calls, so a new process ranks providers from
//!   its first calls; its own samples replace them (a wrong prior costs a few dozen calls).
//! - The decision and its reason are in the stream's
//!   [`Route`] in [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions) and in the metric
//!   `llm_router_decisions_total{tier, reason, order}`; `llm_router_downgrades_total{tier,
//!   model}` counts SLA breaks.
//!
//! # The estimator and how fast it forgets
//!
//! Per (model, provider) the store keeps HDR sketches over a sliding window (60 s by
//! default, two halves: a sample counts for between half and all of it), so what happened
//! more than one window ago is forgotten and a provider not called for a window is unknown
//! again. A provider's belief is the log of its ranking quantile (`quantile`, p90) from
//! the window blended with its prior (a weighted geometric mean, the prior worth
//! `LatencyStoreBuilder::prior_weight` calls, 5 by default), with an uncertainty
//! `1.7·σ/√(n + k)` (`σ` its log-spread from p50 and p90, `n` its samples, `k` the prior's
//! weight): the standard error of a lognormal's log-quantile. Each call draws once per
//! provider from those beliefs (seeded, [`RouterLayerBuilder::seed`]); the lowest draw goes
//! first. Providers within `stickiness` (10 %) of the best share the calls.
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
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_core::{ChatRequest, Message};
//! use llm_layers_latency::{LatencyLayer, LatencyStore, Outcome};
//! use llm_layers_mock::{MockChat, Script};
//! use llm_layers_router::{Route, RouteReason, RouterConfig, RouterLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let store = LatencyStore::builder().min_samples(5).build()?;
//! let config: RouterConfig = serde_json::from_value(serde_json::json!({
//!     "tiers": [{"name": "fast", "models": ["big/slow", "small/quick"],
//!                "sla": {"ttft_ms": 1500, "ttft_quantile": 0.95}}]
//! }))?;
//! let router = RouterLayer::from_config(config, store.clone())?;
//! let mock = MockChat::with_default(Script::tokens(Duration::from_millis(100), 2, Duration::ZERO));
//! let svc = ServiceBuilder::new()
//!     .layer(router)
//!     .layer(LatencyLayer::builder().store(store.clone()).build()?)
//!     .service(mock.clone());
//!
//! // The slow model's recent p95 breaks the 1.5 s SLA; the quick one meets it.
//! for _ in 0..10 {
//!     store.record(("big/slow", None), Some(Duration::from_secs(4)), None, Outcome::Ok);
//!     store.record(("small/quick", None), Some(Duration::from_millis(300)), None, Outcome::Ok);
//! }
//! let stream = svc.oneshot(ChatRequest::new("tier:fast", vec![Message::user("hi")])).await?;
//! let route = stream.meta().extensions.get::<Route>().cloned().ok_or("no route")?;
//! assert_eq!((route.model.as_str(), route.reason), ("small/quick", RouteReason::Sla));
//! assert_eq!(mock.requests()[0].model(), "small/quick");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
mod future;
mod layer;
mod objective;
mod order;
mod route;
mod service;
mod tier;

pub use config::{CandidateConfig, LearnedOrderConfig, RouterConfig, SlaConfig, TierConfig};
pub use future::ResponseFuture;
pub use layer::{ProviderRank, RouterLayer, RouterLayerBuilder, TIER_PREFIX, UseTier};
pub use objective::{Objective, ObjectiveError};
pub use route::{OrderDecision, Route, RouteReason};
pub use service::Router;
