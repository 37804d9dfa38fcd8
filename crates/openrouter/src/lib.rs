//! The OpenRouter leaf service of [llm-layers]: every stack ends in it.
//!
//! [`OpenRouter`] is a `Service<ChatRequest, Response = ChatStream, Error = LlmError>`:
//!
//! - **one pooled client shared by every clone** (hyper-util over hyper-rustls with the `ring`
//!   provider and webpki roots), keep-alive, HTTP/2 by ALPN with HTTP/1.1 fallback, optional
//!   h2c prior knowledge for plain `http://` upstreams, `TCP_NODELAY`, a connect timeout;
//! - the request body is serialized once, from the shared body, into `Bytes`;
//! - the response future resolves **at the first token** (keep-alive comments and role-only
//!   chunks do not count); a non-2xx status fails fast with the parsed OpenRouter error and
//!   `Retry-After`; a 200 carrying an error is an error too;
//! - it streams upstream even when the caller asked for `stream: false` (configurable), so
//!   first-token timeouts and hedging protect non-streaming calls as well;
//!   [`ChatStream::collect`](llm_layers_core::ChatStream::collect) gives them one body;
//! - dropping the future or the stream drops the upstream body: the connection closes
//!   (HTTP/1.1) or the stream is reset (HTTP/2), and the provider stops generating;
//! - a model and provider [catalog](OpenRouter::models) with a TTL cache and single-flight
//!   fetches; the API key never appears in `Debug`, errors or logs.
//!
//! ```no_run
//! # async fn run() -> Result<(), llm_layers_core::BoxError> {
//! use llm_layers_core::{ChatRequest, Message};
//! use llm_layers_openrouter::OpenRouter;
//! use tower::ServiceExt;
//!
//! let leaf = OpenRouter::builder()
//!     .api_key(std::env::var("OPENROUTER_API_KEY").unwrap_or_default())
//!     .build()?;
//! let req = ChatRequest::new("openai/gpt-4o-mini", vec![Message::user("Say hi")]);
//! let stream = leaf.oneshot(req).await?; // resolves at the first token
//! println!("served by {:?}", stream.meta().provider);
//! let answer = stream.collect().await?;
//! println!("{}", answer.choices[0].message.content.as_deref().unwrap_or(""));
//! # Ok(()) }
//! ```
//!
//! [llm-layers]: https://github.com/llm-layers/llm-layers

mod builder;
mod catalog;
mod error;
mod future;
mod keys;
mod service;

pub use builder::{Builder, DEFAULT_BASE_URL, RequestHeaders};
pub use catalog::{ModelInfo, ProviderInfo};
pub use future::ResponseFuture;
pub use keys::{KeyChoice, KeyHealth, KeyState};
pub use service::{Dialect, OpenRouter};
