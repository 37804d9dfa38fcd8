//! Shared types of [llm-layers]: the request, the committed stream, the error, the
//! classification trait and a bounded SSE parser.
//!
//! Every service in an llm-layers stack is a
//! `Service<ChatRequest, Response = ChatStream, Error = LlmError>` whose response future
//! resolves at the **commit point**: when the first token has arrived. Before it, any layer
//! may time out, retry, hedge or reroute; after it, the caller owns the stream.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! use llm_layers_core::{ChatRequest, ChatStream, Message};
//! use std::convert::Infallible;
//! // The smallest service honouring the contract: an echo.
//! let svc = tower_service_fn(|req: ChatRequest| async move {
//!     let text = format!("you said {} messages", req.body().messages.len());
//!     Ok::<_, llm_layers_core::LlmError>(ChatStream::from_chunks(vec![
//!         serde_json::from_value::<llm_layers_core::ChatChunk>(serde_json::json!({
//!             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]
//!         })).expect("a valid chunk"),
//!     ]))
//! });
//! let answer = svc(ChatRequest::new("m", vec![Message::user("hi")])).await?;
//! let done = answer.collect().await?;
//! assert_eq!(done.choices[0].message.content.as_deref(), Some("you said 1 messages"));
//! # fn tower_service_fn<F>(f: F) -> F { f }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [llm-layers]: https://github.com/llm-layers/llm-layers

mod api_error;
pub mod budget;
pub mod chunk;
pub mod classify;
mod collect;
mod config;
pub mod continuation;
pub mod decode;
pub mod endpoints;
pub mod error;
pub mod hash;
pub mod heartbeat;
mod kind;
pub mod ledger;
pub mod price;
pub mod request;
pub mod sse;
pub mod stats;
pub mod stream;
pub mod sync;

pub use chunk::{
    AssistantMessage, ChatChunk, ChatCompletion, Choice, ChunkChoice, ChunkWriter, Delta,
    FunctionCall, FunctionDelta, StreamChunk, ToolCall, ToolCallDelta, Usage,
};
pub use classify::{Classify, DefaultClassify, ErrorClass};
pub use config::ConfigError;
pub use error::{
    ApiError, BoxError, ErrorCode, ErrorKind, LlmError, ProtocolKind, TimeoutKind,
    parse_retry_after,
};
pub use request::{
    Alternatives, AttemptKind, ChatBody, ChatRequest, Content, Deadline, GivenUp, KeyId,
    MODEL_VARIANTS, Message, OPENROUTER_ONLY_FIELDS, Priority, ProviderPlan, ProviderPreferences,
    ProviderSort, Tenant, UpstreamName, WholeAnswer, default_slug, slug_matches, split_variant,
};
pub use stream::{BoxChunkStream, ChatStream, Commit, ResponseMeta, Timings};
