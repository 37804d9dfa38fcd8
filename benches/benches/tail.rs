//! Tail latency on the mock's `fat_tail` preset: the plain leaf against the stack (latency
//! store + adaptive hedge), same seed, same requests, side by side in one run, plus the
//! oracle bound computed from the preset's own distributions. Then faults: the plain leaf
//! against the gateway's whole stack on the `outage` (a dead and a hanging provider),
//! `rate_limited` (half of all requests 429), `chaos`, `all_down`, `dead_throttled` (a dead
//! model whose last provider throttles) and `hanging` (headers, then nothing) presets,
//! success rate and corrupted answers (answers returned as a success that are not exactly the
//! mock's).
//!
//! `cargo bench -p llm-layers-bench --bench tail`
//!
//! The preset runs 100× faster (time scale 0.01): divide nothing, the ratios are the point;
//! multiply milliseconds by 100 for real-world seconds × 1000.

use std::time::Duration;

use llm_layers_breaker::{BreakerLayer, SlowCall};
use llm_layers_core::{ChatRequest, ChatStream, LlmError, Message, WholeAnswer};
use llm_layers_hedge::{
    ChooseUpstreamLayer, FollowPlan, HedgeDelay, HedgeLayer, HedgePolicy, NextUpstream, Upstreams,
};
use llm_layers_latency::{LatencyLayer, LatencyStore, PriorFeed, Scope};
use llm_layers_mock::{Dist, MockServer, Scenario, expected_answer};
use llm_layers_openrouter::OpenRouter;
use llm_layers_router::{LearnedOrderConfig, Objective, RouterLayer, SlaConfig};
use llm_layers_timeout::TimeoutLayer;
use rand::SeedableRng;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder, ServiceExt};

type Svc = BoxCloneSyncService<ChatRequest, ChatStream, LlmError>;

const SCALE: f64 = 0.01;

fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)]
}

#[derive(Clone)]
struct Row {
    name: String,
    p50: f64,
    p95: f64,
    p99: f64,
    total_p99: f64,
    ok: f64,
    corrupted: usize,
    upstream_per_call: f64,
    /// What the mock billed per 1,000 calls, USD (computed rows: NaN unless priced).
    cost_per_1k: f64,
}

/// One call's outcome: its time to first token and to the end (ms), and whether the
/// answer was exactly the mock's (anything else returned as a success is corrupted).
type Call = Option<(f64, f64, bool)>;

/// One call through `svc`: streaming, or a whole answer (`WholeAnswer`, as the gateway
/// marks a non-streaming request) when `whole`. A call still running after 20 s fails.
async fn one_call(svc: Svc, seed: u64, i: usize, whole: bool) -> Call {
    let mut r = ChatRequest::new("mock/echo", vec![Message::user(format!("tail {seed} {i}"))]);
    r.body_mut().stream = Some(!whole);
    r.body_mut().max_tokens = Some(4);
    if whole {
        r.extensions_mut().insert(WholeAnswer);
    }
    let expected = expected_answer(r.body(), 4);
    let start = tokio::time::Instant::now();
    let ms =
        |start: tokio::time::Instant| (tokio::time::Instant::now() - start).as_secs_f64() * 1000.0;
    let call = async {
        let s = svc.oneshot(r).await.ok()?;
        let ttft = ms(start);
        let answer = s.collect().await.ok()?;
        let text = answer
            .choices
            .first()
            .and_then(|c| c.message.content.clone());
        Some((ttft, ms(start), text.as_deref() == Some(expected.as_str())))
    };
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .ok()
        .flatten()
}

async fn run(name: &str, svc: Svc, server: &MockServer, n: usize, seed: u64, whole: bool) -> Row {
    run_calls(name, svc, server, n, seed, whole).await.0
}

/// [`run`], also returning every call.
async fn run_calls(
    name: &str,
    svc: Svc,
    server: &MockServer,
    n: usize,
    seed: u64,
    whole: bool,
) -> (Row, Vec<Call>) {
    let before = server.counters().requests();
    let billed = server.counters().billed_usd();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 64;
    for w in 0..workers {
        let svc = svc.clone();
        tasks.spawn(async move {
            let mut calls: Vec<Call> = Vec::new();
            for i in (w..n).step_by(workers) {
                calls.push(one_call(svc.clone(), seed, i, whole).await);
            }
            calls
        });
    }
    let mut calls = Vec::new();
    while let Some(r) = tasks.join_next().await {
        calls.extend(r.unwrap());
    }
    let upstream = server.counters().requests() - before;
    let mut row = row_of(name, &calls, n, upstream);
    row.cost_per_1k = (server.counters().billed_usd() - billed) * 1000.0 / n as f64;
    (row, calls)
}

/// The row of `n` calls that cost `upstream` upstream requests.
fn row_of(name: &str, calls: &[Call], n: usize, upstream: u64) -> Row {
    let done: Vec<_> = calls.iter().flatten().collect();
    let mut ttfts: Vec<f64> = done.iter().map(|c| c.0).collect();
    let mut totals: Vec<f64> = done.iter().map(|c| c.1).collect();
    Row {
        name: name.into(),
        p50: quantile(&mut ttfts, 0.5),
        p95: quantile(&mut ttfts, 0.95),
        p99: quantile(&mut ttfts, 0.99),
        total_p99: quantile(&mut totals, 0.99),
        ok: done.iter().filter(|c| c.2).count() as f64 / n as f64,
        corrupted: done.iter().filter(|c| !c.2).count(),
        upstream_per_call: upstream as f64 / n as f64,
        cost_per_1k: f64::NAN,
    }
}

/// The preset's fastest provider's TTFT distribution (by median).
fn fastest(s: &Scenario) -> &Dist {
    &s.providers
        .iter()
        .min_by(|a, b| median(&a.ttft).total_cmp(&median(&b.ttft)))
        .unwrap()
        .ttft
}

/// A computed row from simulated TTFTs.
fn computed(name: &str, mut xs: Vec<f64>, upstream_per_call: f64) -> Row {
    Row {
        name: name.into(),
        p50: quantile(&mut xs, 0.5),
        p95: quantile(&mut xs, 0.95),
        p99: quantile(&mut xs, 0.99),
        total_p99: f64::NAN,
        ok: 1.0,
        corrupted: 0,
        upstream_per_call,
        cost_per_1k: f64::NAN,
    }
}

/// The oracle: every call to the fastest provider, hedged (to the fastest too) at the
/// delay a 5 % budget allows (its own p95), from the preset's distributions.
fn oracle(s: &Scenario, n: usize) -> Row {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let fastest = fastest(s);
    let draw = |rng: &mut rand::rngs::SmallRng| fastest.sample_ms(rng) * SCALE;
    let mut alone: Vec<f64> = (0..200_000).map(|_| draw(&mut rng)).collect();
    let d = quantile(&mut alone, 0.95);
    let xs: Vec<f64> = (0..n * 50)
        .map(|_| {
            let first = draw(&mut rng);
            if first > d {
                first.min(d + draw(&mut rng))
            } else {
                first
            }
        })
        .collect();
    computed("oracle (fastest provider + hedge at its p95)", xs, 1.05)
}

/// Every call to the fastest provider, no hedge: what a perfect provider order gives.
fn fastest_only(s: &Scenario) -> Row {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let fastest = fastest(s);
    let xs: Vec<f64> = (0..200_000)
        .map(|_| fastest.sample_ms(&mut rng) * SCALE)
        .collect();
    computed("always the fastest provider, no hedge", xs, 1.0)
}

fn median(d: &Dist) -> f64 {
    match d {
        Dist::Fixed { ms } => *ms,
        Dist::Uniform { min_ms, max_ms } => (min_ms + max_ms) / 2.0,
        Dist::Lognormal { p50_ms, .. } => *p50_ms,
    }
}

/// A second mixture: the fastest provider (by median) has a heavy tail of its own, a
/// middle one is only somewhat slower and steadier, a third is slow. The hedge matters as
/// much as the routing here.
fn heavy_fast() -> Scenario {
    let mut s = Scenario::fat_tail();
    let dist = |p50_ms: f64, p99_ms: f64| Dist::Lognormal {
        p50_ms,
        p99_ms,
        cap_ms: 90_000.0,
    };
    s.providers.truncate(3);
    s.providers[0].ttft = dist(800.0, 9_000.0);
    s.providers[0].weight = 0.4;
    s.providers[1].name = "Middle".into();
    s.providers[1].slug = "middle".into();
    s.providers[1].ttft = dist(1_300.0, 3_000.0);
    s.providers[1].weight = 0.4;
    s.providers[2].name = "Sloth".into();
    s.providers[2].slug = "sloth".into();
    s.providers[2].ttft = dist(6_000.0, 30_000.0);
    s.providers[2].weight = 0.2;
    s
}

/// The learned stack, as the gateway builds it but at the bench's time scale: router
/// (Thompson order, published priors when `priors`) → hedge (p95 of the first attempt's
/// provider, 5 % budget, the router's plan) → breaker → attempt latency → idle timeout.
fn learned(leaf: &OpenRouter, priors: bool) -> Svc {
    learned_with_router(leaf, priors).0
}

fn learned_with_router(leaf: &OpenRouter, priors: bool) -> (Svc, RouterLayer) {
    let (svc, router, _) = learned_parts(leaf, priors);
    (svc, router)
}

/// [`learned_with_router`], also returning its latency store (for a fleet to share).
fn learned_parts(leaf: &OpenRouter, priors: bool) -> (Svc, RouterLayer, LatencyStore) {
    learned_ordered(leaf, priors, LearnedOrderConfig::default())
}

/// [`learned_parts`] with its provider order configured (an objective, an SLA).
fn learned_ordered(
    leaf: &OpenRouter,
    priors: bool,
    order: LearnedOrderConfig,
) -> (Svc, RouterLayer, LatencyStore) {
    // Snapshots reused for 250 ms of real time, as in the gateway: 2.5 ms at this scale.
    let store = LatencyStore::builder()
        .min_samples(10)
        .refresh(Duration::from_secs_f64(0.25 * SCALE))
        .build()
        .unwrap();
    let mut router = RouterLayer::builder(store.clone())
        .seed(42)
        .learned_order(order);
    if priors {
        let fetcher = leaf.clone();
        let feed = PriorFeed::builder(
            store.clone(),
            std::sync::Arc::new(move |model: String| {
                let leaf = fetcher.clone();
                Box::pin(async move { leaf.endpoint_stats(&model).await })
            }),
        )
        .build()
        .unwrap();
        router = router.priors(feed);
    }
    let router = router.build().unwrap();
    let breaker = breaker_on(&store);
    (
        BoxCloneSyncService::new(router.layer(hedged(leaf, store.clone(), Some(breaker)))),
        router,
        store,
    )
}

/// A replica joining a warm fleet: another replica (no priors) makes 2,000 calls and pushes
/// its latency profile to Redis; a fresh stack merges it once before its first call.
async fn joining_a_warm_fleet(
    redis: &llm_layers_redis::testing::RedisServer,
    leaf: &OpenRouter,
    srv: &MockServer,
    seed: u64,
) -> Svc {
    let fleet_redis = redis.connect(&format!("fleet-{seed}"));
    let (fleet, _, fleet_store) = learned_parts(leaf, false);
    let _ = run_at("fleet", fleet, srv, 2_000, 13, 16).await;
    let pushed =
        llm_layers_redis::LatencySync::new(&fleet_redis, &fleet_store, Duration::from_secs(2));
    let _ = pushed.sync().await;
    let (svc, _, store) = learned_parts(leaf, false);
    let joined = llm_layers_redis::LatencySync::new(
        &redis.connect(&format!("new-{seed}")),
        &store,
        Duration::from_secs(2),
    );
    let _ = joined.sync().await;
    svc
}

/// A hedge at the recorded p95 (5 ms to 30 s, 50 ms while cold) within a 5 % budget.
fn hedge_at_p95(store: &LatencyStore, policy: impl HedgePolicy) -> HedgeLayer {
    HedgeLayer::builder()
        .delay(HedgeDelay::Quantile {
            store: store.clone(),
            quantile: 0.95,
            min: Duration::from_millis(5),
            max: Duration::from_secs(30),
            cold: Duration::from_millis(50),
        })
        .policy(policy)
        .budget_window(Duration::from_secs(10))
        .budget_floor(0)
        .budget_ratio(0.05)
        .build()
        .unwrap()
}

fn hedged(leaf: &OpenRouter, store: LatencyStore, breaker: Option<BreakerLayer>) -> Svc {
    let hedge = hedge_at_p95(&store, FollowPlan);
    let attempt = ServiceBuilder::new()
        .layer(
            TimeoutLayer::builder()
                .idle(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .layer(
            LatencyLayer::builder()
                .scope(Scope::Attempt)
                .store(store)
                .build()
                .unwrap(),
        )
        .service(leaf.clone());
    match breaker {
        Some(b) => BoxCloneSyncService::new(hedge.layer(b.layer(attempt))),
        None => BoxCloneSyncService::new(hedge.layer(attempt)),
    }
}

fn breaker_on(store: &LatencyStore) -> BreakerLayer {
    BreakerLayer::builder()
        .slow_call(SlowCall::P50Multiple {
            store: store.clone(),
            factor: 3.0,
            min: Duration::from_millis(1),
        })
        .seed(3)
        .build()
        .unwrap()
}

fn leaf_for(server: &MockServer) -> OpenRouter {
    OpenRouter::builder()
        .api_key("sk-or-v1-bench")
        .base_url(server.base_url())
        .build()
        .unwrap()
}

fn print_rows(title: &str, rows: &[Row]) {
    println!("{title}");
    println!(
        "{:<50} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10} {:>11}",
        "arm", "TTFT p50", "p95", "p99", "total p99", "ok", "upstream/call", "$/1k calls"
    );
    for r in rows {
        // Computed rows have no end-to-end time.
        let total = if r.total_p99.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.1}ms", r.total_p99)
        };
        let cost = if r.cost_per_1k.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.4}", r.cost_per_1k)
        };
        println!(
            "{:<50} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>10} {:>7.1}% {:>13.3} {:>11}",
            r.name,
            r.p50,
            r.p95,
            r.p99,
            total,
            r.ok * 100.0,
            r.upstream_per_call,
            cost
        );
    }
}

/// "x p95 / x p99 over the plain leaf = A % / B % of the oracle's".
fn against_oracle(plain: &Row, s: &Row, oracle: &Row) -> String {
    format!(
        "{}: p95 x{:.2} p99 x{:.2} over the plain leaf = {:.0} % (p95) and {:.0} % (p99) of the oracle's x{:.2} / x{:.2}; {:+.1} % upstream requests",
        s.name.trim(),
        plain.p95 / s.p95,
        plain.p99 / s.p99,
        100.0 * (plain.p95 / s.p95) / (plain.p95 / oracle.p95),
        100.0 * (plain.p99 / s.p99) / (plain.p99 / oracle.p99),
        plain.p95 / oracle.p95,
        plain.p99 / oracle.p99,
        100.0 * (s.upstream_per_call - 1.0),
    )
}

/// Steady state on `scenario`: each stack warmed with `n / 4` calls, then `n` calls.
async fn steady(name: &str, scenario: Scenario, n: usize, full_table: bool) {
    let server = MockServer::start(scenario.clone()).await.unwrap();
    let leaf = leaf_for(&server);
    let plain: Svc = BoxCloneSyncService::new(leaf.clone());
    let stack = hedged(&leaf, LatencyStore::new(), None);
    let store_b = LatencyStore::new();
    let with_breaker = hedged(&leaf, store_b.clone(), Some(breaker_on(&store_b)));
    let routed = learned(&leaf, true);
    // Learned provider order alone, against always sending to the fastest provider.
    let store_o = LatencyStore::builder().min_samples(10).build().unwrap();
    let order_only: Svc = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(
                RouterLayer::builder(store_o.clone())
                    .seed(42)
                    .build()
                    .unwrap(),
            )
            .layer(
                LatencyLayer::builder()
                    .scope(Scope::Attempt)
                    .store(store_o)
                    .build()
                    .unwrap(),
            )
            .service(leaf.clone()),
    );
    // Warm each stack's store (and the pool) so delays and rankings are learned, not cold.
    let _ = run("warm-up", routed.clone(), &server, n / 4, 5, false).await;
    let mut rows = vec![run("plain leaf", plain, &server, n, 2, false).await];
    if full_table {
        let _ = run("warm-up", stack.clone(), &server, n / 4, 1, false).await;
        let _ = run("warm-up", with_breaker.clone(), &server, n / 4, 3, false).await;
        let _ = run("warm-up", order_only.clone(), &server, n / 4, 6, false).await;
        rows.push(
            run(
                "leaf + latency store + hedge (p95, 5 % budget)",
                stack,
                &server,
                n,
                2,
                false,
            )
            .await,
        );
        rows.push(
            run(
                "  + breaker (slow call = 3x recorded p50)",
                with_breaker,
                &server,
                n,
                2,
                false,
            )
            .await,
        );
    }
    rows.push(
        run(
            "  + router (Thompson order, priors, plan)",
            routed,
            &server,
            n,
            2,
            false,
        )
        .await,
    );
    // One price everywhere on these presets: the oracle's cost is the plain leaf's per
    // upstream request, times its own requests per call.
    let per_request = rows[0].cost_per_1k / rows[0].upstream_per_call;
    let mut o = oracle(&scenario, n);
    o.cost_per_1k = per_request * o.upstream_per_call;
    rows.push(o);
    if full_table {
        rows.push(
            run(
                "leaf + router (learned provider order only)",
                order_only,
                &server,
                n,
                2,
                false,
            )
            .await,
        );
        rows.push(fastest_only(&scenario));
    }
    print_rows(
        &format!(
            "{name} at time scale {SCALE}, {n} streaming calls after {} warm-up, 64 concurrent, seed 42",
            n / 4
        ),
        &rows,
    );
    let oracle_row = rows.iter().find(|r| r.name.starts_with("oracle")).unwrap();
    if full_table {
        let (order, best) = (&rows[rows.len() - 2], &rows[rows.len() - 1]);
        println!(
            "{}: p95 {:.1} ms and p99 {:.1} ms against {:.1} / {:.1} ms always on the fastest provider (x{:.2} / x{:.2})",
            order.name,
            order.p95,
            order.p99,
            best.p95,
            best.p99,
            order.p95 / best.p95,
            order.p99 / best.p99,
        );
    }
    for s in rows
        .iter()
        .filter(|r| r.name.starts_with("leaf +") || r.name.starts_with("  +"))
    {
        if s.name.contains("order only") {
            continue;
        }
        println!("{}", against_oracle(&rows[0], s, oracle_row));
    }
    println!();
}

/// The SLA of the priced preset: TTFT p95 at most 1.5 s (15 ms at the bench's scale).
const PRICED_SLA_MS: f64 = 1_500.0 * SCALE;

/// Speed at a price, on the mock's `priced` preset (the fastest endpoint is the dearest, a
/// mid-priced one meets a 1.5 s p95, the cheapest misses it): the plain leaf (the
/// upstream's own routing), the learned stack with `fastest` and with `cheapest` within
/// the SLA (router with priors → hedge at the p95 → breaker), and the oracle, which knows
/// every endpoint's distribution and price and sends every call to the cheapest one that
/// meets the SLA, unhedged (a measured run, pinned there). Each stack warmed first.
async fn priced(n: usize) {
    let scenario = Scenario::priced().with_time_scale(SCALE).with_seed(42);
    let server = MockServer::start(scenario.clone()).await.unwrap();
    let leaf = leaf_for(&server);
    let sla = SlaConfig {
        ttft_ms: PRICED_SLA_MS as u64,
        ttft_quantile: 0.95,
        min_success_rate: 0.95,
    };
    let ordered = |objective: Objective| {
        learned_ordered(
            &leaf,
            true,
            LearnedOrderConfig {
                objective,
                sla: Some(sla),
                ..LearnedOrderConfig::default()
            },
        )
        .0
    };
    let pinned = leaf.clone();
    let oracle: Svc = BoxCloneSyncService::new(tower::service_fn(move |mut r: ChatRequest| {
        let p = r.body_mut().provider_mut();
        p.order = Some(vec!["steady".into()]);
        p.allow_fallbacks = Some(false);
        pinned.clone().oneshot(r)
    }));
    let arms: Vec<(&str, Svc)> = vec![
        (
            "plain leaf (the upstream's routing)",
            BoxCloneSyncService::new(leaf.clone()),
        ),
        ("stack, fastest", ordered(Objective::Fastest)),
        (
            "stack, cheapest within the SLA",
            ordered(Objective::Cheapest),
        ),
        (
            "stack, weighted=1",
            ordered(Objective::Weighted {
                latency_weight: 1.0,
            }),
        ),
        ("oracle (every call to Steady, unhedged)", oracle),
    ];
    let slugs = ["swift", "steady", "thrifty"];
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (name, svc) in arms {
        let _ = run("warm-up", svc.clone(), &server, n / 4, 5, false).await;
        let before: Vec<u64> = slugs
            .iter()
            .map(|s| server.counters().requests_to(s))
            .collect();
        let (row, calls) = run_calls(name, svc, &server, n, 2, false).await;
        let to: Vec<u64> = slugs
            .iter()
            .zip(&before)
            .map(|(s, b)| server.counters().requests_to(s) - b)
            .collect();
        let within = calls
            .iter()
            .flatten()
            .filter(|c| c.0 <= PRICED_SLA_MS)
            .count() as f64
            / n as f64;
        notes.push((within, to));
        rows.push(row);
    }
    print_rows(
        &format!(
            "priced preset at time scale {SCALE}, {n} streaming calls after {} warm-up, 64 concurrent; SLA TTFT p95 <= {PRICED_SLA_MS} ms",
            n / 4
        ),
        &rows,
    );
    let oracle_row = rows.last().unwrap().clone();
    for (r, (within, to)) in rows.iter().zip(&notes) {
        let total: u64 = to.iter().sum::<u64>().max(1);
        println!(
            "{}: cost x{:.3} the oracle's; p95 {:.1} ms ({}); {:.1} % of calls within {PRICED_SLA_MS} ms; upstream requests to Swift / Steady / Thrifty {:.1} / {:.1} / {:.1} %",
            r.name,
            r.cost_per_1k / oracle_row.cost_per_1k,
            r.p95,
            if r.p95 <= PRICED_SLA_MS {
                "SLA met"
            } else {
                "SLA missed"
            },
            within * 100.0,
            100.0 * to[0] as f64 / total as f64,
            100.0 * to[1] as f64 / total as f64,
            100.0 * to[2] as f64 / total as f64,
        );
    }
    println!();
}

/// Cold start: a fresh stack, 16 warm-up calls, then the first 400 calls at 16 in flight,
/// with true, no and wrong priors; the plain leaf on the same 400 calls. A p99 of 400
/// calls is their fourth slowest: each arm runs on five mock seeds (42..=46, the same for
/// every arm) and the table shows medians, with the p99's range.
async fn cold_start(name: &str, scenario: Scenario) {
    const ARMS: [&str; 5] = [
        "plain leaf",
        "learned stack, no priors",
        "learned stack, published priors",
        "learned stack, wrong priors (slowest published fastest)",
        "learned stack joining a warm fleet (Redis, 2,000 calls)",
    ];
    let redis = llm_layers_redis::testing::RedisServer::start();
    let (n, warm, conc) = (400, 16, 16);
    let seeds = 42..47u64;
    // Per arm: its row and its calls-past-50 p99, per seed.
    let mut runs: Vec<Vec<(Row, f64)>> = vec![Vec::new(); ARMS.len()];
    for seed in seeds.clone() {
        // Each seed's fleet starts from an empty Redis.
        if let Some(r) = &redis {
            let _ = r.cli(&["FLUSHALL"]);
        }
        let scenario = scenario.clone().with_seed(seed);
        let server = MockServer::start(scenario.clone()).await.unwrap();
        let liar = MockServer::start(scenario.with_wrong_stats())
            .await
            .unwrap();
        for (i, arm) in ARMS.iter().enumerate() {
            let srv = if i == 3 { &liar } else { &server };
            let leaf = leaf_for(srv);
            let svc = match i {
                0 => BoxCloneSyncService::new(leaf),
                4 => match &redis {
                    Some(r) => {
                        let svc = joining_a_warm_fleet(r, &leaf, srv, seed).await;
                        let _ = run_at("warm-up", svc.clone(), srv, warm, 11, conc).await;
                        svc
                    }
                    None => continue,
                },
                _ => {
                    let (svc, router) = learned_with_router(&leaf, i > 1);
                    let _ = run_at("warm-up", svc.clone(), srv, warm, 11, conc).await;
                    if std::env::var("TAIL_DEBUG").is_ok() {
                        println!(
                            "{arm} seed {seed} after warm-up: {:?}",
                            router.rankings("mock/echo")
                        );
                    }
                    svc
                }
            };
            runs[i].push(run_at(arm, svc, srv, n, 12, conc).await);
        }
    }
    let median = |xs: &mut Vec<f64>| quantile(xs, 0.5);
    let mut rows: Vec<Row> = Vec::new();
    let mut spread: Vec<(f64, f64, f64)> = Vec::new();
    for (arm, r) in ARMS.iter().zip(&runs).filter(|(_, r)| !r.is_empty()) {
        let col = |f: &dyn Fn(&(Row, f64)) -> f64| r.iter().map(f).collect::<Vec<f64>>();
        let p99s = col(&|x| x.0.p99);
        rows.push(Row {
            name: (*arm).into(),
            p50: median(&mut col(&|x| x.0.p50)),
            p95: median(&mut col(&|x| x.0.p95)),
            p99: median(&mut p99s.clone()),
            total_p99: median(&mut col(&|x| x.0.total_p99)),
            ok: median(&mut col(&|x| x.0.ok)),
            corrupted: r.iter().map(|x| x.0.corrupted).sum(),
            upstream_per_call: median(&mut col(&|x| x.0.upstream_per_call)),
            cost_per_1k: median(&mut col(&|x| x.0.cost_per_1k)),
        });
        let lo = p99s.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p99s.iter().copied().fold(0.0, f64::max);
        spread.push((lo, hi, median(&mut col(&|x| x.1))));
    }
    let arms = rows.len();
    rows.push(oracle(&scenario, n));
    print_rows(
        &format!(
            "{name}, cold start: the first {n} streaming calls after {warm} warm-up, {conc} concurrent; medians over mock seeds 42..=46"
        ),
        &rows,
    );
    for (i, r) in rows[1..arms].iter().enumerate() {
        let (lo, hi, late) = spread[i + 1];
        println!(
            "{}; p99 over the seeds {lo:.1}..{hi:.1} ms; calls 51..{n} alone: p99 {late:.1} ms (plain leaf {:.1} ms)",
            against_oracle(&rows[0], r, &rows[arms]),
            spread[0].2
        );
    }
    if redis.is_none() {
        println!("(no redis-server here: the warm-fleet arm was left out)");
    }
    println!();
}

/// `run` at `conc` concurrent callers in call order (call `i` starts when a caller frees),
/// also returning the p99 of calls past the 50th.
async fn run_at(
    name: &str,
    svc: Svc,
    server: &MockServer,
    n: usize,
    seed: u64,
    conc: usize,
) -> (Row, f64) {
    let before = server.counters().requests();
    let billed = server.counters().billed_usd();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (svc, next) = (svc.clone(), next.clone());
        tasks.spawn(async move {
            let mut calls: Vec<(usize, Call)> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break calls;
                }
                calls.push((i, one_call(svc.clone(), seed, i, false).await));
            }
        });
    }
    let mut calls = Vec::new();
    while let Some(r) = tasks.join_next().await {
        calls.extend(r.unwrap());
    }
    let upstream = server.counters().requests() - before;
    let mut late: Vec<f64> = calls
        .iter()
        .filter(|c| c.0 >= 50)
        .filter_map(|c| c.1.map(|x| x.0))
        .collect();
    let calls: Vec<Call> = calls.into_iter().map(|c| c.1).collect();
    let mut row = row_of(name, &calls, n, upstream);
    row.cost_per_1k = (server.counters().billed_usd() - billed) * 1000.0 / n as f64;
    (row, quantile(&mut late, 0.99))
}

/// Two upstreams: the `fat_tail` mock as OpenRouter and a second mock as a provider's own
/// endpoint (OpenAI-compatible dialect, one provider, TTFT p50 0.9 s, p99 2.5 s), alone and
/// together: each call starts on the upstream measured faster for its model (one call in 50
/// on the other), the other raced at the hedge delay (p95 of recent TTFT, 5 % budget);
/// against the oracle on the pair (every call to the faster one, hedged at its p95).
async fn two_upstreams(n: usize) {
    let fat = Scenario::fat_tail().with_time_scale(SCALE).with_seed(42);
    let mut direct_scenario = Scenario::healthy().with_time_scale(SCALE).with_seed(43);
    direct_scenario.providers.truncate(1);
    direct_scenario.providers[0].ttft = Dist::Lognormal {
        p50_ms: 900.0,
        p99_ms: 2_500.0,
        cap_ms: 90_000.0,
    };
    direct_scenario.strict_openai = true;
    let openrouter = MockServer::start(fat.clone()).await.unwrap();
    let direct = MockServer::start(direct_scenario.clone()).await.unwrap();
    let or_leaf = leaf_for(&openrouter);
    let direct_leaf = OpenRouter::builder()
        .api_key("sk-direct-bench")
        .base_url(direct.base_url())
        .dialect(llm_layers_openrouter::Dialect::OpenAiCompatible)
        .build()
        .unwrap();
    let store = LatencyStore::builder()
        .min_samples(10)
        .refresh(Duration::from_secs_f64(0.25 * SCALE))
        .build()
        .unwrap();
    let upstreams = Upstreams::new([
        ("openrouter", or_leaf.clone()),
        ("direct", direct_leaf.clone()),
    ])
    .unwrap()
    .record_into(store.clone());
    let choose = ChooseUpstreamLayer::new(store.clone(), ["openrouter", "direct"], 50);
    let raced: Svc = BoxCloneSyncService::new(
        choose.layer(
            hedge_at_p95(&store, NextUpstream).layer(
                LatencyLayer::builder()
                    .scope(Scope::Attempt)
                    .store(store)
                    .build()
                    .unwrap()
                    .layer(upstreams),
            ),
        ),
    );
    let _ = run("warm-up", raced.clone(), &openrouter, n / 4, 5, false).await;
    let both = |r: Row, extra: f64, extra_cost: f64| Row {
        upstream_per_call: r.upstream_per_call + extra,
        cost_per_1k: r.cost_per_1k + extra_cost * 1000.0 / n as f64,
        ..r
    };
    let d0 = direct.counters().requests();
    let b0 = direct.counters().billed_usd();
    let row = run(
        "learned first upstream, the other raced at the p95",
        raced,
        &openrouter,
        n,
        2,
        false,
    )
    .await;
    let raced_row = both(
        row,
        (direct.counters().requests() - d0) as f64 / n as f64,
        direct.counters().billed_usd() - b0,
    );
    let rows = vec![
        run(
            "OpenRouter alone (fat_tail)",
            BoxCloneSyncService::new(or_leaf),
            &openrouter,
            n,
            2,
            false,
        )
        .await,
        run(
            "direct endpoint alone",
            BoxCloneSyncService::new(direct_leaf),
            &direct,
            n,
            2,
            false,
        )
        .await,
        raced_row,
        oracle(&direct_scenario, n),
    ];
    print_rows(
        &format!(
            "two upstreams at time scale {SCALE}, {n} streaming calls after {} warm-up, 64 concurrent (upstream/call counts both)",
            n / 4
        ),
        &rows,
    );
    for base in &rows[..2] {
        println!(
            "raced vs {}: p95 x{:.2} p99 x{:.2}",
            base.name,
            base.p95 / rows[2].p95,
            base.p99 / rows[2].p99
        );
    }
    println!(
        "raced vs the oracle on the pair: p95 {:.1} / {:.1} ms, p99 {:.1} / {:.1} ms",
        rows[2].p95, rows[3].p95, rows[2].p99, rows[3].p99
    );
    println!();
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 200 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // `TAIL_ONLY=faults`: only the fault rows; `learning`: only the learning tables;
        // `cold`: only the cold starts; `upstreams`: only the two-upstream race; `priced`:
        // only speed at a price.
        let only = std::env::var("TAIL_ONLY").ok();
        if only.is_none() || only.as_deref() == Some("priced") {
            priced(n).await;
            if only.is_some() {
                return;
            }
        }
        if only.as_deref() != Some("faults") {
            let fat = Scenario::fat_tail().with_time_scale(SCALE).with_seed(42);
            let heavy = heavy_fast().with_time_scale(SCALE).with_seed(42);
            if only.as_deref() == Some("upstreams") {
                two_upstreams(n).await;
                return;
            }
            if only.as_deref() != Some("cold") {
                steady("fat_tail preset", fat.clone(), n, true).await;
                steady(
                    "heavy-tailed fastest + steady middle",
                    heavy.clone(),
                    n,
                    false,
                )
                .await;
            }
            if only.as_deref() != Some("cold") {
                two_upstreams(n).await;
            }
            cold_start("fat_tail preset", fat).await;
            cold_start("heavy-tailed fastest + steady middle", heavy).await;
        }
        if only.is_none() || only.as_deref() == Some("faults") {
            faults(n / 10).await;
        }
    });
}

/// The plain leaf against the gateway's whole stack (`llm_layers_gateway::build_stack`, its
/// defaults; for streams, also with mid-stream resume
/// on) on the fault presets in
/// real time, streaming and whole answers: success rate, and answers returned as a success
/// that were not exactly the mock's (corrupted: must be 0).
async fn faults(n: usize) {
    println!();
    println!(
        "faults in real time (time scale 1), {n} calls per row, 64 concurrent, seed 42; a call still running after 20 s fails"
    );
    println!(
        "{:<12} {:<7} {:<14} {:>8} {:>10} {:>9} {:>9} {:>10} {:>13}",
        "preset",
        "answer",
        "arm",
        "ok",
        "corrupted",
        "TTFT p50",
        "p99",
        "total p99",
        "upstream/call"
    );
    // `TAIL_PRESETS=a,b` runs only those fault presets.
    let only = std::env::var("TAIL_PRESETS").ok();
    for preset in [
        "outage",
        "rate_limited",
        "chaos",
        "all_down",
        "dead_throttled",
        "hanging",
    ] {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|p| p == preset))
        {
            continue;
        }
        let scenario = Scenario::preset(preset).unwrap().with_seed(42);
        let server = MockServer::start(scenario).await.unwrap();
        let leaf = OpenRouter::builder()
            .api_key("sk-or-v1-bench")
            .base_url(server.base_url())
            .build()
            .unwrap();
        // The gateway's defaults: its own timeouts are derived from what it measures.
        let config = llm_layers_gateway::Config {
            seed: Some(42),
            ..Default::default()
        };
        let full: Svc = llm_layers_gateway::build_stack(&config, leaf.clone(), None).unwrap();
        let resume_config = llm_layers_gateway::Config {
            resume: true,
            ..config.clone()
        };
        let resumed: Svc =
            llm_layers_gateway::build_stack(&resume_config, leaf.clone(), None).unwrap();
        let plain: Svc = BoxCloneSyncService::new(leaf);
        for whole in [false, true] {
            let mut arms = vec![("plain leaf", &plain), ("gateway stack", &full)];
            if !whole {
                // Mid-stream resume only changes streams: a whole answer is retried whole.
                arms.push(("stack + resume", &resumed));
            }
            for (arm, svc) in arms {
                let r = run(arm, svc.clone(), &server, n, 8, whole).await;
                println!(
                    "{:<12} {:<7} {:<14} {:>7.1}% {:>10} {:>7.0}ms {:>7.0}ms {:>8.0}ms {:>13.3}",
                    preset,
                    if whole { "whole" } else { "stream" },
                    r.name,
                    r.ok * 100.0,
                    r.corrupted,
                    r.p50,
                    r.p99,
                    r.total_p99,
                    r.upstream_per_call
                );
            }
        }
    }
}
