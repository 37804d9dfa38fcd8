//! "Never worse than no gateway": the gateway's whole `build_stack` against the plain
//! upstream over every mock preset, streaming and whole answers, on the same seed, in paused
//! time (the presets' real-world timings in virtual time: a 30 s hang costs nothing). The
//! upstream is the preset played in process (`MockChat::scenario`: what the OpenRouter leaf
//! would return, with no sockets, so every run is the same); the leaf over the real mock
//! server is tested on the same presets in `crates/openrouter` and `crates/retry`.
//!
//! Every row asserts: zero corrupted answers (an answer returned as a success that is not
//! exactly the mock's), and a success rate through the stack no lower than the plain
//! leaf's. Then the floors of the issue "Never worse than no gateway": `rate_limited` at
//! 95 % or better with at most 2.5 upstream requests per call, `outage` (with a provider
//! that hangs after its headers) at 99.9 % with a TTFT p99 within 2× of the healthy
//! providers' own p99, `chaos` whole answers at 99.9 %, and `all_down` a fast error for
//! every call with at most 0.2 upstream requests per call after the first second; and
//! `chaos` streaming with mid-stream resume on at 99.5 % or better, 0 corrupted, also with
//! providers that answer a prefill from scratch or refuse it.
//!
//! `cargo test --test matrix -- --nocapture` prints the table.

use std::time::Duration;

use llm_layers_core::{ChatRequest, ChatStream, ErrorKind, LlmError, Message, WholeAnswer};
use llm_layers_gateway::error::ApiFailure;
use llm_layers_gateway::{Config, build_stack};
use llm_layers_mock::{MockChat, Scenario, expected_answer};
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

type Svc = BoxCloneSyncService<ChatRequest, ChatStream, LlmError>;

/// Calls per row (more for `chaos`, whose floor is 99.9 %), and how many run at once.
const CALLS: usize = 300;
const CHAOS_CALLS: usize = 2000;
const WORKERS: usize = 24;
/// A caller gives up after this long (virtual time).
const CALLER_TIMEOUT: Duration = Duration::from_secs(120);
const SEED: u64 = 7;

/// The seed of a run: `MATRIX_SEED=N` for a look at another draw (CI uses 7).
fn seed() -> u64 {
    std::env::var("MATRIX_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED)
}

/// The gateway's defaults, seeded.
fn config() -> Config {
    Config {
        seed: Some(seed()),
        ..Config::default()
    }
}

#[derive(Debug, Default)]
struct Row {
    calls: usize,
    ok: usize,
    corrupted: usize,
    ttfts: Vec<f64>,
    upstream: u64,
    errors: Vec<LlmError>,
    /// Upstream requests and calls made after the first second of the row.
    late_upstream: u64,
    late_calls: usize,
    /// The slowest failure (seconds from the call's start to its error).
    slowest_error: f64,
    /// The slowest failure of the calls made after the first second.
    late_slowest_error: f64,
    /// The slowest call answered (seconds from its start to its end).
    slowest_ok: f64,
}

impl Row {
    fn ok_rate(&self) -> f64 {
        self.ok as f64 / self.calls as f64
    }

    fn upstream_per_call(&self) -> f64 {
        self.upstream as f64 / self.calls as f64
    }

    fn ttft(&self, q: f64) -> f64 {
        let mut xs = self.ttfts.clone();
        if xs.is_empty() {
            return f64::NAN;
        }
        xs.sort_by(f64::total_cmp);
        xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)]
    }
}

enum Outcome {
    Ok { ttft: f64, total: f64, exact: bool },
    Failed { after: f64, error: Option<LlmError> },
}

async fn one_call(svc: Svc, i: usize, whole: bool) -> Outcome {
    let mut r = ChatRequest::new("mock/echo", vec![Message::user(format!("matrix {i}"))]);
    r.body_mut().stream = Some(!whole);
    r.body_mut().max_tokens = Some(4);
    if whole {
        r.extensions_mut().insert(WholeAnswer);
    }
    let expected = expected_answer(r.body(), 4);
    let start = Instant::now();
    let secs = move || Instant::now().duration_since(start).as_secs_f64();
    let call = async {
        let s = svc.oneshot(r).await?;
        let ttft = secs();
        let answer = s.collect().await?;
        let text = answer
            .choices
            .first()
            .and_then(|c| c.message.content.clone());
        Ok::<_, LlmError>((ttft, secs(), text.as_deref() == Some(expected.as_str())))
    };
    match tokio::time::timeout(CALLER_TIMEOUT, call).await {
        Ok(Ok((ttft, total, exact))) => Outcome::Ok { ttft, total, exact },
        Ok(Err(e)) => Outcome::Failed {
            after: secs(),
            error: Some(e),
        },
        Err(_) => Outcome::Failed {
            after: secs(),
            error: None,
        },
    }
}

/// One row: `calls` calls through the plain leaf or the gateway's stack over it, on a
/// fresh mock of `scenario`.
///
/// `pace` spaces the calls' starts (`all_down`: its floor is about the calls after the first
/// second, so the row must last longer than that).
async fn row(
    scenario: &Scenario,
    calls: usize,
    pace: Option<Duration>,
    whole: bool,
    stack: bool,
    resume: bool,
) -> Row {
    // In process: the scenario's draws with no sockets, so the row is deterministic
    // (a connect or a frame in flight is real I/O the paused clock could run past).
    let upstream = MockChat::scenario(scenario.clone().with_seed(seed()));
    let svc: Svc = if stack {
        let cfg = Config { resume, ..config() };
        build_stack(&cfg, upstream.clone(), None).unwrap()
    } else {
        BoxCloneSyncService::new(upstream.clone())
    };
    let t0 = Instant::now();
    let mut late_from = None;
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut row = Row {
        calls,
        ..Row::default()
    };
    loop {
        // `MATRIX_WORKERS=N` changes how many run at once (for a look; CI uses 24).
        let workers = std::env::var("MATRIX_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(WORKERS);
        while tasks.len() < workers && next < calls {
            if let Some(p) = pace {
                tokio::time::sleep(p).await;
            }
            let at = Instant::now();
            if late_from.is_none() && at.duration_since(t0) >= Duration::from_secs(1) {
                late_from = Some((next, upstream.calls() as u64));
            }
            let svc = svc.clone();
            let i = next;
            tasks.spawn(async move { (i, one_call(svc, i, whole).await) });
            next += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (i, outcome) = done.unwrap();
        let late = late_from.is_some_and(|(first_late, _)| i >= first_late);
        match outcome {
            Outcome::Ok { ttft, total, exact } => {
                row.slowest_ok = row.slowest_ok.max(total);
                if exact {
                    row.ok += 1;
                    row.ttfts.push(ttft);
                } else {
                    row.corrupted += 1;
                }
            }
            Outcome::Failed { after, error } => {
                row.slowest_error = row.slowest_error.max(after);
                if late {
                    row.late_slowest_error = row.late_slowest_error.max(after);
                }
                if let Some(e) = error {
                    row.errors.push(e);
                }
            }
        }
    }
    row.upstream = upstream.calls() as u64;
    if let Some((first_late, upstream_then)) = late_from {
        row.late_calls = calls - first_late;
        row.late_upstream = row.upstream - upstream_then;
    }
    row
}

/// One line of the table; with `MATRIX_ERRORS` set, the errors of the row before it.
fn print(preset: &str, whole: bool, arm: &str, r: &Row) {
    if std::env::var_os("MATRIX_ERRORS").is_some() {
        for e in &r.errors {
            println!("  {arm} error: {e}");
        }
    }
    println!(
        "{preset:<13} {:<6} {arm:<6} ok {:>6.1}%  corrupted {:>2}  TTFT p50 {:>7.0} ms  p99 {:>7.0} ms  upstream/call {:>5.2} (after 1 s {:>5.2})  slowest error {:>6.1} s",
        if whole { "whole" } else { "stream" },
        r.ok_rate() * 100.0,
        r.corrupted,
        r.ttft(0.5) * 1000.0,
        r.ttft(0.99) * 1000.0,
        r.upstream_per_call(),
        r.late_upstream as f64 / r.late_calls.max(1) as f64,
        r.slowest_error,
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_preset_through_the_stack_is_never_worse_than_the_plain_leaf() {
    let healthy_p99 = 0.8; // the presets' healthy providers: lognormal p50 200 ms, p99 800 ms
    // `MATRIX_PRESETS=a,b` runs only those (for a look at one row; CI runs them all).
    let only = std::env::var("MATRIX_PRESETS").ok();
    if let Some(o) = &only {
        // A misspelt name would run no row and pass.
        for name in o.split(',') {
            assert!(
                Scenario::PRESETS.contains(&name),
                "MATRIX_PRESETS: no preset {name:?}; known: {:?}",
                Scenario::PRESETS
            );
        }
    }
    for preset in Scenario::PRESETS {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|p| p == preset))
        {
            continue;
        }
        let scenario = Scenario::preset(preset).unwrap();
        let calls = if preset == "chaos" {
            CHAOS_CALLS
        } else {
            CALLS
        };
        for whole in [false, true] {
            // all_down's calls arrive every 10 ms, so the row spans three seconds.
            let pace = matches!(preset, "all_down" | "dead_throttled")
                .then_some(Duration::from_millis(10));
            let leaf = row(&scenario, calls, pace, whole, false, false).await;
            let stack = row(&scenario, calls, pace, whole, true, false).await;
            print(preset, whole, "leaf", &leaf);
            print(preset, whole, "stack", &stack);
            if preset == "chaos" && !whole {
                // Mid-stream resume on: a stream that breaks after its first token goes on.
                let resumed = row(&scenario, calls, pace, whole, true, true).await;
                print(preset, whole, "resume", &resumed);
                assert_eq!(resumed.corrupted, 0, "chaos resume: corrupted");
                assert!(
                    resumed.ok_rate() >= 0.995,
                    "chaos streaming with resume: {}",
                    resumed.ok_rate()
                );
                // Providers that differ in how they take a prefill: one continues it, one
                // answers it from scratch (as OpenAI's models do), one refuses it with a 400.
                let mut mixed = scenario.clone();
                mixed.providers[0].prefill_from_scratch = true;
                mixed.providers[1].refuses_prefill = true;
                let resumed = row(&mixed, calls, pace, whole, true, true).await;
                print(preset, whole, "mixed", &resumed);
                assert_eq!(
                    resumed.corrupted, 0,
                    "chaos resume, mixed prefill: corrupted"
                );
                assert!(
                    resumed.ok_rate() >= 0.995,
                    "chaos streaming with resume, mixed prefill: {}",
                    resumed.ok_rate()
                );
            }
            let what = format!("{preset} whole={whole}");
            assert_eq!(leaf.corrupted + stack.corrupted, 0, "{what}: corrupted");
            assert!(
                stack.ok >= leaf.ok,
                "{what}: the stack ({}) is worse than the plain leaf ({})",
                stack.ok,
                leaf.ok
            );
            match preset {
                "rate_limited" => {
                    // Independent throttling: a hold is probed, not waited out by every
                    // caller.
                    assert!(stack.ok_rate() >= 0.99, "{what}: {}", stack.ok_rate());
                    assert!(
                        stack.upstream_per_call() <= 2.5,
                        "{what}: {} upstream requests per call",
                        stack.upstream_per_call()
                    );
                    assert!(
                        stack.ttft(0.5) <= 3.0 * leaf.ttft(0.5),
                        "{what}: TTFT p50 {} s against {} s straight",
                        stack.ttft(0.5),
                        leaf.ttft(0.5)
                    );
                }
                "dead_throttled" => {
                    assert_eq!(stack.ok, 0);
                    assert!(stack.late_calls > 100, "{what}: the row must outlast 1 s");
                    let late = stack.late_upstream as f64 / stack.late_calls as f64;
                    assert!(
                        late <= 0.2,
                        "{what}: {late} upstream requests per call after the first second"
                    );
                    assert!(
                        stack.late_slowest_error <= 0.1,
                        "{what}: a failure took {} s once the model was known dead",
                        stack.late_slowest_error
                    );
                }
                "hanging" => {
                    assert!(stack.ok_rate() >= 0.999, "{what}: {}", stack.ok_rate());
                    assert!(
                        stack.slowest_ok < 30.0,
                        "{what}: a call took {} s",
                        stack.slowest_ok
                    );
                }
                "outage" => {
                    assert!(stack.ok_rate() >= 0.999, "{what}: {}", stack.ok_rate());
                    assert!(
                        stack.ttft(0.99) <= 2.0 * healthy_p99,
                        "{what}: TTFT p99 {} s",
                        stack.ttft(0.99)
                    );
                }
                "chaos" if whole => {
                    assert!(stack.ok_rate() >= 0.999, "{what}: {}", stack.ok_rate());
                }
                "all_down" => {
                    assert_eq!(stack.ok, 0);
                    assert!(
                        stack.slowest_error < 5.0,
                        "{what}: an error took {} s",
                        stack.slowest_error
                    );
                    assert!(stack.late_calls > 100, "{what}: the row must outlast 1 s");
                    let late = stack.late_upstream as f64 / stack.late_calls as f64;
                    assert!(
                        late <= 0.2,
                        "{what}: {late} upstream requests per call after the first second"
                    );
                    for e in &stack.errors {
                        let f = ApiFailure::from(e);
                        assert!(
                            matches!(e.kind(), ErrorKind::CircuitOpen | ErrorKind::Status),
                            "{what}: {e}"
                        );
                        assert!(f.status.is_server_error(), "{what}: {e}");
                    }
                }
                _ => {}
            }
        }
    }
}

/// `x-tenant` keys a limit of its own, and the per-model limit counts the model as routed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_tenant_limit_binds_each_tenant_apart() {
    use llm_layers_core::Tenant;
    let upstream = MockChat::scenario(Scenario::healthy().with_seed(SEED));
    let svc = build_stack(
        &Config {
            tenant_requests_per_minute: 6,
            ..config()
        },
        upstream.clone(),
        None,
    )
    .unwrap();
    let call = |tenant: &str, i: usize| {
        let mut r = ChatRequest::new("mock/echo", vec![Message::user(format!("t {i}"))]);
        r.body_mut().max_tokens = Some(1);
        r.extensions_mut()
            .insert(Tenant(std::sync::Arc::from(tenant)));
        svc.clone().oneshot(r)
    };
    assert!(call("acme", 0).await.is_ok());
    let e = call("acme", 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert!(
        call("globex", 2).await.is_ok(),
        "another tenant is not held"
    );
    // The refused call never reached the upstream (hedges of the others may have).
    let sent: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| match &r.body().messages[0].content {
            Some(llm_layers_core::Content::Text(t)) => t.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert!(sent.iter().all(|c| !c.contains("t 1")), "{sent:?}");
    assert!(sent.iter().any(|c| c.contains("t 2")), "{sent:?}");
}

/// The gateway's learned provider order sends most calls to the provider measured fastest
/// (in paused time on the scenario played in process: no real clock to flake on).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn learned_provider_order_sends_most_calls_to_the_fastest_provider() {
    let mut s = Scenario::healthy();
    s.providers.truncate(2);
    s.providers[0].ttft = llm_layers_mock::Dist::Fixed { ms: 600.0 };
    s.providers[1].ttft = llm_layers_mock::Dist::Fixed { ms: 20.0 };
    let fast = s.providers[1].name.clone();
    let svc = build_stack(
        &Config {
            hedge_quantile: 0.0,
            ..config()
        },
        MockChat::scenario(s.with_seed(SEED)),
        None,
    )
    .unwrap();
    let burst = |from: usize, n: usize| {
        let svc = svc.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for i in from..from + n {
                let svc = svc.clone();
                set.spawn(async move {
                    let mut r = ChatRequest::new("mock/echo", vec![Message::user(format!("q{i}"))]);
                    r.body_mut().max_tokens = Some(1);
                    let s = svc.oneshot(r).await.unwrap();
                    s.meta().provider.clone().unwrap_or_default()
                });
            }
            let mut served = Vec::new();
            while let Some(p) = set.join_next().await {
                served.push(p.unwrap());
            }
            served
        }
    };
    // Unordered warm-up: weighted routing measures both providers.
    burst(0, 120).await;
    // Orders and store reads are cached for 250 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let to_fast = burst(1000, 200)
        .await
        .iter()
        .filter(|p| **p == fast)
        .count();
    assert!(
        to_fast >= 180,
        "{to_fast} of 200 calls went to the fast provider"
    );
}
