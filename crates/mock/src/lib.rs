//! Mock upstreams for [llm-layers], so everything runs and is tested with no API key.
//!
//! - [`MockChat`] and [`Script`]: a scripted in-process `Service<ChatRequest>` for unit tests
//!   of one layer, on `tokio::time` (it runs under `tokio::time::pause()`), recording the
//!   requests it saw and counting open, completed and cancelled streams.
//! - [`MockChat::scenario`]: a [`Scenario`] played in process with no sockets, what the
//!   OpenRouter leaf would return for it, deterministic under paused time: whole stacks
//!   tested on real-world timings in no wall-clock time.
//! - [`MockServer`] and [`Scenario`]: a mock OpenRouter HTTP server on an ephemeral loopback
//!   port (HTTP/1.1 and h2c), with providers drawn by weight while honouring the request's
//!   provider preferences, fat-tailed time to first token, faults (statuses with
//!   `Retry-After`, resets, hangs, mid-stream error events, truncation, a 200 with an error
//!   body), keep-alive comments, split and coalesced writes, CRLF; seeded and reproducible,
//!   with counters that prove nothing leaks.
//! - Answers are a function of the request ([`expected_answer`]), so a test can check that no
//!   token is missing, duplicated, reordered or taken from another request.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use llm_layers_mock::{MockServer, Scenario};
//! // A real-world fat tail, run 1000 times faster.
//! let server = MockServer::start(Scenario::fat_tail().with_time_scale(0.001)).await?;
//! println!("OPENROUTER_BASE_URL={}", server.base_url());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The binary `llm-layers-mock --preset fat_tail --listen 127.0.0.1:8090` (or
//! `--scenario FILE.json|FILE.toml`) serves the same for manual runs and benchmarks.
//!
//! [llm-layers]: https://github.com/llm-layers/llm-layers

mod answer;
mod inprocess;
pub mod plan;
mod scenario;
mod scripted;
mod server;
mod writer;

pub use answer::{
    PASSAGE, answer_pieces, answer_pieces_as, answer_tag, answer_token, expected_answer,
    whole_answer_tokens,
};
pub use scenario::{
    Dist, Faults, OPENAI_CHAT_FIELDS, PriceSpec, ProviderSpec, Scenario, ScenarioError, StatusFault,
};
pub use scripted::{MockChat, Script, ScriptStream};
pub use server::{Counters, MockBody, MockServer};

/// What the mock server charges for every model: published as each model's `pricing` in
/// `GET /models` (USD per token, decimal strings as OpenRouter writes them) and reported as
/// `usage.cost` on each answer (unless [`Scenario::report_cost`] is off).
pub const PRICE: llm_layers_core::price::Price = llm_layers_core::price::Price {
    prompt: 0.000_001,
    completion: 0.000_002,
    request: 0.0,
    cache_read: None,
};
