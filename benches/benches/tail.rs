//! Tail latency on the mock's `fat_tail` preset: the plain leaf against the stack (latency
//! store + adaptive hedge), same seed, same requests, side by side in one run, plus the
//! oracle bound computed from the preset's own distributions. Then faults: the plain leaf
//! against the gateway's whole stack on the `outage` (a dead and a hanging provider),
//! `rate_limited` (half of all requests 429), `chaos` and `all_down` presets, success rate and
//! corrupted answers (answers returned as a success that are not exactly the mock's).
//!
//! `cargo bench -p llm-layers-bench --bench tail`
//!
//! The preset runs 100× faster (time scale 0.01): divide nothing, the ratios are the point;
//! multiply milliseconds by 100 for real-world seconds × 1000.

use std::time::Duration;

use llm_layers_breaker::{BreakerLayer, SlowCall};
use llm_layers_core::{ChatRequest, ChatStream, LlmError, Message, WholeAnswer};
use llm_layers_hedge::{HedgeDelay, HedgeLayer};
use llm_layers_latency::{LatencyLayer, LatencyStore, Scope};
use llm_layers_mock::{Dist, MockServer, Scenario, expected_answer};
use llm_layers_openrouter::OpenRouter;
use llm_layers_router::RouterLayer;
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

struct Row {
    name: String,
    p50: f64,
    p95: f64,
    p99: f64,
    total_p99: f64,
    ok: f64,
    corrupted: usize,
    upstream_per_call: f64,
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
    let before = server.counters().requests();
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

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 200 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // `TAIL_ONLY=faults` skips the fat-tail table (for a look at the fault rows).
        if std::env::var("TAIL_ONLY").as_deref() == Ok("faults") {
            faults(n / 10).await;
            return;
        }
        let scenario = Scenario::fat_tail().with_time_scale(SCALE).with_seed(42);
        let server = MockServer::start(scenario.clone()).await.unwrap();
        let leaf = OpenRouter::builder()
            .api_key("sk-or-v1-bench")
            .base_url(server.base_url())
            .build()
            .unwrap();
        let plain: Svc = BoxCloneSyncService::new(leaf.clone());
        let hedged = |store: LatencyStore, breaker: Option<BreakerLayer>| -> Svc {
            let hedge = HedgeLayer::builder()
                .delay(HedgeDelay::Quantile {
                    store: store.clone(),
                    quantile: 0.95,
                    min: Duration::from_millis(5),
                    max: Duration::from_secs(30),
                    cold: Duration::from_millis(50),
                })
                .budget_window(Duration::from_secs(10)).budget_floor(0).budget_ratio(0.05)
                .build()
                .unwrap();
            let attempt = ServiceBuilder::new()
                .layer(TimeoutLayer::builder().idle(Duration::from_secs(5)).build().unwrap())
                .layer(LatencyLayer::builder().scope(Scope::Attempt).store(store).build().unwrap())
                .service(leaf.clone());
            match breaker {
                Some(b) => BoxCloneSyncService::new(hedge.layer(b.layer(attempt))),
                None => BoxCloneSyncService::new(hedge.layer(attempt)),
            }
        };
        let store = LatencyStore::new();
        let stack = hedged(store.clone(), None);
        let store_b = LatencyStore::new();
        let breaker_on = |store: &LatencyStore| {
            BreakerLayer::builder()
                .slow_call(SlowCall::P50Multiple { store: store.clone(), factor: 3.0, min: Duration::from_millis(1) })
                .seed(3)
                .build()
                .unwrap()
        };
        let breaker = breaker_on(&store_b);
        let with_breaker = hedged(store_b, Some(breaker));
        // The whole learned stack: the router orders providers by the TTFT it measured,
        // the breaker drops slow ones, the hedge fires at the recorded p95.
        let store_r = LatencyStore::new();
        let breaker_r = breaker_on(&store_r);
        let router = RouterLayer::builder(store_r.clone()).build().unwrap();
        // Learned provider order alone, against always sending to the fastest provider.
        let store_o = LatencyStore::new();
        let order_only: Svc = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(RouterLayer::builder(store_o.clone()).build().unwrap())
                .layer(LatencyLayer::builder().scope(Scope::Attempt).store(store_o).build().unwrap())
                .service(leaf.clone()),
        );
        let routed: Svc = BoxCloneSyncService::new(router.layer(hedged(store_r, Some(breaker_r))));
        // Warm each stack's store (and the pool) so delays and rankings are learned, not cold.
        let _ = run("warm-up", stack.clone(), &server, n / 4, 1, false).await;
        let _ = run("warm-up", with_breaker.clone(), &server, n / 4, 3, false).await;
        let _ = run("warm-up", routed.clone(), &server, n / 4, 5, false).await;
        let _ = run("warm-up", order_only.clone(), &server, n / 4, 6, false).await;
        let rows = [
            run("plain leaf", plain, &server, n, 2, false).await,
            run("leaf + latency store + hedge (p95, 5 % budget)", stack, &server, n, 2, false).await,
            run("  + breaker (slow call = 3x recorded p50)", with_breaker, &server, n, 2, false).await,
            run("  + router (learned provider order)", routed, &server, n, 2, false).await,
            oracle(&scenario, n),
            run("leaf + router (learned provider order only)", order_only, &server, n, 2, false).await,
            fastest_only(&scenario),
        ];
        println!("fat_tail preset at time scale {SCALE}, {n} streaming calls, 64 concurrent, seed 42");
        println!(
            "{:<50} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10}",
            "arm", "TTFT p50", "p95", "p99", "total p99", "ok", "upstream/call"
        );
        for r in &rows {
            // Computed rows have no end-to-end time.
            let total = if r.total_p99.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.1}ms", r.total_p99)
            };
            println!(
                "{:<50} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>10} {:>7.1}% {:>10.3}",
                r.name, r.p50, r.p95, r.p99, total, r.ok * 100.0, r.upstream_per_call
            );
        }
        let (p, o) = (&rows[0], &rows[4]);
        let (order, best) = (&rows[5], &rows[6]);
        println!(
            "{}: p95 {:.1} ms and p99 {:.1} ms against {:.1} / {:.1} ms always on the fastest provider (x{:.2} / x{:.2})",
            order.name, order.p95, order.p99, best.p95, best.p99, order.p95 / best.p95, order.p99 / best.p99,
        );
        for s in &rows[1..4] {
            println!(
                "{}: p95 x{:.2} p99 x{:.2} over the plain leaf = {:.0} % (p95) and {:.0} % (p99) of the oracle's x{:.2} / x{:.2}",
                s.name.trim(), p.p95 / s.p95, p.p99 / s.p99,
                100.0 * (p.p95 / s.p95) / (p.p95 / o.p95),
                100.0 * (p.p99 / s.p99) / (p.p99 / o.p99),
                p.p95 / o.p95, p.p99 / o.p99,
            );
        }

        faults(n / 10).await;
    });
}

/// The plain leaf against the gateway's whole stack (`example_gateway::build_stack`, its
/// defaults but 5 s first-token and idle timeouts; for streams, also with mid-stream resume
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
    for preset in ["outage", "rate_limited", "chaos", "all_down"] {
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
        let config = example_gateway::Config {
            first_token_timeout: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_secs(5)),
            seed: Some(42),
            ..Default::default()
        };
        let full: Svc = example_gateway::build_stack(&config, leaf.clone(), None).unwrap();
        let resume_config = example_gateway::Config {
            resume: true,
            ..config.clone()
        };
        let resumed: Svc =
            example_gateway::build_stack(&resume_config, leaf.clone(), None).unwrap();
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
