//! Redis down is not an outage: a stack sharing its limits, breaker and latency through a
//! real Redis makes every call while Redis is killed, hung (`SIGSTOP`), asleep
//! (`DEBUG SLEEP`), cut (`CLIENT KILL`) or loses its scripts (`SCRIPT FLUSH`); the fallback
//! shows in the metrics and the store is used again when it comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llm_layers_breaker::BreakerLayer;
use llm_layers_core::{ChatRequest, Message};
use llm_layers_latency::LatencyStore;
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{Limit, Mode, RateLimit, RateLimitLayer};
use llm_layers_redis::testing::RedisServer;
use llm_layers_redis::{BreakerSync, LatencySync, LimitMode, Redis};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

type Svc = RateLimit<llm_layers_breaker::Breaker<MockChat>>;

/// A fault's name, how to cause it, how to mend it.
type Fault = (
    &'static str,
    Box<dyn Fn(&mut RedisServer)>,
    Box<dyn Fn(&mut RedisServer)>,
);

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn recorder() -> &'static Snapshotter {
    static SNAP: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    SNAP.get_or_init(|| {
        let rec = DebuggingRecorder::new();
        let snap = rec.snapshotter();
        rec.install().unwrap();
        snap
    })
}

fn metric(snap: &Snapshotter, name: &str) -> Option<f64> {
    let mut total = None;
    for (ck, _, _, v) in snap.snapshot().into_vec() {
        if ck.key().name() == name {
            let v = match v {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => continue,
            };
            // The debugging recorder snapshots counters as deltas: add them up.
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Calls for `d`, four at a time; returns (made, failed).
async fn drive(svc: &Svc, d: Duration) -> (u64, u64) {
    let (made, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + d;
    while Instant::now() < end {
        let mut batch = Vec::new();
        for _ in 0..4 {
            let (svc, made, failed) = (svc.clone(), made.clone(), failed.clone());
            batch.push(tokio::spawn(async move {
                made.fetch_add(1, Ordering::Relaxed);
                let ok = match svc.oneshot(req()).await {
                    Ok(s) => s.collect().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for b in batch {
            b.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (made.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Calls until the store is used again (at most 10 s); returns whether it was.
async fn recovers(svc: &Svc, redis: &Redis) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let (_, failed) = drive(svc, Duration::from_millis(50)).await;
        assert_eq!(failed, 0);
        if redis.is_healthy() {
            let before = redis.fallbacks();
            let (_, failed) = drive(svc, Duration::from_millis(100)).await;
            assert_eq!(failed, 0);
            if redis.fallbacks() == before {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_because_redis_failed() {
    let snap = recorder();
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let redis = Redis::builder(server.url())
        .replica("chaos")
        .budget(Duration::from_millis(50))
        .retry(Duration::from_millis(200))
        .build()
        .unwrap();
    let breaker = BreakerLayer::builder().build().unwrap();
    let latency = LatencyStore::new();
    let _b = BreakerSync::new(&redis, &breaker, Duration::from_millis(50)).spawn();
    let _l = LatencySync::new(&redis, &latency, Duration::from_millis(50)).spawn();
    let store = redis.limit_store().replicas(4).build().unwrap();
    let svc = RateLimitLayer::builder()
        .requests(Limit::new(1_000_000, Duration::from_secs(60)).mode(Mode::Reject))
        .tokens(Limit::new(100_000_000, Duration::from_secs(60)).mode(Mode::Reject))
        .store(store)
        .build()
        .unwrap()
        .layer(breaker.layer(MockChat::with_default(
            Script::tokens(Duration::ZERO, 2, Duration::ZERO).provider("P"),
        )));

    let (made, failed) = drive(&svc, Duration::from_millis(200)).await;
    assert!(made > 0 && failed == 0);
    assert_eq!(redis.fallbacks(), 0, "a healthy store answers every call");

    let faults: [Fault; 4] = [
        ("killed", Box::new(|s| s.kill()), Box::new(|s| s.restart())),
        ("SIGSTOP", Box::new(|s| s.pause()), Box::new(|s| s.resume())),
        (
            "CLIENT KILL",
            Box::new(|s| {
                let _ = s.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
            }),
            Box::new(|_| {}),
        ),
        (
            "DEBUG SLEEP",
            Box::new(|s| {
                let port = s.port;
                std::thread::spawn(move || {
                    let _ = llm_layers_redis::testing::cli_at(port, &["DEBUG", "SLEEP", "1"]);
                });
            }),
            Box::new(|_| {}),
        ),
    ];
    for (name, break_it, mend) in faults {
        let before = redis.fallbacks();
        break_it(&mut server);
        let (made, failed) = drive(&svc, Duration::from_millis(400)).await;
        assert_eq!(failed, 0, "{name}: {failed} of {made} calls failed");
        if name != "CLIENT KILL" {
            assert!(redis.fallbacks() > before, "{name}: no fallback seen");
        }
        mend(&mut server);
        assert!(
            recovers(&svc, &redis).await,
            "{name}: the store is not used again"
        );
    }

    // Its scripts gone: reloaded on NOSCRIPT, nothing falls back.
    let before = redis.fallbacks();
    assert!(server.cli(&["SCRIPT", "FLUSH"]).unwrap().contains("OK"));
    let (made, failed) = drive(&svc, Duration::from_millis(200)).await;
    assert_eq!(failed, 0, "SCRIPT FLUSH: {failed} of {made} failed");
    assert_eq!(redis.fallbacks(), before, "SCRIPT FLUSH needs no fallback");

    assert!(metric(snap, "llm_store_fallback_total").unwrap_or(0.0) > 0.0);
    // The gauge is the process's (the other test here holds a store that is down).
    assert!(metric(snap, "llm_store_healthy").is_some());
}

/// With the store unreachable from the start, a limit falls back to its share (limit ÷
/// replicas), never to the whole limit per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_falls_back_to_its_share_when_the_store_is_down() {
    let redis = llm_layers_redis::testing::unreachable();
    for mode in [LimitMode::Exact, LimitMode::Lease] {
        let svc = RateLimitLayer::builder()
            .requests(Limit::new(40, Duration::from_secs(600)).mode(Mode::Reject))
            .store(redis.limit_store().mode(mode).replicas(4).build().unwrap())
            .build()
            .unwrap()
            .layer(MockChat::with_default(Script::tokens(
                Duration::ZERO,
                1,
                Duration::ZERO,
            )));
        let mut admitted = 0;
        for _ in 0..40 {
            if svc.clone().oneshot(req()).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10, "{mode:?}: 40 ÷ 4 replicas");
    }
    assert!(!redis.is_healthy());
}

/// Bad settings are refused with a word on what is wrong, never a panic.
#[test]
fn bad_settings_are_refused() {
    let e = Redis::builder("redis://127.0.0.1:1").build().unwrap_err();
    assert!(e.to_string().contains("Tokio runtime"), "{e}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = Redis::builder("http://nope").build().unwrap_err();
        assert!(e.to_string().contains("redis: Redis URL"), "{e}");
        let e = Redis::builder("redis://127.0.0.1:1")
            .budget(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("budget"), "{e}");
        let redis = Redis::builder("redis://127.0.0.1:1").build().unwrap();
        assert!(redis.limit_store().replicas(0).build().is_err());
        assert!(redis.limit_store().max_keys(0).build().is_err());
        assert!(
            redis
                .limit_store()
                .lease_for(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(redis.limit_store().build().is_ok());
        assert!(!format!("{redis:?}").is_empty());
    });
}

/// What one replica admits from its local share while its store does not answer is owed to
/// the shared bucket: once the store answers again, the debt is charged, so what the fleet
/// admits in all (local and shared) stays within the limit; and a replica that has been
/// spending its share does not get a fresh burst when it falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_plus_shared_stays_within_the_limit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = llm_layers_redis::testing::StallingProxy::start(&server)
        .await
        .unwrap();
    let stack = |redis: &Redis| {
        RateLimitLayer::builder()
            .requests(Limit::new(100, Duration::from_secs(600)).mode(Mode::Reject))
            .store(redis.limit_store().replicas(2).build().unwrap())
            .build()
            .unwrap()
            .layer(MockChat::with_default(Script::tokens(
                Duration::ZERO,
                1,
                Duration::ZERO,
            )))
    };
    let flaky = Redis::builder(proxy.url())
        .budget(Duration::from_millis(50))
        .retry(Duration::from_millis(100))
        .build()
        .unwrap();
    let (a, b) = (stack(&flaky), stack(&server.connect("b")));
    async fn admitted(svc: &RateLimit<MockChat>, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if let Ok(s) = svc.clone().oneshot(req()).await {
                s.collect().await.unwrap();
                ok += 1;
            }
        }
        ok
    }
    // A spends 30 from the shared bucket, then loses its store: its local share (50) is
    // what it has left of it, 20, not a fresh 50.
    assert_eq!(admitted(&a, 30).await, 30);
    proxy.stall(true);
    let local = admitted(&a, 60).await;
    assert_eq!(
        local, 20,
        "the local share, less what A spent from the shared bucket"
    );
    // The store answers again: A's debt reaches the shared bucket, and B gets what is left
    // of the limit of 100, not all of it.
    proxy.stall(false);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            while !flaky.is_healthy() {
                let _ = a.clone().oneshot(req()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok(),
        "the store came back"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shared = admitted(&b, 100).await;
    assert!(
        30 + local + shared <= 100,
        "30 shared + {local} local + {shared} shared after: over the limit of 100"
    );
}
