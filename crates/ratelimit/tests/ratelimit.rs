//! Rate limits under paused time, against the scripted mock.

use llm_layers_core::sync::lock;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use llm_layers_core::{ChatRequest, Deadline, ErrorKind, LlmError, Message, Priority, Tenant};
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{
    BucketKey, Key, Limit, LimitId, MemoryStore, Mode, Rate, RateLimitLayer, Store, Take,
};
use std::task::Poll;

use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const MS: fn(u64) -> Duration = Duration::from_millis;

mod common;
use common::{asking, global_tokens, instant, one_per_4s_waiting, req};

#[tokio::test(start_paused = true)]
async fn burst_then_sustained_rate_per_key_and_keys_do_not_interfere() {
    let svc = RateLimitLayer::builder()
        .requests(
            Limit::new(10, Duration::from_secs(1))
                .burst(5)
                .key(Key::model())
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(instant());
    let mut passed = 0;
    for _ in 0..8 {
        passed += usize::from(svc.clone().oneshot(req("a")).await.is_ok());
    }
    assert_eq!(passed, 5, "the burst");
    for _ in 0..5 {
        assert!(
            svc.clone().oneshot(req("b")).await.is_ok(),
            "another key has its own bucket"
        );
    }
    // Then exactly 10 per second: one every 100 ms, trying every 10 ms for 10 s.
    let mut passed = 0;
    for _ in 0..1000 {
        tokio::time::advance(MS(10)).await;
        passed += usize::from(svc.clone().oneshot(req("a")).await.is_ok());
    }
    assert_eq!(passed, 100);
}

#[tokio::test(start_paused = true)]
async fn sixteen_clones_share_one_limit() {
    let layer = RateLimitLayer::builder()
        .requests(Limit::new(8, Duration::from_secs(60)).mode(Mode::Reject))
        .build()
        .unwrap();
    let clones: Vec<_> = (0..16).map(|_| layer.clone().layer(instant())).collect();
    let mut passed = 0;
    for svc in clones {
        passed += usize::from(svc.clone().oneshot(req("m")).await.is_ok());
    }
    assert_eq!(passed, 8);
}

#[tokio::test(start_paused = true)]
async fn reject_gives_the_exact_wait_and_wait_mode_waits_but_not_past_the_deadline() {
    let reject = RateLimitLayer::builder()
        .requests(
            Limit::new(1, Duration::from_secs(4))
                .burst(1)
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(instant());
    reject.clone().oneshot(req("m")).await.unwrap();
    tokio::time::advance(MS(1500)).await;
    let e = reject.clone().oneshot(req("m")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (ErrorKind::RateLimited, Some(MS(2500)))
    );

    let wait = one_per_4s_waiting();
    wait.clone().oneshot(req("m")).await.unwrap();
    let start = Instant::now();
    wait.clone().oneshot(req("m")).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(4),
        "waited its turn"
    );
    let mut r = req("m");
    r.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(1)));
    let start = Instant::now();
    let e = wait.clone().oneshot(r).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(
        Instant::now(),
        start,
        "no wait that would pass the deadline"
    );
    // The bucket's next unit is 4 s away: a deadline exactly then is refused at once (an
    // answer at the deadline is too late), one past it waits its turn.
    let mut r = req("m");
    r.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(4)));
    let e = wait.clone().oneshot(r).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(Instant::now(), start);
    let mut r = req("m");
    r.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(5)));
    wait.clone().oneshot(r).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(4),
        "waited its turn"
    );
}

#[tokio::test(start_paused = true)]
async fn token_reservations_settle_to_the_real_usage_and_cancellation_settles() {
    let mock = MockChat::new();
    let layer = RateLimitLayer::builder()
        .tokens(
            Limit::new(1000, Duration::from_secs(600))
                .burst(1000)
                .key(Key::global())
                .mode(Mode::Reject),
        )
        .build()
        .unwrap();
    let svc = layer.layer(mock.clone());
    let with_max = |n: u32| {
        let mut r = req("m");
        r.body_mut().max_tokens = Some(n);
        r
    };
    // Reserve ~501, use 13: the rest comes back at the end of the stream.
    mock.push(Script::new().token("a").finish("stop").usage(3, 10));
    let s = svc.clone().oneshot(with_max(500)).await.unwrap();
    mock.push(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    let e = svc.clone().oneshot(with_max(900)).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::RateLimited,
        "501 reserved: 900 does not fit yet"
    );
    s.collect().await.unwrap();
    mock.push(
        Script::new()
            .token("a")
            .wait(Duration::from_secs(1))
            .token("b")
            .finish("stop")
            .usage(1, 2),
    );
    let mut s = svc.clone().oneshot(with_max(900)).await.unwrap();
    // Cancelled after one chunk: settles on prompt + one delivered chunk, not 901.
    s.next().await.unwrap().unwrap();
    drop(s);
    mock.push(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    assert!(
        svc.clone().oneshot(with_max(900)).await.is_ok(),
        "the cancelled reservation came back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_level_429_holds_the_key_for_its_retry_after() {
    let mock = MockChat::new();
    let svc = RateLimitLayer::builder()
        .requests(
            Limit::new(1000, Duration::from_secs(1))
                .key(Key::tenant())
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(mock.clone());
    let tenant = |t: &str| {
        let mut r = req("m");
        r.extensions_mut().insert(Tenant(Arc::from(t)));
        r
    };
    // A provider's 429 holds nothing here (the breaker holds that provider alone).
    mock.push(Script::error(
        LlmError::status(StatusCode::TOO_MANY_REQUESTS, None)
            .with_provider("Busy")
            .with_retry_after(Duration::from_secs(10)),
    ));
    assert!(svc.clone().oneshot(tenant("acme")).await.is_err());
    mock.push(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    assert!(svc.clone().oneshot(tenant("acme")).await.is_ok());
    // A 429 on our own key holds the key.
    mock.push(Script::error(
        LlmError::status(StatusCode::TOO_MANY_REQUESTS, None)
            .with_key_limited()
            .with_retry_after(Duration::from_secs(10)),
    ));
    assert!(svc.clone().oneshot(tenant("acme")).await.is_err());
    let e = svc.clone().oneshot(tenant("acme")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (ErrorKind::RateLimited, Some(Duration::from_secs(10)))
    );
    mock.push(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    assert!(
        svc.clone().oneshot(tenant("other")).await.is_ok(),
        "other keys are not held"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    mock.push(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    assert!(
        svc.clone().oneshot(tenant("acme")).await.is_ok(),
        "released after 10 s"
    );
    assert_eq!(mock.calls(), 5, "the held call never went upstream");
}

#[tokio::test(start_paused = true)]
async fn when_full_low_priority_is_shed_and_high_priority_goes_first() {
    let mock = MockChat::with_default(Script::tokens(Duration::ZERO, 2, Duration::from_secs(1)));
    let svc = RateLimitLayer::builder()
        .concurrency(1, Key::global(), Priority(1))
        .build()
        .unwrap()
        .layer(mock.clone());
    let with = |p: u8, text: &str| {
        let mut r = ChatRequest::new("m", vec![Message::user(text)]);
        r.extensions_mut().insert(Priority(p));
        r
    };
    let holder = svc.clone().oneshot(with(5, "holder")).await.unwrap();
    let e = svc.clone().oneshot(with(0, "low")).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::RateLimited,
        "low priority is shed at once"
    );
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (p, name) in [(2u8, "mid"), (9, "high"), (2, "mid2")] {
        let (svc, order) = (svc.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let s = svc.oneshot(with(p, name)).await.unwrap();
            lock(&order).push(name);
            s.collect().await.unwrap();
        }));
        tokio::task::yield_now().await;
    }
    holder.collect().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*lock(&order), ["high", "mid", "mid2"]);
}

#[test]
fn a_million_keys_stay_under_the_cap() {
    let store = MemoryStore::new(10_000);
    let rate = Rate {
        amount: 10,
        period: Duration::from_secs(1),
        burst: 10,
    };
    let now = Instant::now();
    for i in 0..1_000_000u32 {
        let key = BucketKey {
            limit: LimitId::Requests(0),
            name: Arc::from("requests"),
            key: Arc::from(format!("k{i}")),
        };
        let _ = store.take_now(&key, 1, &rate, now);
    }
    assert!(store.len() <= 10_000 + 16, "{}", store.len());
}

#[test]
fn bad_configuration_is_rejected() {
    for (b, field) in [
        (RateLimitLayer::builder(), "at least one limit"),
        (
            RateLimitLayer::builder().requests(Limit::new(0, Duration::from_secs(1))),
            "request limit",
        ),
        (
            RateLimitLayer::builder().requests(Limit::new(1, Duration::ZERO)),
            "period",
        ),
        (
            RateLimitLayer::builder().requests(Limit::new(1, Duration::from_secs(1)).burst(0)),
            "burst",
        ),
        (
            RateLimitLayer::builder().tokens(Limit::new(0, Duration::from_secs(1))),
            "token limit",
        ),
        (
            RateLimitLayer::builder().concurrency(0, Key::global(), Priority(0)),
            "concurrency",
        ),
    ] {
        let e = b.build().unwrap_err();
        assert!(e.message().contains(field), "{field}: {e}");
    }
}

/// A `Retry-After` from the upstream is input: the largest one must neither panic nor hold a
/// key for longer than `max_hold`.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_neither_panics_nor_holds_past_the_cap() {
    let mock = MockChat::new();
    let svc = RateLimitLayer::builder()
        .requests(Limit::new(1000, Duration::from_secs(1)).mode(Mode::Reject))
        .max_hold(Duration::from_secs(60))
        .build()
        .unwrap()
        .layer(mock.clone());
    mock.push(Script::error(
        LlmError::status(StatusCode::TOO_MANY_REQUESTS, None)
            .with_key_limited()
            .with_retry_after(Duration::from_secs(u64::MAX)),
    ));
    assert!(svc.clone().oneshot(req("m")).await.is_err());
    let e = svc.clone().oneshot(req("m")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.retry_after().unwrap() <= Duration::from_secs(60), "{e}");
    tokio::time::advance(Duration::from_secs(60)).await;
    mock.push(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    assert!(svc.clone().oneshot(req("m")).await.is_ok());
}

/// Limits of 2^32 and more are computed in the type they are validated in: no division by
/// A refund that comes after the bucket has refilled (a long stream's reservation settled
/// to its small usage at its end) never takes the bucket past full: no burst larger than
/// the limit's.
#[test]
fn a_late_refund_never_fills_a_bucket_past_its_burst() {
    let store = MemoryStore::new(16);
    let t0 = Instant::now();
    let key = BucketKey {
        limit: LimitId::Tokens,
        name: Arc::from("tokens"),
        key: Arc::from("k"),
    };
    let rate = Rate {
        amount: 10,
        period: Duration::from_secs(1),
        burst: 10,
    };
    // A reservation takes the whole burst; the bucket refills while the stream runs.
    assert!(store.take_now(&key, 10, &rate, t0).is_ok());
    let later = t0 + Duration::from_secs(5);
    // The stream used nothing: all 10 come back, into a bucket already full.
    store.settle(&key, 10, &rate, later);
    assert!(
        store.take_now(&key, 10, &rate, later).is_ok(),
        "a whole burst"
    );
    assert!(
        store.take_now(&key, 1, &rate, later).is_err(),
        "and not one unit more"
    );
}

/// zero, no limit seven times stricter than asked.
#[test]
fn limits_of_two_to_the_32_and_more_are_exact() {
    let store = MemoryStore::new(16);
    let now = Instant::now();
    let key = BucketKey {
        limit: LimitId::Requests(0),
        name: Arc::from("requests"),
        key: Arc::from("k"),
    };
    for amount in [4_294_967_296u64, 10_000_000_000] {
        let rate = Rate {
            amount,
            period: Duration::from_secs(60),
            burst: amount,
        };
        // A whole burst fits at once; one unit more does not.
        assert!(store.take_now(&key, amount, &rate, now).is_ok(), "{amount}");
        let wait = store.take_now(&key, 1, &rate, now).unwrap_err();
        assert!(wait <= Duration::from_micros(1), "{amount}: {wait:?}");
        store.settle(&key, i64::try_from(amount).unwrap(), &rate, now);
    }
    assert!(
        RateLimitLayer::builder()
            .tokens(Limit::new(4_294_967_296, Duration::from_secs(60)))
            .build()
            .is_ok()
    );
    // More than one unit per nanosecond is refused at build.
    assert!(
        RateLimitLayer::builder()
            .tokens(Limit::new(u64::MAX, Duration::from_secs(1)))
            .build()
            .is_err()
    );
}

/// Usage from the upstream is input too: an absurd count neither panics (debug) nor wraps
/// into a refund (release), and a debit is bounded.
#[tokio::test(start_paused = true)]
async fn absurd_usage_saturates_and_is_bounded() {
    let huge = Script::new()
        .token("a")
        .finish("stop")
        .usage(u64::MAX, u64::MAX);
    let mock = MockChat::with_default(huge);
    let svc = RateLimitLayer::builder()
        .tokens(
            Limit::new(1000, Duration::from_secs(60))
                .burst(1000)
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(mock.clone());
    let s = svc.clone().oneshot(req("m")).await.unwrap();
    let _ = s.collect_all().await;
    // In debt by at most one burst past the reservation: a minute or two, not years.
    let e = svc.clone().oneshot(req("m")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.retry_after().unwrap() <= Duration::from_secs(180), "{e}");
}

/// A store that counts what is given back to request buckets.
struct Refunds {
    inner: MemoryStore,
    refunded: Arc<std::sync::atomic::AtomicI64>,
}

impl Store for Refunds {
    fn take(&self, key: &BucketKey, cost: u64, rate: &Rate, now: Instant) -> Take {
        self.inner.take(key, cost, rate, now)
    }
    fn settle(&self, key: &BucketKey, units: i64, rate: &Rate, now: Instant) {
        if key.limit == LimitId::Requests(0) {
            self.refunded
                .fetch_add(units, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.settle(key, units, rate, now);
    }
    fn hold(&self, key: &BucketKey, until: Instant) {
        self.inner.hold(key, until);
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// A call refused by a later limit gives back what earlier limits took.
#[tokio::test(start_paused = true)]
async fn a_rejected_call_refunds_the_request_units_it_took() {
    let refunded = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let svc = RateLimitLayer::builder()
        .requests(Limit::new(3, Duration::from_secs(60)).mode(Mode::Reject))
        .tokens(
            Limit::new(10, Duration::from_secs(60))
                .burst(10)
                .mode(Mode::Reject),
        )
        .store(Refunds {
            inner: MemoryStore::new(64),
            refunded: refunded.clone(),
        })
        .build()
        .unwrap()
        .layer(instant());
    let mut big = req("m");
    big.body_mut().max_tokens = Some(100_000);
    // The first takes the whole token burst; the next two take a request unit each and are
    // refused by the token limit: both units come back.
    assert!(svc.clone().oneshot(big.clone()).await.is_ok());
    for _ in 0..2 {
        let e = svc.clone().oneshot(big.clone()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.message().unwrap().contains("rate limit"), "{e}");
    }
    assert_eq!(
        refunded.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one unit back per refused call"
    );
}

/// A shared store that must ask for every decision (each a 5 ms round trip).
struct RoundTrip {
    inner: Arc<MemoryStore>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl Store for RoundTrip {
    fn take(&self, key: &BucketKey, cost: u64, rate: &Rate, _now: Instant) -> Take {
        let (inner, key, rate) = (self.inner.clone(), key.clone(), *rate);
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Take::Pending(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            inner.take_now(&key, cost, &rate, Instant::now())
        }))
    }
    fn settle(&self, key: &BucketKey, units: i64, rate: &Rate, now: Instant) {
        self.inner.settle(key, units, rate, now);
    }
    fn hold(&self, key: &BucketKey, until: Instant) {
        self.inner.hold(key, until);
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// A store that answers after a round trip is awaited once per decision (the fast path's
/// started round trip is not thrown away and asked again), admits exactly the limit, waits
/// and rejects as a local one does.
#[tokio::test(start_paused = true)]
async fn a_store_that_must_ask_is_awaited_once_per_decision() {
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = RateLimitLayer::builder()
        .requests(Limit::new(2, Duration::from_secs(1)).mode(Mode::Reject))
        .store(RoundTrip {
            inner: Arc::new(MemoryStore::new(64)),
            asked: asked.clone(),
        })
        .build()
        .unwrap()
        .layer(instant());
    let start = Instant::now();
    assert!(svc.clone().oneshot(req("m")).await.is_ok());
    assert!(svc.clone().oneshot(req("m")).await.is_ok());
    let e = svc.clone().oneshot(req("m")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(Instant::now() - start, Duration::from_millis(15));
}

/// The concurrency queue is bounded in length and in wait, and a refusal says when to come
/// back.
#[tokio::test(start_paused = true)]
async fn the_concurrency_queue_has_a_bound_and_a_maximum_wait() {
    let slow = MockChat::with_default(Script::new().hang());
    let svc = RateLimitLayer::builder()
        .concurrency(1, Key::global(), Priority(0))
        .concurrency_queue(2, Duration::from_secs(5))
        .build()
        .unwrap()
        .layer(slow.clone());
    // One holds the slot (it never commits), two wait.
    let mut running = Vec::new();
    for _ in 0..3 {
        let s = svc.clone();
        running.push(tokio::spawn(async move { s.oneshot(req("m")).await }));
    }
    tokio::task::yield_now().await;
    // A fourth is not ready: the backpressure tower's LoadShed turns into a refusal at once.
    let mut probe = svc.clone();
    assert!(poll_ready_now(&mut probe).is_pending());
    let shed = tower::ServiceBuilder::new()
        .load_shed()
        .service(svc.clone());
    let e = shed.oneshot(req("m")).await.unwrap_err();
    assert!(e.is::<tower::load_shed::error::Overloaded>(), "{e}");
    // The waiters give up after 5 s with a 429-shaped error, not forever.
    let start = Instant::now();
    let waited = running.pop().unwrap().await.unwrap().unwrap_err();
    assert_eq!(waited.kind(), ErrorKind::RateLimited);
    assert!(waited.retry_after().is_some());
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
    // Their places freed: ready again (the call will queue: the slot is still taken).
    assert!(poll_ready_now(&mut probe).is_ready());
    for r in running {
        r.abort();
    }
}

/// A caller who leaves before its first token does not get its request units back: its
/// request was already sent (30 calls dropped after 0.3 s once got 30 admissions from a
/// burst of 10).
#[tokio::test(start_paused = true)]
async fn a_call_dropped_after_it_was_sent_keeps_its_units() {
    let slow = MockChat::with_default(Script::tokens(Duration::from_secs(1), 3, MS(10)));
    let svc = RateLimitLayer::builder()
        .requests(
            Limit::new(3, Duration::from_secs(60))
                .burst(3)
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(slow.clone());
    let mut refused = 0;
    for _ in 0..6 {
        match tokio::time::timeout(MS(300), svc.clone().oneshot(req("m"))).await {
            Err(_left) => {}
            Ok(Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
                refused += 1;
            }
            Ok(Ok(_)) => panic!("no first token within 0.3 s"),
        }
    }
    assert_eq!(
        slow.calls(),
        3,
        "the burst, and no more, reached the upstream"
    );
    assert_eq!(refused, 3);
}

/// A call waiting on its own tenant's bucket holds no concurrency slot: another tenant's
/// low-priority call is admitted, not shed, while nothing is in flight.
#[tokio::test(start_paused = true)]
async fn a_call_waiting_on_its_bucket_holds_no_concurrency_slot() {
    let svc = RateLimitLayer::builder()
        .concurrency(1, Key::global(), Priority(1))
        .requests(
            Limit::new(1, Duration::from_secs(60))
                .burst(1)
                .key(Key::tenant())
                .mode(Mode::Wait(Duration::from_secs(120))),
        )
        .build()
        .unwrap()
        .layer(instant());
    let shed = tower::ServiceBuilder::new()
        .load_shed()
        .service(svc.clone());
    let as_tenant = |t: &str, p: u8| {
        let mut r = req("m");
        r.extensions_mut().insert(Tenant(Arc::from(t)));
        r.extensions_mut().insert(Priority(p));
        r
    };
    shed.clone()
        .oneshot(as_tenant("greedy", 1))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // The greedy tenant's next call waits a minute for its own bucket ...
    let waiting = tokio::spawn(shed.clone().oneshot(as_tenant("greedy", 1)));
    tokio::time::advance(MS(10)).await;
    assert!(!waiting.is_finished());
    // ... and another tenant's low-priority call, which would be shed if the slot were
    // held, is served.
    let other = shed.clone().oneshot(as_tenant("polite", 0)).await;
    other.unwrap().collect().await.unwrap();
    // The waiter is served once its bucket refills.
    tokio::time::advance(Duration::from_secs(60)).await;
    let served = waiting.await.unwrap();
    assert!(served.is_ok(), "{:?}", served.err());
}

/// A token reservation covers the most the request can cost: the larger of `max_tokens`
/// and `max_completion_tokens` (an upstream may honour either), times `n`.
#[tokio::test(start_paused = true)]
async fn a_token_reservation_counts_every_output_field_and_n() {
    let svc = RateLimitLayer::builder()
        .tokens(
            Limit::new(1000, Duration::from_secs(600))
                .burst(1000)
                .key(Key::global())
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(MockChat::with_default(Script::new().hang()));
    let mut lookalike = req("m");
    let b = lookalike.body_mut();
    b.max_completion_tokens = Some(1);
    b.max_tokens = Some(300);
    b.extra.insert("n".into(), 3.into());
    // Reserves 1 + 900, held while the call is in flight.
    let held = tokio::spawn(svc.clone().oneshot(lookalike));
    tokio::task::yield_now().await;
    let mut small = req("m");
    small.body_mut().max_tokens = Some(200);
    let e = svc.clone().oneshot(small).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "901 of 1000 reserved");
    held.abort();
}

/// Look-alike model ids share their base model's bucket.
#[tokio::test(start_paused = true)]
async fn look_alike_model_ids_share_one_bucket() {
    let svc = RateLimitLayer::builder()
        .requests(
            Limit::new(2, Duration::from_secs(60))
                .burst(2)
                .key(Key::base_model())
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(instant());
    let mut passed = 0;
    for m in [
        "openai/gpt-4o",
        "OpenAI/GPT-4o",
        "openai/gpt-4o:nitro",
        "openai/gpt-4o:floor",
    ] {
        passed += usize::from(svc.clone().oneshot(req(m)).await.is_ok());
    }
    assert_eq!(passed, 2);
    assert!(svc.clone().oneshot(req("anthropic/claude")).await.is_ok());
    assert_eq!(
        Key::base_model()
            .of_request(&req("OpenAI/GPT-4o:nitro"))
            .as_deref(),
        Some("openai/gpt-4o")
    );
}

/// A reservation settles to what the answer used: its usage when it reports one, else (a
/// caller who left) the prompt and a token per chunk delivered. The bucket then has exactly
/// the rest.
#[tokio::test(start_paused = true)]
async fn a_reservation_settles_to_exactly_what_was_used() {
    let mock = MockChat::new();
    let svc = global_tokens(&mock, Duration::from_secs(6000));
    // A reservation is the prompt and the limit asked for.
    let prompt = req("m").body().approx_prompt_tokens() as u32;
    // Reports its usage (3 + 10): 987 left.
    mock.push(Script::new().token("a").finish("stop").usage(3, 10));
    svc.clone()
        .oneshot(asking(500))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    mock.set_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    let left = 1000 - 13 - prompt;
    assert!(
        svc.clone().oneshot(asking(left + 1)).await.is_err(),
        "one more than left"
    );
    // Left after 40 of 100 chunks: its prompt and 40.
    mock.push(Script::tokens(Duration::ZERO, 100, Duration::ZERO));
    let mut s = svc.clone().oneshot(asking(100)).await.unwrap();
    for _ in 0..40 {
        s.next().await.unwrap().unwrap();
    }
    drop(s);
    let left = 1000 - 13 - (prompt + 40) - prompt;
    assert!(
        svc.clone().oneshot(asking(left + 1)).await.is_err(),
        "one more than left"
    );
    svc.clone().oneshot(asking(left)).await.unwrap();
}

fn poll_ready_now<S: tower::Service<ChatRequest>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    let waker = std::task::Waker::noop();
    svc.poll_ready(&mut std::task::Context::from_waker(waker))
}

trait CollectAll {
    async fn collect_all(self) -> Vec<Result<llm_layers_core::StreamChunk, LlmError>>;
}

impl CollectAll for llm_layers_core::ChatStream {
    async fn collect_all(self) -> Vec<Result<llm_layers_core::StreamChunk, LlmError>> {
        StreamExt::collect(self).await
    }
}

/// A refusal is counted under the limit that refused: requests or tokens.
#[tokio::test(start_paused = true)]
async fn refusals_are_counted_by_which_limit_refused() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let rec = DebuggingRecorder::new();
    let _g = metrics::set_default_local_recorder(&rec);
    let requests = RateLimitLayer::builder()
        .requests(
            Limit::new(1, Duration::from_secs(60))
                .burst(1)
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(instant());
    requests.clone().oneshot(req("m")).await.unwrap();
    assert!(
        requests.clone().oneshot(req("m")).await.is_err(),
        "a second request"
    );
    let mock = MockChat::new();
    let tokens = global_tokens(&mock, Duration::from_secs(600));
    // ~501 reserved while the first answer is open: 900 more do not fit.
    mock.push(Script::new().token("a").finish("stop").usage(3, 10));
    let _first = tokens.clone().oneshot(asking(500)).await.unwrap();
    mock.push(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    assert!(tokens.clone().oneshot(asking(900)).await.is_err());
    let mut counted: Vec<(String, u64)> = rec
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "llm_ratelimit_rejected_total")
        .filter_map(|(k, _, _, v)| {
            let limit = k
                .key()
                .labels()
                .find(|l| l.key() == "limit")?
                .value()
                .to_owned();
            let DebugValue::Counter(n) = v else {
                return None;
            };
            Some((limit, n))
        })
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        [("requests".to_owned(), 1), ("tokens".to_owned(), 1)]
    );
}
