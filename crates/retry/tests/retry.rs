//! Retry under paused time with the scripted mock, and on the mock server's outage preset.

use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use llm_layers_core::{
    ChatRequest, Deadline, ErrorKind, LlmError, Message, TimeoutKind, WholeAnswer,
};
use llm_layers_mock::{MockChat, Script};
use llm_layers_retry::{Backoff, DefaultPolicy, ExponentialBackoff, RetryLayer};
use rand::SeedableRng;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn ok() -> Script {
    Script::tokens(Duration::ZERO, 2, Duration::ZERO).provider("Good")
}

fn fixed(ms: u64) -> ExponentialBackoff {
    let d = Duration::from_millis(ms);
    ExponentialBackoff::new(d, 1.0, d).unwrap().without_jitter()
}

fn layer(retries: u32) -> RetryLayer {
    RetryLayer::builder()
        .policy(DefaultPolicy::new(retries))
        .backoff(fixed(100))
        .budget_window(Duration::from_secs(10))
        .budget_floor(1000)
        .budget_ratio(1000.0)
        .seed(1)
        .build()
        .unwrap()
}

fn status(code: u16) -> LlmError {
    LlmError::status(StatusCode::from_u16(code).unwrap(), None)
}

#[tokio::test(start_paused = true)]
async fn retries_every_retriable_kind_once() {
    let retriable = [
        status(408),
        status(429),
        status(500),
        status(502),
        status(503),
        status(524),
        status(529),
        status(402).with_retry_after(Duration::from_secs(1)),
        LlmError::new(ErrorKind::Connect),
        LlmError::new(ErrorKind::Transport),
        LlmError::truncated(),
        LlmError::timeout(TimeoutKind::FirstToken),
    ];
    for e in retriable {
        let mock = MockChat::new();
        mock.push(Script::error(e.clone()));
        mock.push(ok());
        let s = layer(2).layer(mock.clone()).oneshot(req()).await.unwrap();
        assert_eq!(mock.calls(), 2, "{e:?} is retried");
        assert_eq!(s.meta().attempt, 2);
    }
}

#[tokio::test(start_paused = true)]
async fn never_retries_what_is_not_retriable() {
    for code in [400u16, 401, 402, 403, 404, 413, 422] {
        let mock = MockChat::with_default(Script::error(status(code)));
        let e = layer(3)
            .layer(mock.clone())
            .oneshot(req())
            .await
            .unwrap_err();
        assert_eq!(e.status_code().unwrap().as_u16(), code);
        assert_eq!(mock.calls(), 1, "{code} is not retried");
    }
    for e in [
        LlmError::bad_request("x"),
        LlmError::circuit_open(vec![], None),
    ] {
        let mock = MockChat::with_default(Script::error(e));
        assert!(layer(3).layer(mock.clone()).oneshot(req()).await.is_err());
        assert_eq!(mock.calls(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn never_retries_after_commit() {
    let mock = MockChat::with_default(Script::new().token("a").fail(status(502)));
    let mut s = layer(3).layer(mock.clone()).oneshot(req()).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().content(), Some("a"));
    assert_eq!(
        s.next()
            .await
            .unwrap()
            .unwrap_err()
            .status_code()
            .unwrap()
            .as_u16(),
        502
    );
    assert!(s.next().await.is_none());
    assert_eq!(mock.calls(), 1, "the mock saw exactly one request");
}

#[tokio::test(start_paused = true)]
async fn a_whole_answer_call_is_retried_after_a_mid_stream_failure() {
    let mock = MockChat::new();
    mock.push(Script::new().token("partial ").fail(LlmError::truncated()));
    mock.push(ok());
    let mut r = req();
    r.extensions_mut().insert(WholeAnswer);
    let done = layer(2)
        .layer(mock.clone())
        .oneshot(r)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some("t0 t1 "),
        "no partial text"
    );
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_failing_provider_is_ignored_next_time_and_max_retries_holds() {
    let mock = MockChat::with_default(Script::error(status(502).with_provider("Bad Host")));
    let e = layer(2)
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap_err();
    assert_eq!(e.status_code().unwrap().as_u16(), 502);
    let seen = mock.requests();
    assert_eq!(seen.len(), 3, "one call and two retries");
    assert!(seen[0].body().provider.is_none());
    assert_eq!(
        seen[1].body().provider.as_ref().unwrap().ignore.as_deref(),
        Some(&["bad-host".to_owned()][..])
    );
    // A caller's `only` with just that provider is left alone.
    let mock = MockChat::new();
    mock.push(Script::error(status(502).with_provider("Solo")));
    mock.push(ok());
    let mut r = req();
    r.body_mut().provider_mut().only = Some(vec!["solo".into()]);
    layer(2).layer(mock.clone()).oneshot(r).await.unwrap();
    assert!(
        mock.requests()[1]
            .body()
            .provider
            .as_ref()
            .unwrap()
            .ignore
            .is_none()
    );
}

#[test]
fn full_jitter_stays_in_bounds_and_varies() {
    let b =
        ExponentialBackoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(5)).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    for retry in 1..=8u32 {
        let ceiling = b.ceiling(retry);
        assert_eq!(
            ceiling,
            Duration::from_millis(100 * 2u64.pow(retry - 1)).min(Duration::from_secs(5))
        );
        let draws: Vec<Duration> = (0..10_000)
            .map(|_| b.delay(retry, Duration::ZERO, &mut rng))
            .collect();
        assert!(draws.iter().all(|d| *d <= ceiling), "retry {retry}");
        let mean = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / 10_000.0;
        assert!(
            (mean / (ceiling.as_secs_f64() / 2.0) - 1.0).abs() < 0.05,
            "uniform: mean {mean}"
        );
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 9_000, "not constant");
    }
    // Same seed, same draws.
    let mut a = rand::rngs::SmallRng::seed_from_u64(7);
    let mut c = rand::rngs::SmallRng::seed_from_u64(7);
    assert_eq!(
        b.delay(3, Duration::ZERO, &mut a),
        b.delay(3, Duration::ZERO, &mut c)
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_exactly() {
    let mock = MockChat::new();
    mock.push(Script::error(
        status(429).with_retry_after(Duration::from_secs(7)),
    ));
    mock.push(ok());
    let start = Instant::now();
    layer(2).layer(mock.clone()).oneshot(req()).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(7),
        "not the 100 ms backoff, not earlier"
    );
    // Longer than the maximum: returned, not retried early.
    let mock = MockChat::with_default(Script::error(
        status(429).with_retry_after(Duration::from_secs(120)),
    ));
    let start = Instant::now();
    assert!(layer(2).layer(mock.clone()).oneshot(req()).await.is_err());
    assert_eq!((mock.calls(), Instant::now() - start), (1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_by_clones() {
    let mock = MockChat::with_default(Script::error(status(500)));
    let layer = RetryLayer::builder()
        .policy(DefaultPolicy::new(3))
        .backoff(fixed(1))
        .budget_window(Duration::from_secs(10))
        .budget_floor(0)
        .budget_ratio(0.2)
        .seed(3)
        .build()
        .unwrap();
    let svc = layer.layer(mock.clone());
    for _ in 0..1000 {
        // A fresh clone per request: per-clone state would allow 3 retries each.
        assert!(svc.clone().oneshot(req()).await.is_err());
    }
    let retries = mock.calls() - 1000;
    assert!(
        retries <= 200,
        "{retries} retries for 1000 requests at 20 %"
    );
    assert!(retries >= 150, "the budget does allow retries: {retries}");
}

#[tokio::test(start_paused = true)]
async fn no_backoff_past_the_deadline() {
    let mock = MockChat::with_default(Script::error(status(503)));
    let svc = RetryLayer::builder()
        .policy(DefaultPolicy::new(3))
        .backoff(fixed(2000))
        .seed(1)
        .build()
        .unwrap()
        .layer(mock.clone());
    let mut r = req();
    let start = Instant::now();
    r.extensions_mut()
        .insert(Deadline(start + Duration::from_secs(1)));
    let e = svc.oneshot(r).await.unwrap_err();
    assert_eq!(e.status_code().unwrap().as_u16(), 503, "the last error");
    assert_eq!(Instant::now() - start, Duration::ZERO, "at once");
    assert_eq!(mock.calls(), 1);
}

#[test]
fn bad_configuration_is_rejected() {
    assert!(ExponentialBackoff::new(Duration::ZERO, 2.0, Duration::from_secs(1)).is_err());
    assert!(ExponentialBackoff::new(Duration::from_secs(1), 0.5, Duration::from_secs(2)).is_err());
    assert!(ExponentialBackoff::new(Duration::from_secs(2), 2.0, Duration::from_secs(1)).is_err());
    assert!(
        ExponentialBackoff::new(Duration::from_secs(1), f64::NAN, Duration::from_secs(2)).is_err()
    );
    for (b, field) in [
        (
            RetryLayer::builder()
                .budget_window(Duration::ZERO)
                .budget_floor(1)
                .budget_ratio(0.2),
            "window",
        ),
        (
            RetryLayer::builder()
                .budget_window(Duration::from_secs(61))
                .budget_floor(1)
                .budget_ratio(0.2),
            "window",
        ),
        (
            RetryLayer::builder()
                .budget_window(Duration::from_secs(10))
                .budget_floor(1)
                .budget_ratio(-0.1),
            "ratio",
        ),
        (
            RetryLayer::builder()
                .budget_window(Duration::from_secs(10))
                .budget_floor(1)
                .budget_ratio(f32::NAN),
            "ratio",
        ),
    ] {
        let e = b.build().unwrap_err();
        assert!(e.message().contains(field), "{field}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_preset_through_the_leaf_succeeds() {
    use llm_layers_mock::MockServer;
    let server = MockServer::start(outage_without_hang().with_time_scale(0.0))
        .await
        .unwrap();
    let leaf = llm_layers_openrouter::OpenRouter::builder()
        .api_key("sk-or-v1-test")
        .base_url(server.base_url())
        .build()
        .unwrap();
    let svc = RetryLayer::builder()
        .policy(DefaultPolicy::new(2))
        .backoff(fixed(1))
        // A third of first attempts fail here, more than the default 20 % budget covers.
        .budget_window(Duration::from_secs(10))
        .budget_floor(10)
        .budget_ratio(1.0)
        .seed(5)
        .build()
        .unwrap()
        .layer(leaf);
    let total = 2000usize;
    let mut ok = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let svc = svc.clone();
        tasks.spawn(async move {
            let mut ok = 0;
            for i in 0..total / 8 {
                let r = ChatRequest::new("mock/echo", vec![Message::user(format!("o{chunk}-{i}"))]);
                if let Ok(s) = svc.clone().oneshot(r).await {
                    ok += usize::from(s.collect().await.is_ok());
                }
            }
            ok
        });
    }
    while let Some(n) = tasks.join_next().await {
        ok += n.unwrap();
    }
    assert!(ok as f64 / total as f64 >= 0.999, "{ok}/{total}");
    let down = server.counters().requests_to("down");
    assert!(down > 0, "the dead provider was tried first by some");
    let twice: Vec<_> = server
        .counters()
        .requests_by_prompt()
        .into_iter()
        .filter(|((_, slug), n)| slug == "down" && *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "a call reached the dead provider twice: {twice:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn avoiding_the_only_provider_is_taken_back_on_no_endpoints() {
    let mock = MockChat::new();
    mock.push(Script::error(status(502).with_provider("Solo")));
    mock.push(Script::error(status(404)));
    mock.push(ok());
    let mut r = req();
    r.body_mut().provider_mut().ignore = Some(vec!["mine".into()]);
    layer(3).layer(mock.clone()).oneshot(r).await.unwrap();
    let seen = mock.requests();
    let ignore = |i: usize| {
        seen[i]
            .body()
            .provider
            .as_ref()
            .unwrap()
            .ignore
            .clone()
            .unwrap()
    };
    assert_eq!(ignore(1), ["mine", "solo"]);
    assert_eq!(ignore(2), ["mine"], "ours taken back, the caller's kept");
    // A 404 we did not cause is not retried.
    let mock = MockChat::with_default(Script::error(status(404)));
    assert!(layer(3).layer(mock.clone()).oneshot(req()).await.is_err());
    assert_eq!(mock.calls(), 1);
}

/// The `outage` preset without its hanging provider (this test is about the dead one).
fn outage_without_hang() -> llm_layers_mock::Scenario {
    let mut s = llm_layers_mock::Scenario::outage();
    s.providers.retain(|p| p.slug != "stuck");
    s
}

/// A throttle that another provider can take is retried at once; one that cannot waits its
/// Retry-After; neither is counted against `max_retries` nor charged to the budget.
#[tokio::test(start_paused = true)]
async fn throttles_move_at_once_or_wait_and_have_their_own_allowance() {
    let mock = MockChat::new();
    let svc = RetryLayer::builder()
        .policy(DefaultPolicy::new(0))
        .backoff(fixed(100))
        // No budget beyond the reserve: a charged retry would be refused.
        .budget_window(Duration::from_secs(1))
        .budget_floor(0)
        .budget_ratio(0.0)
        .seed(1)
        .build()
        .unwrap()
        .layer(mock.clone());
    let busy = |elsewhere: bool| {
        let e = status(429)
            .with_provider("Alpha")
            .with_retry_after(Duration::from_secs(2));
        Script::error(if elsewhere {
            e.with_retry_elsewhere()
        } else {
            e
        })
    };
    mock.push(busy(true));
    mock.push(busy(true));
    mock.push(busy(false));
    mock.push(ok());
    let start = Instant::now();
    svc.oneshot(req()).await.unwrap();
    assert_eq!(mock.calls(), 4);
    // Two moves at once, one wait of 2 s: no backoff, no budget, max_retries 0 untouched.
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn throttles_stop_at_their_allowance() {
    let mock = MockChat::with_default(Script::error(
        status(429)
            .with_provider("Alpha")
            .with_retry_after(Duration::from_millis(10)),
    ));
    let svc = RetryLayer::builder()
        .policy(DefaultPolicy::new(5).max_throttled(2))
        .backoff(fixed(1))
        .seed(1)
        .build()
        .unwrap()
        .layer(mock.clone());
    let e = svc.oneshot(req()).await.unwrap_err();
    assert_eq!(e.status_code(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(mock.calls(), 3, "one call and two throttled retries");
    // Throttles that move to another provider have their own allowance, counted too.
    let mock = MockChat::with_default(Script::error(
        status(429)
            .with_provider("Alpha")
            .with_retry_after(Duration::from_millis(10))
            .with_retry_elsewhere(),
    ));
    let svc = RetryLayer::builder()
        .policy(DefaultPolicy::new(5).max_throttled(2))
        .backoff(fixed(1))
        .seed(1)
        .build()
        .unwrap()
        .layer(mock.clone());
    let e = svc.oneshot(req()).await.unwrap_err();
    assert_eq!(e.status_code(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(mock.calls(), 3, "one call and two moves");
    // A 429 on our own key is said, not retried.
    let mock = MockChat::with_default(Script::error(status(429).with_key_limited()));
    let e = layer(3)
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap_err();
    assert!(e.is_key_limited());
    assert_eq!(mock.calls(), 1);
}

/// A whole answer whose stream ends without any finish reason is cut: retried like a
/// failure before the first token, never returned.
#[tokio::test(start_paused = true)]
async fn a_whole_answer_without_finish_reason_is_retried() {
    let mock = MockChat::new();
    mock.push(Script::new().provider("Cut").token("a").token("b"));
    mock.push(ok());
    let mut r = req();
    r.extensions_mut().insert(WholeAnswer);
    let s = layer(2).layer(mock.clone()).oneshot(r).await.unwrap();
    let done = s.collect().await.unwrap();
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(mock.calls(), 2);
}

/// Waiting out a throttle is drawn from the model's own allowance (ten a second and one
/// per success, over 10 s): forty calls to a model that only throttles do not each wait
/// and send again eight times, and a throttle the breaker marks not worth retrying is not
/// retried at all.
#[tokio::test(start_paused = true)]
async fn throttle_waits_come_from_the_models_allowance() {
    let throttled =
        || Script::error(LlmError::rate_limited(Duration::from_secs(1)).with_message("held"));
    let mock = MockChat::from_fn(move |_| throttled());
    let svc = layer(2).layer(mock.clone());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let svc = svc.clone();
        calls.spawn(async move { svc.oneshot(req()).await.is_err() });
    }
    while let Some(failed) = calls.join_next().await {
        assert!(failed.unwrap());
    }
    // Without the allowance: 40 calls x 9 attempts.
    let sent = mock.calls();
    assert!(sent < 40 * 9, "{sent} upstream requests");
    assert!(sent <= 40 + 100 + 10 * 9, "{sent} upstream requests");
    // Marked not worth retrying: one request, whatever the allowance.
    let once = MockChat::from_fn(|_| {
        Script::error(LlmError::rate_limited(Duration::from_secs(1)).with_no_retry())
    });
    assert!(layer(2).layer(once.clone()).oneshot(req()).await.is_err());
    assert_eq!(once.calls(), 1);
}

/// A closure is a policy: what it returns decides, attempt by attempt, and its retries draw
/// on the budget like the default's (an empty budget: no retry, whatever it says).
#[tokio::test(start_paused = true)]
async fn a_closure_policy_decides_and_draws_on_the_budget() {
    use std::sync::Arc;
    use tower::retry::budget::Budget;
    /// A budget with nothing in it.
    struct Empty;
    impl Budget for Empty {
        fn deposit(&self) {}
        fn withdraw(&self) -> bool {
            false
        }
    }
    let failing = || {
        let mock = MockChat::new();
        for _ in 0..3 {
            mock.push(Script::error(status(503)));
        }
        mock.push(ok());
        mock
    };
    let build = |budget: Option<Arc<dyn Budget + Send + Sync>>| {
        let mut b = RetryLayer::builder()
            // Retries twice, then stops.
            .policy(|_: &mut ChatRequest, _: &LlmError, attempt: u32| attempt < 3)
            .backoff(fixed(100))
            .budget_floor(1000)
            .budget_ratio(1000.0)
            .seed(1);
        if let Some(budget) = budget {
            b = b.budget(budget);
        }
        b.build().unwrap()
    };
    let mock = failing();
    let e = build(None)
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        mock.calls(),
        3,
        "the first attempt and the two the closure allowed"
    );
    let mock = failing();
    let e = build(Some(Arc::new(Empty)))
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(mock.calls(), 1, "an empty budget pays for no retry");
}

/// A whole answer makes a stream that went quiet or sent garbage retriable (nothing was
/// delivered yet); it makes nothing else retriable (a 400 is still the caller's), and a
/// stream's idle timeout is not retried.
#[tokio::test(start_paused = true)]
async fn a_whole_answer_retries_a_quiet_stream_and_nothing_the_caller_caused() {
    let whole = || {
        let mut r = req();
        r.extensions_mut().insert(WholeAnswer);
        r
    };
    for (request, error, calls) in [
        (whole(), LlmError::timeout(TimeoutKind::Idle), 2),
        (whole(), status(400), 1),
        (req(), LlmError::timeout(TimeoutKind::Idle), 1),
    ] {
        let mock = MockChat::new();
        mock.push(Script::error(error.clone()));
        mock.push(ok());
        let _ = layer(2).layer(mock.clone()).oneshot(request).await;
        assert_eq!(mock.calls(), calls, "{error}");
    }
}

/// What counts against `max_retries`: failures only. Waits for a throttle, moves to a free
/// provider and the retry after a "no endpoints" we caused (by avoiding providers) each have
/// their own count; waits and moves each their own allowance.
#[tokio::test(start_paused = true)]
async fn only_failures_count_against_max_retries() {
    let throttle = |elsewhere: bool| {
        let e = status(429)
            .with_provider("Alpha")
            .with_retry_after(Duration::from_millis(10));
        Script::error(if elsewhere {
            e.with_retry_elsewhere()
        } else {
            e
        })
    };
    let svc = |mock: &MockChat, policy: DefaultPolicy| {
        RetryLayer::builder()
            .policy(policy)
            .backoff(fixed(1))
            .budget_floor(1000)
            .budget_ratio(1000.0)
            .seed(1)
            .build()
            .unwrap()
            .layer(mock.clone())
    };
    // 2 retries: a failure, our own 404, a wait, a move, a failure (the second of the two
    // allowed), then a third failure ends it.
    let mock = MockChat::new();
    mock.push(Script::error(status(502).with_provider("Bad Host")));
    mock.push(Script::error(status(404)));
    mock.push(throttle(false));
    mock.push(throttle(true));
    mock.push(Script::error(status(502).with_provider("Other")));
    mock.push(Script::error(status(502).with_provider("Third")));
    mock.push(ok());
    let e = svc(&mock, DefaultPolicy::new(2))
        .oneshot(req())
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(StatusCode::BAD_GATEWAY));
    assert_eq!(mock.calls(), 6);
    // Waits and moves: two of each allowed, interleaved.
    let mock = MockChat::new();
    for elsewhere in [false, true, false, true] {
        mock.push(throttle(elsewhere));
    }
    mock.push(ok());
    svc(&mock, DefaultPolicy::new(0).max_throttled(2))
        .oneshot(req())
        .await
        .unwrap();
    assert_eq!(mock.calls(), 5);
    // With avoiding off, the provider that failed is not ignored next time.
    let mock = MockChat::new();
    mock.push(Script::error(status(502).with_provider("Bad Host")));
    mock.push(ok());
    svc(&mock, DefaultPolicy::new(1).avoid_failed_provider(false))
        .oneshot(req())
        .await
        .unwrap();
    let ignored = mock.requests()[1]
        .body()
        .provider
        .as_ref()
        .and_then(|p| p.ignore.clone());
    assert_eq!(ignored, None);
}

#[test]
fn decorrelated_jitter_stays_between_the_base_and_three_times_the_last_wait() {
    use llm_layers_retry::DecorrelatedJitter;
    let b = DecorrelatedJitter::new(Duration::from_millis(100), Duration::from_secs(10)).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let draws: Vec<Duration> = (0..1000)
        .map(|i| b.delay(i, Duration::from_secs(1), &mut rng))
        .collect();
    assert!(
        draws
            .iter()
            .all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(3))
    );
    assert!(
        draws.iter().any(|d| *d > Duration::from_millis(2900)),
        "reaches 3x"
    );
    // Capped, however long the last wait.
    let capped = b.delay(1, Duration::from_secs(60), &mut rng);
    assert!(capped <= Duration::from_secs(10));
}
