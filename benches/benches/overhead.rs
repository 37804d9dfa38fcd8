//! What each layer, and the gateway's whole stack, adds per call over the bare service: the
//! arms of `llm_layers_bench::layer_arms` over an instant scripted service (1 chunk per
//! call), timed in interleaved rounds so that the machine's drift hits every arm alike.
//!
//! `cargo bench -p llm-layers-bench --bench overhead`
//!
//! Each round times a batch of calls through every arm in turn, starting at a different arm
//! each round; an arm's added cost in a round is its time per call minus the bare service's
//! in the same round. The table gives the median over the rounds and the spread (25th to
//! 75th percentile). `cargo test --benches` runs it once, quickly, as a smoke test.
//!
//! Wall time on a shared VM drifts by more than the differences measured; instructions do
//! not. `OVERHEAD_ONLY=<arm> OVERHEAD_CALLS=<n>` runs only that arm for `n` calls (after the
//! same warm-up), to be counted by `valgrind --tool=cachegrind --cache-sim=no`: the
//! difference between two call counts, divided by the calls between them, is the arm's
//! instructions per call (`benches/instructions.sh` does it for every arm).

use std::time::Duration;

use llm_layers_bench::{Svc, layer_arms, request};
use llm_layers_mock::{MockChat, Script};
use tokio::time::Instant;
use tower::ServiceExt;

/// Nanoseconds per call for `calls` calls through `svc`.
async fn batch(svc: &Svc, calls: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        let s = svc
            .clone()
            .oneshot(request(8))
            .await
            .expect("the scripted service answers");
        drop(s.collect().await.expect("a whole answer"));
    }
    Instant::now().saturating_duration_since(start).as_nanos() as f64 / calls as f64
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, calls) = if quick { (2, 50) } else { (41, 4_000) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mock = MockChat::with_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    let arms = layer_arms(mock);
    if let Ok(only) = std::env::var("OVERHEAD_ONLY") {
        let calls = std::env::var("OVERHEAD_CALLS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000);
        let (_, svc) = arms
            .iter()
            .find(|(name, _)| *name == only)
            .expect("OVERHEAD_ONLY names an arm");
        rt.block_on(async {
            batch(svc, 200).await;
            if calls > 0 {
                batch(svc, calls).await;
            }
        });
        return;
    }
    let mut added: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); arms.len()];
    let mut bare_ns = Vec::with_capacity(rounds);
    rt.block_on(async {
        // Warm: label sets, store keys, buckets, the allocator's free lists.
        for (_, svc) in &arms {
            batch(svc, calls.min(1_000)).await;
        }
        for round in 0..rounds {
            let mut ns = vec![0.0; arms.len()];
            for k in 0..arms.len() {
                let i = (round + k) % arms.len();
                ns[i] = batch(&arms[i].1, calls).await;
            }
            bare_ns.push(ns[0]);
            for (i, n) in ns.iter().enumerate() {
                added[i].push(n - ns[0]);
            }
        }
    });
    bare_ns.sort_by(f64::total_cmp);
    println!(
        "added per call over the bare service ({} ns per call), {rounds} interleaved rounds of {calls} calls",
        quantile(&bare_ns, 0.5).round()
    );
    println!("{:<12} {:>10} {:>18}", "arm", "median µs", "p25–p75 µs");
    for (i, (name, _)) in arms.iter().enumerate().skip(1) {
        let a = &mut added[i];
        a.sort_by(f64::total_cmp);
        println!(
            "{name:<12} {:>10.2} {:>9.2}–{:<8.2}",
            quantile(a, 0.5) / 1e3,
            quantile(a, 0.25) / 1e3,
            quantile(a, 0.75) / 1e3
        );
    }
}
