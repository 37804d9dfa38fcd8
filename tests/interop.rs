//! Our layers mixed with tower's own middleware (`Buffer`, `ConcurrencyLimit`,
//! `tower::timeout`), whose errors are `BoxError`s: `LlmError::from` brings them back, ours
//! unchanged, theirs as `ErrorKind::Internal`; and tower's `Budget` shared by our retry and
//! hedge layers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use llm_layers::core::{ChatRequest, ErrorKind, LlmError, Message};
use llm_layers::hedge::{HedgeDelay, HedgeLayer};
use llm_layers::retry::{DefaultPolicy, RetryLayer};
use llm_layers_mock::{MockChat, Script};
use tower::retry::budget::Budget;
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

/// A budget that counts what each layer asks of it and grants `allow` withdrawals.
#[derive(Default)]
struct Counting {
    deposits: AtomicU32,
    asked: AtomicU32,
    allow: AtomicU32,
}

impl Budget for Counting {
    fn deposit(&self) {
        self.deposits.fetch_add(1, Ordering::Relaxed);
    }

    fn withdraw(&self) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.allow
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[tokio::test(start_paused = true)]
async fn retry_and_hedge_spend_one_shared_budget() {
    let budget = Arc::new(Counting::default());
    budget.allow.store(1, Ordering::Relaxed);
    let shared: Arc<dyn Budget + Send + Sync> = budget.clone();
    let mock = MockChat::new();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .policy(DefaultPolicy::new(3))
                .budget(shared.clone())
                .seed(1)
                .build()
                .unwrap(),
        )
        .layer(
            HedgeLayer::builder()
                .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
                .budget(shared)
                .build()
                .unwrap(),
        )
        .service(mock.clone());
    // A 500 then an answer: the retry takes the one allowance.
    mock.push(Script::error(LlmError::status(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        None,
    )));
    mock.push(Script::tokens(Duration::from_millis(5), 1, Duration::ZERO));
    svc.clone().oneshot(req()).await.unwrap();
    // A slow answer: the hedge asks the same budget, finds it spent, and is not sent.
    mock.push(Script::tokens(
        Duration::from_millis(200),
        1,
        Duration::ZERO,
    ));
    svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(mock.calls(), 3, "two calls, one retry, no hedge");
    // Each layer deposits per request it sees (retry: 2 calls; hedge below it: 3 attempts),
    // and both withdrew from the one budget.
    assert_eq!(budget.deposits.load(Ordering::Relaxed), 5);
    assert_eq!(budget.asked.load(Ordering::Relaxed), 2);
}
