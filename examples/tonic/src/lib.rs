//! A gRPC server-streaming `Chat` service whose handler calls an llm-layers stack: the same
//! layers as the HTTP gateway, behind another transport.
//!
//! Errors before the first token become gRPC statuses (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`,
//! `DEADLINE_EXCEEDED`, `INVALID_ARGUMENT`, ...); a failure after it ends the response stream
//! with a status, never a clean end. Dropping the call cancels the upstream.

pub mod pb;

use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use llm_layers_core::{ChatRequest, ChatStream, ConfigError, ErrorKind, LlmError, Message};
use llm_layers_openrouter::OpenRouter;
use llm_layers_retry::{DefaultPolicy, RetryLayer};
use llm_layers_timeout::TimeoutLayer;
use tonic::{Request, Response, Status};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

pub use pb::chat_client::ChatClient;
pub use pb::chat_server::ChatServer;
pub use pb::{ChatCompletionRequest, ChatDelta, ChatMessage};

/// The stack behind the service.
pub type Stack = BoxCloneSyncService<ChatRequest, ChatStream, LlmError>;

/// A default stack: retry (2) over a 30 s first-token and 30 s idle timeout over `leaf`.
pub fn stack(leaf: OpenRouter) -> Result<Stack, ConfigError> {
    let timeout = TimeoutLayer::builder()
        .first_token(Duration::from_secs(30))
        .idle(Duration::from_secs(30))
        .build()?;
    let retry = RetryLayer::builder()
        .policy(DefaultPolicy::new(2))
        .build()?;
    Ok(BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(retry)
            .layer(timeout)
            .service(leaf),
    ))
}

/// The gRPC service.
#[derive(Clone)]
pub struct ChatService {
    stack: Stack,
}

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatService").finish_non_exhaustive()
    }
}

impl ChatService {
    /// Serves `stack`.
    pub fn new(stack: Stack) -> Self {
        ChatService { stack }
    }
}

/// An `LlmError` as a gRPC status (the message never holds a secret).
pub fn status_of(e: &LlmError) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::BadRequest => Status::invalid_argument(msg),
        ErrorKind::Timeout(_) => Status::deadline_exceeded(msg),
        ErrorKind::RateLimited => Status::resource_exhausted(msg),
        ErrorKind::Cancelled => Status::cancelled(msg),
        ErrorKind::Status => match e.status_code().map(|s| s.as_u16()) {
            Some(400 | 413 | 422) => Status::invalid_argument(msg),
            Some(402 | 429) => Status::resource_exhausted(msg),
            Some(403) => Status::permission_denied(msg),
            Some(404) => Status::not_found(msg),
            Some(408 | 524) => Status::deadline_exceeded(msg),
            _ => Status::unavailable(msg),
        },
        _ => Status::unavailable(msg),
    }
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<ChatDelta, Status>> + Send>>;

#[tonic::async_trait]
impl pb::chat_server::Chat for ChatService {
    type CompleteStream = DeltaStream;

    async fn complete(
        &self,
        request: Request<ChatCompletionRequest>,
    ) -> Result<Response<DeltaStream>, Status> {
        let r = request.into_inner();
        if r.messages.is_empty() {
            return Err(Status::invalid_argument("messages must not be empty"));
        }
        let messages = r
            .messages
            .into_iter()
            .map(|m| Message::new(m.role, m.content))
            .collect();
        let mut req = ChatRequest::new(r.model, messages);
        req.body_mut().stream = Some(true);
        req.body_mut().max_tokens = r.max_tokens;
        req.body_mut().temperature = r.temperature;
        let stream = self
            .stack
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| status_of(&e))?;
        let provider = stream.meta().provider.clone().unwrap_or_default();
        let deltas = stream.map(move |item| {
            item.map(|c| {
                let choice = c.choices.first();
                ChatDelta {
                    content: choice
                        .and_then(|ch| ch.delta.content.clone())
                        .unwrap_or_default(),
                    finish_reason: choice
                        .and_then(|ch| ch.finish_reason.clone())
                        .unwrap_or_default(),
                    provider: c.provider.clone().unwrap_or_else(|| provider.clone()),
                    prompt_tokens: c.usage.as_ref().map_or(0, |u| u.prompt_tokens),
                    completion_tokens: c.usage.as_ref().map_or(0, |u| u.completion_tokens),
                }
            })
            .map_err(|e| status_of(&e))
        });
        Ok(Response::new(Box::pin(deltas)))
    }
}
