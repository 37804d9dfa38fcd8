//! An OpenAI-compatible gateway in front of OpenRouter, built on llm-layers.
//!
//! `POST /v1/chat/completions` (streaming and not), `GET /v1/models`, `GET /healthz`,
//! `GET /metrics`, `GET /status`. With no `OPENROUTER_API_KEY` it starts the mock OpenRouter in
//! process. Run it with `cargo run -p llm-layers-gateway`; see `src/main.rs`.
//!
//! - [`stack`]: the stack behind it ([`build_stack`]), what a reader comes for;
//! - [`start`] / [`serve`]: the server, its routes and shutdown;
//! - [`keys`]: gateway keys; [`status`]: the status page; [`config`]: flags and environment.

mod access;
pub mod bounds;
pub mod budget;
pub mod config;
mod conn;
pub mod error;
mod handlers;
pub mod keys;
mod names;
#[cfg(feature = "otel")]
pub mod otel;
mod prices;
mod routes;
mod server;
mod sse;
pub mod stack;
pub mod status;
mod tls;
pub mod trace;
pub mod upstreams;

use std::time::SystemTime;

pub use access::LogFormat;
pub use config::{CliExit, Config};
pub use server::{Gateway, Phase, StartError, install_metrics, serve, serve_reloading, start};
pub use stack::{
    ChatService, Parts, Shared, Stack, build_leaf, build_stack, build_stack_reusing,
    build_stack_with_parts, build_stack_with_priors, endpoint_stats_of,
};

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
