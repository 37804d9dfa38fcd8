//! Readiness, layer by layer: an inner service that is not ready makes every layer not
//! ready (and the caller is woken when it becomes ready), and no layer holds a ready inner
//! service (a `ConcurrencyLimit` permit below it) while a call waits on something else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use llm_layers::breaker::BreakerLayer;
use llm_layers::core::{ChatRequest, ChatStream, LlmError, Message, Priority, Tenant};
use llm_layers::hedge::HedgeLayer;
use llm_layers::latency::{LatencyLayer, LatencyStore};
use llm_layers::ratelimit::{Key, Limit, Mode, RateLimitLayer};
use llm_layers::retry::RetryLayer;
use llm_layers::router::RouterLayer;
use llm_layers::timeout::TimeoutLayer;
use llm_layers_mock::{MockChat, Script};

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn for_tenant(t: &str) -> ChatRequest {
    let mut r = req();
    r.extensions_mut().insert(Tenant(Arc::from(t)));
    r
}

/// A waker that remembers it was woken.
#[derive(Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `layer` over a mock whose readiness gate is closed: Pending, woken when it opens, then
/// Ready, and the call goes through.
async fn follows_inner_readiness<L>(name: &str, layer: L)
where
    L: Layer<MockChat>,
    L::Service: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    let mock = MockChat::with_default(Script::tokens(MS * 5, 1, Duration::ZERO));
    let mut svc = layer.layer(mock.clone());
    mock.set_ready(false);
    let woken = Arc::new(Woken::default());
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(
        svc.poll_ready(&mut cx).is_pending(),
        "{name}: ready over a closed inner"
    );
    assert!(!woken.0.load(Ordering::SeqCst));
    mock.set_ready(true);
    assert!(
        woken.0.load(Ordering::SeqCst),
        "{name}: not woken when the inner opened"
    );
    assert!(svc.poll_ready(&mut cx).is_ready(), "{name}");
    let stream = svc.call(req()).await.unwrap();
    assert!(stream.collect().await.is_ok(), "{name}");
    assert_eq!(mock.calls(), 1, "{name}");
}

#[tokio::test(start_paused = true)]
async fn every_layer_is_pending_while_its_inner_service_is() {
    let store = LatencyStore::new();
    follows_inner_readiness("timeout", TimeoutLayer::first_token(Duration::from_secs(5))).await;
    follows_inner_readiness("retry", RetryLayer::new(2)).await;
    follows_inner_readiness(
        "latency",
        LatencyLayer::builder()
            .store(store.clone())
            .build()
            .unwrap(),
    )
    .await;
    follows_inner_readiness("hedge", HedgeLayer::builder().build().unwrap()).await;
    follows_inner_readiness("breaker", BreakerLayer::builder().build().unwrap()).await;
    follows_inner_readiness("router", RouterLayer::builder(store).build().unwrap()).await;
    follows_inner_readiness(
        "ratelimit (buckets)",
        RateLimitLayer::builder()
            .requests(Limit::new(10, Duration::from_secs(1)))
            .build()
            .unwrap(),
    )
    .await;
    follows_inner_readiness(
        "ratelimit (global concurrency)",
        RateLimitLayer::builder()
            .concurrency(4, Key::global(), Priority(0))
            .build()
            .unwrap(),
    )
    .await;
}

/// tower's `ConcurrencyLimit(1)` under `layer`: its one permit is taken by whoever is made
/// ready, so a layer that kept a ready inner service while a call waits would stall every
/// other call for that long.
fn over_one_permit<L>(layer: L, mock: &MockChat) -> L::Service
where
    L: Layer<tower::limit::ConcurrencyLimit<MockChat>>,
{
    layer.layer(tower::limit::ConcurrencyLimit::new(mock.clone(), 1))
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_a_rate_limit_holds_no_slot_below() {
    let mock = MockChat::with_default(Script::tokens(MS * 5, 1, Duration::ZERO));
    let svc = over_one_permit(
        RateLimitLayer::builder()
            .requests(
                Limit::new(1, Duration::from_secs(10))
                    .key(Key::tenant())
                    .mode(Mode::Wait(Duration::from_secs(60))),
            )
            .build()
            .unwrap(),
        &mock,
    );
    let start = Instant::now();
    svc.clone().oneshot(for_tenant("a")).await.unwrap();
    // Tenant a's second call waits 10 s for its bucket...
    let waiting = tokio::spawn(svc.clone().oneshot(for_tenant("a")));
    tokio::time::sleep(MS * 100).await;
    assert!(!waiting.is_finished());
    // ...while tenant b goes through at once: the wait holds no permit below.
    let t = Instant::now();
    svc.clone().oneshot(for_tenant("b")).await.unwrap();
    assert_eq!(Instant::now() - t, MS * 5);
    waiting.await.unwrap().unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(10) + MS * 5);
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_call_in_retry_backoff_holds_no_slot_below() {
    let mock = MockChat::with_default(Script::tokens(MS * 5, 1, Duration::ZERO));
    mock.push(Script::error(LlmError::status(
        http::StatusCode::SERVICE_UNAVAILABLE,
        None,
    )));
    let svc = over_one_permit(RetryLayer::builder().seed(3).build().unwrap(), &mock);
    let retried = tokio::spawn(svc.clone().oneshot(req()));
    tokio::task::yield_now().await;
    assert_eq!(mock.calls(), 1, "the first attempt failed; backoff runs");
    let t = Instant::now();
    svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(
        Instant::now() - t,
        MS * 5,
        "another call waited for the backoff"
    );
    retried.await.unwrap().unwrap();
    assert_eq!(mock.calls(), 3);
}
