//! An llm-layers stack inside an axum app that already exists: the app keeps its routes and
//! state, and one route, `POST /ask` (the question as the body), streams the answer through
//! the stack as server-sent events. The stack is a value in the state (cloned per request;
//! every clone shares one pooled connection to the upstream).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use llm_layers::breaker::BreakerLayer;
use llm_layers::core::{BoxError, ChatRequest, ChatStream, LlmError, Message};
use llm_layers::hedge::{HedgeDelay, HedgeLayer};
use llm_layers::openrouter::OpenRouter;
use llm_layers::retry::RetryLayer;
use llm_layers::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// The stack as the app holds it: any service of this shape fits (a mock in tests).
pub type Llm = BoxCloneSyncService<ChatRequest, ChatStream, LlmError>;

/// The app's state: what it had before, and the stack.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Something the app already had.
    pub greeting: &'static str,
    /// The model `POST /ask` uses.
    pub model: String,
    /// The llm-layers stack.
    pub llm: Llm,
}

/// Timeouts, retry, hedge and breaker over the OpenRouter leaf at `base_url`.
pub fn stack(base_url: &str, api_key: &str) -> Result<Llm, BoxError> {
    let leaf = OpenRouter::builder()
        .base_url(base_url)
        .api_key(api_key)
        .build()?;
    let hedge = HedgeLayer::builder().delay(HedgeDelay::Fixed(Duration::from_secs(3)));
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::total(Duration::from_secs(120)))
        .layer(RetryLayer::new(2))
        .layer(hedge.build()?)
        .layer(BreakerLayer::builder().build()?)
        .layer(TimeoutLayer::first_token(Duration::from_secs(15)))
        .service(leaf);
    Ok(BoxCloneSyncService::new(svc))
}

/// The app: its own routes, and `POST /ask`.
pub fn app(state: AppState) -> Router {
    let hello = get(|State(s): State<AppState>| async move { s.greeting });
    Router::new()
        .route("/hello", hello)
        .route("/ask", post(ask))
        .with_state(state)
}

/// Streams the answer's text as `data:` events. An error before the first token is a status
/// (as the stack's typed error says), one after it an `event: error` (the status is sent).
async fn ask(State(s): State<AppState>, question: String) -> Response {
    let mut req = ChatRequest::new(s.model.clone(), vec![Message::user(question)]);
    req.body_mut().stream = Some(true);
    let stream = match s.llm.oneshot(req).await {
        Ok(stream) => stream,
        Err(e) => {
            let status = e.status_code().unwrap_or(StatusCode::BAD_GATEWAY);
            return (status, e.to_string()).into_response();
        }
    };
    let events = stream.filter_map(|item| async move {
        match item {
            Ok(chunk) => chunk
                .content()
                .filter(|t| !t.is_empty())
                .map(|t| Event::default().data(t)),
            Err(e) => Some(Event::default().event("error").data(e.to_string())),
        }
    });
    Sse::new(events.map(Ok::<_, std::convert::Infallible>)).into_response()
}
