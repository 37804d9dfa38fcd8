//! A circuit-breaking provider blacklist per (model, provider) for an llm-layers stack.
//!
//! One model id on OpenRouter is a pool of providers, and one slow or failing provider makes
//! the whole model look bad. This layer keeps a breaker per (model, provider slug), shared by
//! every clone and bounded:
//!
//! - **what fails** is the [`Classify`](llm_layers_core::Classify) trait's call
//!   (`provider_failure`): errors before the first token, mid-stream errors, truncation, and
//!   **slow calls** ([`SlowCall`]: a fixed TTFT threshold or a multiple of the model's recorded
//!   median), so a provider that is alive but slow is avoided too;
//! - **trip rule**: N consecutive failures (while no other call is in flight), or a failure
//!   ratio over the last calls (with a minimum count) that counts the calls still in flight
//!   (at most one window of them) as not failed, so fast errors cannot outrun slow successes
//!   in a burst and a provider failing at once still trips under sustained load; outcomes are
//!   recorded at the first token (success, or failure when slow) and at a mid-stream error;
//!   open for a backoff that doubles with each trip in a row, with jitter;
//!   then half-open, admitting a bounded number of probes; a good probe closes it, a bad one
//!   re-opens it for longer;
//! - **on each request** the open providers of its model are **added to `provider.ignore`**
//!   (display names mapped to slugs, by a configured map or the default), so OpenRouter routes
//!   around them; the caller's own `only` and `ignore` are kept. When every provider known for
//!   the model is open (or the caller's `only` leaves none), the call fails fast with
//!   [`ErrorKind::CircuitOpen`](llm_layers_core::ErrorKind::CircuitOpen) naming them and the
//!   time until the first half-opens;
//! - **throttled is not broken**: a provider's `429` (what the
//!   [`Classify`](llm_layers_core::Classify) calls `throttled`) *holds* that (model,
//!   provider) for its `Retry-After` (default 1 s, capped at 60 s:
//!   [`BreakerLayerBuilder::hold`]); a held provider is ignored like an open one but never
//!   counted as a failure, and while another provider is free the error is marked
//!   [`retry_elsewhere`](llm_layers_core::LlmError::retry_elsewhere) so a retry goes there
//!   at once; when every known provider is held (or open) the call fails fast with
//!   [`ErrorKind::RateLimited`](llm_layers_core::ErrorKind::RateLimited) and the wait for the
//!   first one back, so the upstream is never asked for nothing; an upstream `404` "no
//!   endpoints" caused by the ignore list this layer sent becomes that fast error;
//! - **in-flight evidence**: a call aimed at one provider (first of its `order`, or its only
//!   one) that has no first token by the slow threshold counts against that provider at that
//!   moment (once), so a provider that starts to hang is opened within about one threshold,
//!   not at a timeout;
//! - the provider comes from the stream (`provider`) or the error (`metadata.provider_name`);
//!   when unknown (a reset before headers) the failure counts against the model as a whole,
//!   which opens only when its whole window holds no success; a first-token timeout nobody
//!   can name is not counted there (hung calls time out together while other providers
//!   answer);
//! - the request path takes one short lock, never across an await and never per chunk;
//!   [`BreakerLayer::snapshot`] reads the states; metrics `llm_breaker_state` (0 closed,
//!   1 half-open, 2 open), `llm_breaker_trips_total`, `llm_breaker_rejected_total`;
//! - several replicas share what they learn through [`BreakerLayer::changes`] (trips, closes
//!   and holds made here) and [`BreakerLayer::apply`] (another replica's): `llm-layers-redis`
//!   carries them and coordinates half-open probes.
//!
//! # Ordering
//!
//! Inside retry and hedge (each attempt sees the latest states, and a retry after a trip goes
//! elsewhere), outside the per-attempt timeout (so first-token timeouts count as failures).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
//! use std::time::Duration;
//! use llm_layers_breaker::BreakerLayer;
//! use llm_layers_core::{ChatRequest, LlmError, Message};
//! use llm_layers_mock::{MockChat, Script};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let bad = LlmError::status(http::StatusCode::BAD_GATEWAY, None).with_provider("Flaky Host");
//! let mock = MockChat::with_default(Script::error(bad));
//! let svc = ServiceBuilder::new()
//!     .layer(BreakerLayer::builder().consecutive_failures(2).build()?)
//!     .service(mock.clone());
//! for _ in 0..2 {
//!     let _ = svc.clone().oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await;
//! }
//! // Tripped: the only provider known for "m" is open, so the next call fails fast.
//! let e = svc.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await.unwrap_err();
//! assert_eq!(e.open_providers(), ["flaky-host"]);
//! assert_eq!(mock.calls(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod future;
mod layer;
mod registry;
mod service;

pub use future::ResponseFuture;
pub use layer::{BreakerLayer, BreakerLayerBuilder, SlowCall};
pub use registry::{BreakerInfo, Change, State};
pub use service::Breaker;
