//! Hedging under paused time with the scripted mock.

use llm_layers_core::sync::lock;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use llm_layers_core::{
    Alternatives, ChatRequest, Deadline, ErrorKind, LlmError, Message, ProviderPlan, TimeoutKind,
};
use llm_layers_hedge::{
    HedgeCancelled, HedgeDelay, HedgeLayer, HedgeWinner, NextCandidate, OtherModels,
};
use llm_layers_latency::{LatencyStore, Outcome, Prior};
use llm_layers_mock::{MockChat, Script};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const S: fn(u64) -> Duration = Duration::from_secs;

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn layer(delay: Duration) -> HedgeLayer {
    HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(delay))
        .budget_window(S(10))
        .budget_floor(1000)
        .budget_ratio(1.0)
        .build()
        .unwrap()
}

fn answer(provider: &str, ttft: Duration, words: &[&str]) -> Script {
    let mut s = Script::new().provider(provider).wait(ttft);
    for w in words {
        s = s.token(*w).wait(Duration::from_millis(10));
    }
    s.finish("stop")
}

#[tokio::test(start_paused = true)]
async fn first_to_commit_wins_and_the_loser_is_dropped_at_that_instant() {
    let mock = MockChat::new();
    mock.push(answer("Slow", S(10), &["slow-a", "slow-b"]));
    mock.push(answer("Fast", S(1), &["fast-a", "fast-b", "fast-c"]));
    let svc = layer(S(2)).layer(mock.clone());
    let start = Instant::now();
    let stream = svc.oneshot(req()).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        S(3),
        "hedge at 2 s, its first token 1 s later"
    );
    assert_eq!(
        mock.cancelled(),
        1,
        "the loser is dropped when the winner commits"
    );
    assert_eq!(
        stream.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(1)
    );
    assert_eq!(
        stream
            .meta()
            .extensions
            .get::<HedgeCancelled>()
            .map(|c| c.0),
        Some(1),
        "the original was still running: cancelled (what a budget charges its prompt for)"
    );
    assert_eq!(stream.meta().attempts, 2);
    assert_eq!(stream.meta().provider.as_deref(), Some("Fast"));
    // The winner's tokens, exactly once, in order, nothing from the loser.
    let texts: Vec<String> = stream
        .filter_map(|c| async move { c.unwrap().content().map(str::to_owned) })
        .collect()
        .await;
    assert_eq!(texts, ["fast-a", "fast-b", "fast-c"]);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_when_the_first_token_comes_before_the_delay() {
    let mock = MockChat::with_default(answer("A", Duration::from_millis(1999), &["a"]));
    let svc = layer(S(2)).layer(mock.clone());
    let s = svc.oneshot(req()).await.unwrap();
    assert_eq!(s.meta().extensions.get::<HedgeWinner>().map(|w| w.0), None);
    assert_eq!(s.meta().extensions.get::<HedgeCancelled>(), None);
    assert_eq!(mock.calls(), 1);
    // And the original can still win after a hedge was sent.
    let mock = MockChat::new();
    mock.push(answer("First", Duration::from_millis(2500), &["1"]));
    mock.push(answer("Second", S(5), &["2"]));
    let s = layer(S(2))
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap();
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(0)
    );
    assert_eq!((mock.calls(), mock.cancelled()), (2, 1));
}

/// A store needing 10 samples and a delay at its p90 (100 ms to 30 s, 5 s while cold).
fn p90_delay() -> (LatencyStore, HedgeDelay) {
    let store = LatencyStore::builder().min_samples(10).build().unwrap();
    let delay = HedgeDelay::Quantile {
        store: store.clone(),
        quantile: 0.9,
        min: Duration::from_millis(100),
        max: S(30),
        cold: S(5),
    };
    (store, delay)
}

#[tokio::test(start_paused = true)]
async fn the_delay_follows_the_recorded_quantile() {
    let (store, delay) = p90_delay();
    assert_eq!(delay.for_model("m"), S(5), "cold start");
    for i in 1..=100u64 {
        store.record(
            ("m", Some("A")),
            Some(Duration::from_millis(i * 40)),
            None,
            Outcome::Ok,
        );
    }
    let d = delay.for_model("m");
    assert!(
        d >= Duration::from_millis(3550) && d <= Duration::from_millis(3650),
        "p90 of 40..4000 ms: {d:?}"
    );
    // In use: a first token at 3.7 s is hedged at the ~3.6 s p90.
    let mock = MockChat::new();
    mock.push(answer("A", Duration::from_millis(3700), &["a"]));
    mock.push(answer("B", Duration::from_millis(10), &["b"]));
    let svc = HedgeLayer::builder()
        .delay(delay)
        .budget_window(S(10))
        .budget_floor(100)
        .budget_ratio(1.0)
        .build()
        .unwrap()
        .layer(mock.clone());
    let start = Instant::now();
    let s = svc.oneshot(req()).await.unwrap();
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(1)
    );
    // tokio's timer has 1 ms resolution: the delay fires within a tick of the quantile.
    let took = Instant::now() - start;
    let expected = d + Duration::from_millis(10);
    assert!(
        took >= expected && took <= expected + Duration::from_millis(1),
        "{took:?} vs {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_attempt_lets_the_other_win_and_all_failing_gives_the_best_error() {
    let mock = MockChat::new();
    mock.push(answer("A", S(5), &["a"]));
    mock.push(
        Script::new()
            .wait(Duration::from_millis(100))
            .fail(LlmError::timeout(TimeoutKind::FirstToken)),
    );
    let s = layer(S(1))
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap();
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(0),
        "the hedge failed, the original still won"
    );

    let mock = MockChat::new();
    mock.push(
        Script::new()
            .wait(S(3))
            .fail(LlmError::timeout(TimeoutKind::FirstToken)),
    );
    mock.push(
        Script::new()
            .wait(S(1))
            .fail(LlmError::status(StatusCode::BAD_GATEWAY, None)),
    );
    let e = layer(S(1))
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap_err();
    assert_eq!(
        e.status_code(),
        Some(StatusCode::BAD_GATEWAY),
        "the upstream's answer beats a timeout"
    );

    // Failing alone before the delay: no hedge is started to replace it (retry's job).
    let mock = MockChat::with_default(Script::error(LlmError::new(ErrorKind::Connect)));
    let e = layer(S(1))
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap_err();
    assert_eq!((e.kind(), mock.calls()), (ErrorKind::Connect, 1));
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_hedges_across_clones_and_the_deadline_stops_them() {
    let mock = MockChat::with_default(answer("Slow", S(3), &["x"]));
    let svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(S(1)))
        .budget_window(S(10))
        .budget_floor(0)
        .budget_ratio(0.1)
        .build()
        .unwrap()
        .layer(mock.clone());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        tasks.push(tokio::spawn(svc.clone().oneshot(req())));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let hedges = mock.calls() - 200;
    assert_eq!(hedges, 20, "a hard cap: 10 % of 200 requests");

    // A floor for quiet traffic is the cap when it is more than the share, never added.
    let budgeted = |floor| {
        HedgeLayer::builder()
            .delay(HedgeDelay::Fixed(S(1)))
            .budget_window(S(10))
            .budget_floor(floor)
            .budget_ratio(0.1)
            .build()
            .unwrap()
    };
    let mock = MockChat::with_default(answer("Slow", S(3), &["x"]));
    let svc = budgeted(1).layer(mock.clone());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        tasks.push(tokio::spawn(svc.clone().oneshot(req())));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(mock.calls() - 200, 20, "10 % of 200, not 10 % plus 10");
    let mock = MockChat::with_default(answer("Slow", S(3), &["x"]));
    let svc = budgeted(1).layer(mock.clone());
    for _ in 0..5 {
        svc.clone().oneshot(req()).await.unwrap();
    }
    assert_eq!(
        mock.calls(),
        10,
        "five quiet calls, each hedged from the floor"
    );

    let mock = MockChat::with_default(answer("Slow", S(3), &["x"]));
    let mut r = req();
    r.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_millis(500)));
    layer(S(1)).layer(mock.clone()).oneshot(r).await.unwrap();
    assert_eq!(mock.calls(), 1, "no hedge past the deadline");
}

#[tokio::test(start_paused = true)]
async fn hedges_can_race_another_model_up_to_max_attempts() {
    let mock = MockChat::new();
    mock.push(answer("A", S(30), &["a"]));
    mock.push(answer("B", S(30), &["b"]));
    mock.push(answer("C", S(1), &["c"]));
    let svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(S(2)))
        .policy(OtherModels::new(["fast/one", "fast/two"]))
        .max_attempts(3)
        .budget_window(S(10))
        .budget_floor(100)
        .budget_ratio(1.0)
        .build()
        .unwrap()
        .layer(mock.clone());
    let start = Instant::now();
    let s = svc.oneshot(req()).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        S(5),
        "hedges at 2 s and 4 s; the second answers at 5 s"
    );
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(2)
    );
    let models: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.model().to_owned())
        .collect();
    assert_eq!(models, ["m", "fast/one", "fast/two"]);
    assert_eq!(mock.cancelled(), 2);
}

#[test]
fn bad_configuration_is_rejected() {
    for (b, field) in [
        (
            HedgeLayer::builder().delay(HedgeDelay::Fixed(Duration::ZERO)),
            "delay",
        ),
        (HedgeLayer::builder().max_attempts(1), "max_attempts"),
        (HedgeLayer::builder().max_attempts(9), "max_attempts"),
        (
            HedgeLayer::builder()
                .budget_window(S(10))
                .budget_floor(1)
                .budget_ratio(1.5),
            "ratio",
        ),
        (
            HedgeLayer::builder()
                .budget_window(Duration::ZERO)
                .budget_floor(1)
                .budget_ratio(0.1),
            "window",
        ),
        (
            HedgeLayer::builder().delay(HedgeDelay::Quantile {
                store: LatencyStore::new(),
                quantile: 1.5,
                min: S(1),
                max: S(2),
                cold: S(1),
            }),
            "quantile",
        ),
    ] {
        let e = b.build().unwrap_err();
        assert!(e.message().contains(field), "{field}: {e}");
    }
}

#[tokio::test(start_paused = true)]
async fn next_candidate_races_the_tiers_next_model() {
    let mock = MockChat::new();
    mock.push(answer("A", S(10), &["slow"]));
    mock.push(answer("B", S(1), &["quick"]));
    let svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(S(2)))
        .policy(NextCandidate)
        .budget_window(S(10))
        .budget_floor(100)
        .budget_ratio(1.0)
        .build()
        .unwrap()
        .layer(mock.clone());
    let mut r = req();
    r.body_mut().provider_mut().order = Some(vec!["a".into()]);
    r.extensions_mut()
        .insert(Alternatives(vec!["small/quick".to_string()].into()));
    let s = svc.clone().oneshot(r).await.unwrap();
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(1)
    );
    let sent = mock.requests();
    assert_eq!(sent[0].model(), "m");
    assert_eq!(sent[1].model(), "small/quick");
    assert_eq!(sent[1].body().provider.as_ref().unwrap().order, None);
    // Without alternatives: the same request.
    mock.push(answer("A", S(10), &["slow"]));
    mock.push(answer("B", S(1), &["quick"]));
    svc.oneshot(req()).await.unwrap();
    assert_eq!(mock.requests()[3].model(), "m");
}

/// While a model is cold the call looks at the store again as it waits: what it learns
/// moves the hedge, later for a slow model, earlier for a fast one (but, with few samples,
/// no earlier than 3x the median seen: the first samples are the fast ones).
#[tokio::test(start_paused = true)]
async fn a_cold_call_moves_its_hedge_as_the_model_is_learned() {
    let cold = |store: &LatencyStore| HedgeDelay::Quantile {
        store: store.clone(),
        quantile: 0.5,
        min: Duration::from_millis(10),
        max: S(30),
        cold: S(1),
    };
    let layer = |store: &LatencyStore| {
        HedgeLayer::builder()
            .delay(cold(store))
            .budget_window(S(10))
            .budget_floor(100)
            .budget_ratio(1.0)
            .build()
            .unwrap()
    };
    // At 0.5 s the store learns the model commits in 3 s: the cold 1 s hedge moves to 9 s
    // (3x the median), so a first token at 4 s wins without a hedge.
    let store = LatencyStore::builder().min_samples(2).build().unwrap();
    let mock = MockChat::new();
    mock.push(answer("A", S(4), &["a"]));
    mock.push(answer("B", Duration::from_millis(10), &["b"]));
    let call = tokio::spawn(layer(&store).layer(mock.clone()).oneshot(req()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        store.record(("m", Some("A")), Some(S(3)), None, Outcome::Ok);
    }
    let s = call.await.unwrap().unwrap();
    assert_eq!(s.meta().extensions.get::<HedgeWinner>().map(|w| w.0), None);
    assert_eq!(mock.calls(), 1);
    // At 0.1 s it learns the model commits in 50 ms: the hedge comes forward to 150 ms.
    let store = LatencyStore::builder().min_samples(2).build().unwrap();
    let mock = MockChat::new();
    mock.push(answer("A", S(5), &["a"]));
    mock.push(answer("B", Duration::from_millis(10), &["b"]));
    let start = Instant::now();
    let call = tokio::spawn(layer(&store).layer(mock.clone()).oneshot(req()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..2 {
        store.record(
            ("m", Some("A")),
            Some(Duration::from_millis(50)),
            None,
            Outcome::Ok,
        );
    }
    let s = call.await.unwrap().unwrap();
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(1)
    );
    let took = Instant::now() - start;
    assert!(
        took >= Duration::from_millis(160) && took <= Duration::from_millis(280),
        "{took:?}"
    );
}

/// A hedge that fails while the original still waits is replaced at once (within
/// `max_attempts`), so a hung original is not waited out.
#[tokio::test(start_paused = true)]
async fn a_failed_hedge_is_replaced_at_once() {
    let mock = MockChat::new();
    mock.push(Script::new().hang());
    mock.push(Script::error(
        LlmError::status(StatusCode::BAD_GATEWAY, None).with_provider("Down"),
    ));
    mock.push(answer("Good", Duration::from_millis(100), &["ok"]));
    let svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(S(1)))
        .budget_window(S(10))
        .budget_floor(100)
        .budget_ratio(1.0)
        .max_attempts(3)
        .build()
        .unwrap()
        .layer(mock.clone());
    let start = Instant::now();
    let s = svc.oneshot(req()).await.unwrap();
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(2)
    );
    assert_eq!(Instant::now() - start, Duration::from_millis(1100));
}

/// A service that is ready only while its gate is open (shared by clones).
#[derive(Clone)]
struct Gated {
    inner: MockChat,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waker: std::sync::Arc<std::sync::Mutex<Option<std::task::Waker>>>,
}

impl Gated {
    fn set(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

impl tower::Service<ChatRequest> for Gated {
    type Response = llm_layers_core::ChatStream;
    type Error = LlmError;
    type Future = <MockChat as tower::Service<ChatRequest>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), LlmError>> {
        if self.open.load(std::sync::atomic::Ordering::SeqCst) {
            std::task::Poll::Ready(Ok(()))
        } else {
            *lock(&self.waker) = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        self.inner.call(req)
    }
}

/// The budget is drawn when a hedge is sent, not when its delay fires: a race won while the
/// service was getting ready for the hedge costs nothing.
#[tokio::test(start_paused = true)]
async fn the_budget_is_drawn_when_a_hedge_is_sent() {
    let mock = MockChat::new();
    let gated = Gated {
        inner: mock.clone(),
        open: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        waker: Default::default(),
    };
    let svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(S(1)))
        // Two hedges per 2 s, nothing more.
        .budget_window(S(2))
        .budget_floor(1)
        .budget_ratio(0.0)
        .build()
        .unwrap()
        .layer(gated.clone());
    // Two calls whose hedges fire at 1 s while the service is not ready; the originals
    // commit at 1.5 s: the races are won before the hedges went out.
    let mut first = Vec::new();
    for _ in 0..2 {
        mock.push(answer("A", Duration::from_millis(1500), &["a"]));
        first.push(tokio::spawn(svc.clone().oneshot(req())));
    }
    tokio::task::yield_now().await;
    gated.set(false);
    for f in first {
        assert_eq!(
            f.await
                .unwrap()
                .unwrap()
                .meta()
                .extensions
                .get::<HedgeWinner>()
                .map(|w| w.0),
            None
        );
    }
    assert_eq!(mock.calls(), 2);
    gated.set(true);
    // The second needs its hedge: the reserve is still there.
    mock.push(answer("A", S(10), &["a"]));
    mock.push(answer("B", Duration::from_millis(10), &["b"]));
    let s = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(
        s.meta().extensions.get::<HedgeWinner>().map(|w| w.0),
        Some(1)
    );
}

/// The delay reads the quantile of the provider the router sent the first attempt to
/// (the model's while that one is unknown), an exploring call races no later than its
/// plan says, and the hedge follows the plan's order.
#[tokio::test(start_paused = true)]
async fn the_delay_is_the_first_providers_and_an_exploring_call_races_the_best() {
    let (store, delay) = p90_delay();
    for i in 1..=50u64 {
        // Fast: 10..500 ms; Slow: 1..5 s. The model as a whole: the mixture.
        let fast = Duration::from_millis(i * 10);
        store.record(("m", Some("Fast")), Some(fast), None, Outcome::Ok);
        store.record(("m", Some("Slow")), Some(fast * 100), None, Outcome::Ok);
    }
    let with_plan = |plan: Option<ProviderPlan>| {
        let mut r = req();
        if let Some(p) = plan {
            r.extensions_mut().insert(p);
        }
        delay.for_request(&r)
    };
    let model = with_plan(None);
    let fast = with_plan(Some(ProviderPlan::new(Some("Fast".into()))));
    let slow = with_plan(Some(ProviderPlan::new(Some("Slow".into()))));
    let unknown = with_plan(Some(ProviderPlan::new(Some("New".into()))));
    assert!(fast < Duration::from_millis(500), "{fast:?}");
    assert!(slow > S(4), "{slow:?}");
    assert_eq!(unknown, model, "an unknown provider: the model's quantile");
    // A published prior is enough to read a provider's delay from.
    store.set_prior(
        "m",
        "New",
        Some(Prior::lognormal(
            Duration::from_millis(200),
            Duration::from_millis(800),
        )),
    );
    let new = with_plan(Some(ProviderPlan::new(Some("New".into()))));
    assert!(
        new > Duration::from_millis(350) && new < Duration::from_millis(500),
        "{new:?}"
    );
    // Exploring: raced at the plan's time even though its own quantile is far later.
    let exploring = ProviderPlan::new(Some("Slow".into()))
        .hedge_order(vec!["fast".to_owned(), "slow".to_owned()].into())
        .race_after(Duration::from_millis(300));
    assert_eq!(
        with_plan(Some(exploring.clone())),
        Duration::from_millis(300)
    );

    // In use (the default policy follows the plan): the hedge goes to `fast` first.
    let mock = MockChat::new();
    mock.push(answer("Slow", S(3), &["s"]));
    mock.push(answer("Fast", Duration::from_millis(50), &["f"]));
    let svc = HedgeLayer::builder()
        .delay(delay)
        .budget_window(S(10))
        .budget_floor(100)
        .budget_ratio(1.0)
        .build()
        .unwrap()
        .layer(mock.clone());
    let mut r = req();
    r.body_mut().provider_mut().order = Some(vec!["slow".into(), "fast".into()]);
    r.extensions_mut().insert(exploring);
    let start = Instant::now();
    let s = svc.oneshot(r).await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(350));
    assert_eq!(s.meta().provider.as_deref(), Some("Fast"));
    let sent = mock.requests();
    let order = |i: usize| {
        sent[i]
            .body()
            .provider
            .as_ref()
            .unwrap()
            .order
            .clone()
            .unwrap()
    };
    assert_eq!(order(0), ["slow", "fast"]);
    assert_eq!(order(1), ["fast", "slow"]);
}
