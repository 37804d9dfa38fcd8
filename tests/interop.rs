//! Our layers mixed with tower's own middleware (`Buffer`, `ConcurrencyLimit`,
//! `tower::timeout`), whose errors are `BoxError`s: `LlmError::from` brings them back, ours
//! unchanged, theirs as `ErrorKind::Internal`.

use std::time::Duration;

use llm_layers::core::{ChatRequest, ErrorKind, LlmError, Message};
use llm_layers::retry::{DefaultPolicy, RetryLayer};
use llm_layers_mock::{MockChat, Script};
use tower::{ServiceBuilder, ServiceExt};

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

#[tokio::test(start_paused = true)]
async fn tower_buffer_limit_and_timeout_around_our_layers() {
    let mock = MockChat::new();
    let svc = ServiceBuilder::new()
        .map_err(LlmError::from)
        .buffer(8)
        .concurrency_limit(2)
        .timeout(Duration::from_secs(1))
        .layer(
            RetryLayer::builder()
                .policy(DefaultPolicy::new(0))
                .build()
                .unwrap(),
        )
        .service(mock.clone());
    // An answer goes through untouched.
    mock.push(Script::tokens(Duration::from_millis(10), 2, Duration::ZERO).provider("A"));
    let done = svc
        .clone()
        .oneshot(req())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(done.choices[0].message.content.as_deref(), Some("t0 t1 "));
    // Our error crosses tower's `BoxError`s and comes back as it was.
    mock.push(Script::error(LlmError::status(
        http::StatusCode::BAD_REQUEST,
        None,
    )));
    let e = svc.clone().oneshot(req()).await.unwrap_err();
    assert_eq!(e.status_code(), Some(http::StatusCode::BAD_REQUEST));
    // tower's own timeout error becomes an internal error that says what it was.
    mock.push(Script::new().hang());
    let e = svc.clone().oneshot(req()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(e.message().unwrap().contains("timed out"), "{e}");
}
