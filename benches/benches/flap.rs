//! How far a fleet sharing one limit through Redis goes over it when Redis flaps: N replicas
//! (each its own connection, through a proxy that stalls every byte for a while on a
//! schedule), each offered 3× its share of a limit for a few seconds; admitted calls against
//! what the limit allows in that time (rate × seconds + burst). A stall longer than the
//! store's budget (50 ms) sends the replicas to their local buckets (limit ÷ replicas) until
//! a probe finds the store back.
//!
//! `cargo bench -p llm-layers-bench --bench flap` (needs `redis-server`; about 4 minutes).
//! `FLAP_SECS=N` sets each row's length (default 8).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llm_layers_core::{ChatRequest, Message};
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{Limit, Mode, RateLimitLayer};
use llm_layers_redis::testing::{RedisServer, StallingProxy};
use llm_layers_redis::{LimitMode, Redis};
use tower::{Layer, ServiceExt};

/// The limit: per second, with a burst of a fifth of it.
const LIMIT: u64 = 200;

/// One row: `replicas` sharing the limit in `mode`, Redis stalled for `stall` every
/// `every` (none when `stall` is zero); returns admitted ÷ allowed.
async fn row(
    server: &RedisServer,
    mode: LimitMode,
    replicas: u64,
    stall: Duration,
    every: Duration,
    secs: u64,
    prefix: &str,
) -> (u64, u64) {
    let proxy = StallingProxy::start(server).await.unwrap();
    let url = proxy.url().to_owned();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(secs);
    for r in 0..replicas {
        let redis = Redis::builder(url.as_str())
            .replica(format!("r{r}"))
            .prefix(prefix)
            .build()
            .unwrap();
        let svc = RateLimitLayer::builder()
            .requests(
                Limit::new(LIMIT, Duration::from_secs(1))
                    .burst(LIMIT / 5)
                    .mode(Mode::Reject),
            )
            .store(
                redis
                    .limit_store()
                    .mode(mode)
                    .replicas(replicas)
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
        // Offered: 3× this replica's share, evenly.
        let per_call = Duration::from_secs_f64(replicas as f64 / (3.0 * LIMIT as f64));
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_call);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                let (svc, admitted) = (svc.clone(), admitted.clone());
                tokio::spawn(async move {
                    let req = ChatRequest::new("m", vec![Message::user("x")]);
                    if let Ok(s) = svc.oneshot(req).await {
                        let _ = s.collect().await;
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }));
    }
    if !stall.is_zero() {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            while tokio::time::Instant::now() < end {
                tokio::time::sleep(every.saturating_sub(stall)).await;
                proxy.stall(true);
                tokio::time::sleep(stall).await;
                proxy.stall(false);
            }
        });
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.stall(false);
    let allowed = LIMIT * secs + LIMIT / 5;
    (admitted.load(Ordering::Relaxed), allowed)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this with one short row.
    let quick = !std::env::args().any(|a| a == "--bench");
    let Some(server) = RedisServer::start() else {
        eprintln!("flap: no redis-server on PATH; skipped");
        return;
    };
    let secs: u64 = std::env::var("FLAP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 8 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "limit {LIMIT}/s (burst {}), offered 3x, {secs} s a row; admitted / allowed",
        LIMIT / 5
    );
    println!("| mode | replicas | Redis | admitted | allowed | ratio |");
    println!("|---|---|---|---|---|---|");
    let stalls = [
        (Duration::ZERO, Duration::from_secs(1), "steady"),
        (
            Duration::from_millis(120),
            Duration::from_secs(1),
            "stalls 120 ms every 1 s",
        ),
        (
            Duration::from_millis(600),
            Duration::from_secs(1),
            "stalls 600 ms every 1 s",
        ),
        (
            Duration::from_secs(2),
            Duration::from_secs(4),
            "stalls 2 s every 4 s",
        ),
    ];
    let mut n = 0;
    let (modes, fleets, schedules) = if quick {
        (&[LimitMode::Exact][..], &[2u64][..], &stalls[1..2])
    } else {
        (
            &[LimitMode::Exact, LimitMode::Lease][..],
            &[2u64, 4, 8][..],
            &stalls[..],
        )
    };
    for &mode in modes {
        for &replicas in fleets {
            for &(stall, every, what) in schedules {
                n += 1;
                let (got, allowed) = rt.block_on(row(
                    &server,
                    mode,
                    replicas,
                    stall,
                    every,
                    secs,
                    &format!("flap{n}"),
                ));
                println!(
                    "| {mode:?} | {replicas} | {what} | {got} | {allowed} | x{:.3} |",
                    got as f64 / allowed as f64
                );
            }
        }
    }
}
