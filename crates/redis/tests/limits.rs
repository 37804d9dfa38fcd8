//! Four stacks sharing one real Redis hold one limit: requests and tokens, exact and leased.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llm_layers_core::{ChatRequest, Message};
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{Limit, Mode, RateLimitLayer};
use llm_layers_redis::testing::RedisServer;
use llm_layers_redis::{LimitMode, Redis};
use tower::{Layer, ServiceExt};

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

/// `calls` calls spread over `replicas` stacks (each its own connection, as replicas are),
/// 8 in flight per stack; returns the admitted calls.
async fn load(
    server: &RedisServer,
    replicas: usize,
    calls: usize,
    layer: impl Fn(&Redis) -> RateLimitLayer,
    script: Script,
    request: fn() -> ChatRequest,
) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..replicas {
        let redis = server.connect(&format!("r{r}"));
        let svc = layer(&redis).layer(MockChat::with_default(script.clone()));
        for _ in 0..8 {
            let (svc, admitted) = (svc.clone(), admitted.clone());
            let n = calls / replicas / 8;
            tasks.push(tokio::spawn(async move {
                for _ in 0..n {
                    if let Ok(s) = svc.clone().oneshot(request()).await {
                        s.collect().await.unwrap();
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

fn within(got: u64, want: u64, share: f64) -> bool {
    (got as f64 - want as f64).abs() <= want as f64 * share
}

async fn requests_limit_holds(mode: LimitMode) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // R = 400 per 10 minutes (the refill during the run is under one call), load 3R.
    const R: u64 = 400;
    let layer = |redis: &Redis| {
        RateLimitLayer::builder()
            .requests(Limit::new(R, Duration::from_secs(600)).mode(Mode::Reject))
            .store(redis.limit_store().mode(mode).replicas(4).build().unwrap())
            .build()
            .unwrap()
    };
    let ok = Script::tokens(Duration::ZERO, 1, Duration::ZERO);
    let admitted = load(&server, 4, 3 * R as usize, layer, ok, req).await;
    assert!(
        within(admitted, R, 0.02),
        "{mode:?}: admitted {admitted} of R = {R}"
    );
    // Four replicas alone (no shared store) would have admitted 4R.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_share_one_request_limit_exactly() {
    requests_limit_holds(LimitMode::Exact).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_share_one_request_limit_with_leases() {
    requests_limit_holds(LimitMode::Lease).await;
}

/// A token limit reserves an estimate (here twice the real use) and settles to the usage:
/// the fleet spends the whole budget in real tokens, not half of it in estimates.
async fn token_limit_settles(mode: LimitMode) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    const T: u64 = 100_000;
    let layer = |redis: &Redis| {
        RateLimitLayer::builder()
            .tokens(Limit::new(T, Duration::from_secs(600)).mode(Mode::Reject))
            .store(redis.limit_store().mode(mode).replicas(4).build().unwrap())
            .build()
            .unwrap()
    };
    // Estimate: 1 prompt token + max_tokens 199 = 200; usage: 100.
    let request = || {
        let mut r = req();
        r.body_mut().max_tokens = Some(199);
        r
    };
    let used = Script::new().token("a").finish("stop").usage(1, 99);
    let admitted = load(&server, 4, 3_200, layer, used, request).await;
    let spent = admitted * 100;
    assert!(
        within(spent, T, 0.02),
        "{mode:?}: {admitted} calls spent {spent} of {T}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_token_limit_settles_to_usage_exactly() {
    token_limit_settles(LimitMode::Exact).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_token_limit_settles_to_usage_with_leases() {
    token_limit_settles(LimitMode::Lease).await;
}

/// At a high rate, leases cut the round trips and still hold the limit: 4 replicas at 3× a
/// limit of 2,000 per second (burst 200) for about 2 s admit what the limit allows over
/// the time the load ran (its burst + rate × elapsed), within 2 %, never more, with a round
/// trip for a small share of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_hold_a_high_rate_with_few_round_trips() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    const RATE: u64 = 2_000;
    const BURST: u64 = 200;
    // 1,500 calls per second per replica, paced, for 2 s: what replicas hold unspent when
    // the load stops (at most a lease each) is a small share of what was allowed.
    const CALLS: usize = 3_000;
    let admitted = Arc::new(AtomicU64::new(0));
    let mut services = Vec::new();
    for r in 0..4 {
        let redis = server.connect(&format!("r{r}"));
        let store = redis
            .limit_store()
            .mode(LimitMode::Lease)
            .replicas(4)
            .build()
            .unwrap();
        let svc = RateLimitLayer::builder()
            .requests(
                Limit::new(RATE, Duration::from_secs(1))
                    .burst(BURST)
                    .mode(Mode::Reject),
            )
            .store(store)
            .build()
            .unwrap()
            .layer(MockChat::with_default(Script::tokens(
                Duration::ZERO,
                1,
                Duration::ZERO,
            )));
        services.push(svc);
    }
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for svc in services {
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(667));
            let mut calls = Vec::new();
            for _ in 0..CALLS {
                tick.tick().await;
                let (svc, admitted) = (svc.clone(), admitted.clone());
                calls.push(tokio::spawn(async move {
                    if let Ok(s) = svc.oneshot(req()).await {
                        let _ = s.collect().await;
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            let last = tokio::time::Instant::now();
            for c in calls {
                c.await.unwrap();
            }
            last
        }));
    }
    let mut last = start;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    let secs = |t: tokio::time::Instant| t.saturating_duration_since(start).as_secs_f64();
    // At most what the limit allows until the last call was answered; at least 98 % of what
    // it allows while calls were coming.
    let most = BURST as f64 + RATE as f64 * secs(tokio::time::Instant::now());
    let allowed = BURST as f64 + RATE as f64 * secs(last);
    let got = admitted.load(Ordering::Relaxed) as f64;
    assert!(got <= most + 1.0, "over-admitted: {got} > {most:.0}");
    assert!(
        got >= allowed * 0.98,
        "admitted {got} of {allowed:.0} allowed over {:.3} s",
        secs(last)
    );
    let stats = server.cli(&["INFO", "commandstats"]).unwrap();
    let trips: f64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    eprintln!("leases: {got} admitted of {allowed:.0}, {trips} scripts for 12,000 calls");
    // Exact mode asks once per call (12,000) less the refusals it remembers.
    assert!(
        trips < 0.25 * 12_000.0,
        "{trips} round trips for 12,000 calls"
    );
}

/// An upstream 429 about our own key, seen by one replica, holds the key on all: the hold
/// is in Redis (`SET PX`, extended by a longer one, never shortened), and the others are
/// refused with the time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_hold_on_one_replica_holds_it_on_all() {
    use llm_layers_ratelimit::{BucketKey, LimitId, Rate, Store, Take};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = |name: &str| server.connect(name).limit_store().build().unwrap();
    let (a, b) = (store("a"), store("b"));
    let key = BucketKey {
        limit: LimitId::Requests(0),
        name: Arc::from("requests:tenant"),
        key: Arc::from("tenant"),
    };
    let rate = Rate {
        amount: 100,
        period: Duration::from_secs(1),
        burst: 100,
    };
    let decide = |s: &llm_layers_redis::RedisStore| {
        let t = s.take(&key, 1, &rate, tokio::time::Instant::now());
        async move {
            match t {
                Take::Ready(r) => r,
                Take::Pending(p) => p.await,
            }
        }
    };
    assert!(decide(&b).await.is_ok());
    let now = tokio::time::Instant::now();
    a.hold(&key, now + Duration::from_secs(20));
    a.hold(&key, now + Duration::from_secs(5)); // shorter: changes nothing
    // The hold travels off the call path: give it a moment to land.
    let mut wait = None;
    for _ in 0..100 {
        if let Err(w) = decide(&b).await {
            wait = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wait = wait.expect("replica b is held");
    assert!(
        wait > Duration::from_secs(18) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    assert!(decide(&a).await.is_err(), "and a, without a round trip");
}

/// A limit is named in Redis by what it keys by and its rate, never by its position: during
/// a rolling deploy a replica with another set of limits shares the buckets that mean the
/// same limit and no bucket that means another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_by_what_they_limit_not_by_their_position() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let model = || {
        Limit::new(5, Duration::from_secs(600))
            .key(llm_layers_ratelimit::Key::model())
            .mode(Mode::Reject)
    };
    let tenant = || {
        Limit::new(1_000, Duration::from_secs(600))
            .key(llm_layers_ratelimit::Key::tenant())
            .mode(Mode::Reject)
    };
    // The old replica: a tenant limit first, then the model limit. The new one: the model
    // limit only (it is first there).
    let old = RateLimitLayer::builder()
        .requests(tenant())
        .requests(model())
        .store(server.connect("old").limit_store().build().unwrap())
        .build()
        .unwrap()
        .layer(MockChat::with_default(Script::tokens(
            Duration::ZERO,
            1,
            Duration::ZERO,
        )));
    let new = RateLimitLayer::builder()
        .requests(model())
        .store(server.connect("new").limit_store().build().unwrap())
        .build()
        .unwrap()
        .layer(MockChat::with_default(Script::tokens(
            Duration::ZERO,
            1,
            Duration::ZERO,
        )));
    let as_tenant = || {
        let mut r = req();
        r.extensions_mut()
            .insert(llm_layers_core::Tenant(Arc::from("m")));
        r
    };
    let mut admitted = 0;
    for i in 0..10 {
        let svc = if i % 2 == 0 { old.clone() } else { new.clone() };
        if let Ok(s) = svc.oneshot(as_tenant()).await {
            s.collect().await.unwrap();
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "one model limit of 5 for both replicas");
    // Unnamed limits that would have the same name are refused at build.
    let twice = RateLimitLayer::builder()
        .requests(model())
        .requests(model())
        .build()
        .unwrap_err();
    assert!(twice.to_string().contains("Limit::name"), "{twice}");
}

/// A refusal says when the bucket has room again, as the script computes it on Redis time:
/// a limit of 2 per 10 s that is spent answers its third call "in 5 s", exact or leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_says_how_long_to_wait() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for mode in [LimitMode::Exact, LimitMode::Lease] {
        let svc = RateLimitLayer::builder()
            .requests(
                Limit::new(2, Duration::from_secs(10))
                    .burst(2)
                    .key(llm_layers_ratelimit::Key::tenant())
                    .mode(Mode::Reject),
            )
            .store(
                server
                    .connect(&format!("{mode:?}"))
                    .limit_store()
                    .mode(mode)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
            .layer(MockChat::with_default(Script::tokens(
                Duration::ZERO,
                1,
                Duration::ZERO,
            )));
        let mut r = req();
        r.extensions_mut()
            .insert(llm_layers_core::Tenant(Arc::from(format!("{mode:?}"))));
        let mut waits = Vec::new();
        for _ in 0..3 {
            match svc.clone().oneshot(r.clone()).await {
                Ok(s) => drop(s.collect().await.unwrap()),
                Err(e) => waits.push(e.retry_after().unwrap()),
            }
        }
        assert_eq!(waits.len(), 1, "{mode:?}: the third is refused");
        let wait = waits[0].as_secs_f64();
        assert!(
            (4.5..=5.0).contains(&wait),
            "{mode:?}: wait {wait} s, not about 5 s"
        );
    }
}
