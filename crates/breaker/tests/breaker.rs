//! The breaker under paused time with the scripted mock, and on the outage preset.

mod common;
use common::*;

#[tokio::test(start_paused = true)]
async fn trips_ignores_half_opens_closes_and_reopens_longer() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    mock.push(ok("Good")); // so the model has another provider
    run(&svc).await.unwrap();
    for _ in 0..3 {
        mock.push(fail("Bad Host"));
        assert!(run(&svc).await.is_err());
    }
    assert!(b.snapshot().iter().any(
        |i| i.provider.as_deref() == Some("bad-host") && matches!(i.state, State::Open { .. })
    ));
    // Open: the next request avoids it.
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["bad-host"]);
    // After the backoff, one probe goes without the ignore; a bad probe re-opens it longer.
    tokio::time::advance(S(10)).await;
    mock.push(fail("Bad Host"));
    assert!(run(&svc).await.is_err());
    assert!(
        ignored(mock.requests().last().unwrap()).is_empty(),
        "the probe may reach it"
    );
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["bad-host"]);
    tokio::time::advance(S(10)).await;
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert_eq!(
        ignored(mock.requests().last().unwrap()),
        ["bad-host"],
        "open 20 s this time"
    );
    tokio::time::advance(S(10)).await;
    // Half-open again: a good probe closes it.
    mock.push(ok("Bad Host"));
    run(&svc).await.unwrap();
    assert!(ignored(mock.requests().last().unwrap()).is_empty());
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert!(
        ignored(mock.requests().last().unwrap()).is_empty(),
        "closed"
    );
    let info = b
        .snapshot()
        .into_iter()
        .find(|i| i.provider.as_deref() == Some("bad-host"))
        .unwrap();
    assert_eq!((info.state, info.trips), (State::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn only_one_probe_at_a_time_when_half_open() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    trip_bad(&svc, &mock).await;
    tokio::time::advance(S(10)).await;
    // A slow probe is in flight: the next request still avoids the provider.
    mock.push(Script::tokens(S(5), 1, Duration::ZERO).provider("Bad"));
    let probe = tokio::spawn({
        let svc = svc.clone();
        async move { svc.oneshot(req()).await.unwrap().collect().await.unwrap() }
    });
    tokio::task::yield_now().await;
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["bad"]);
    probe.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_it_like_failures() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder()
        .consecutive_failures(2)
        .open_for(S(10))
        .max_open_for(S(60))
        .open_jitter(0.0)
        .slow_call(SlowCall::Fixed(S(5)))
        .build()
        .unwrap();
    let svc = b.layer(mock.clone());
    mock.push(ok("Fast"));
    run(&svc).await.unwrap();
    for _ in 0..2 {
        mock.push(Script::tokens(S(8), 1, Duration::ZERO).provider("Sloth"));
        run(&svc).await.unwrap(); // it answers, but late
    }
    mock.push(ok("Fast"));
    run(&svc).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["sloth"]);
}

#[tokio::test(start_paused = true)]
async fn all_open_fails_fast_without_an_upstream_call() {
    let mock = MockChat::new();
    let svc = layer().layer(mock.clone());
    // Both providers are known; then both fail.
    for p in ["A", "B"] {
        mock.push(ok(p));
        run(&svc).await.unwrap();
    }
    for p in ["A", "B"] {
        for _ in 0..3 {
            mock.push(fail(p));
            let _ = run(&svc).await;
        }
    }
    let calls = mock.calls();
    let start = Instant::now();
    let e = svc.clone().oneshot(req()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen);
    let mut open = e.open_providers().to_vec();
    open.sort();
    assert_eq!(open, ["a", "b"]);
    assert!(e.retry_after().unwrap() <= S(10));
    assert_eq!(Instant::now(), start, "at once");
    assert_eq!(mock.calls(), calls, "no upstream call");
    // Failures with no provider (the upstream's own 502s; not our connect errors) count
    // against the model as a whole, by the failure ratio (half of the last 20, at least 10
    // calls), not by a run.
    let mock = MockChat::with_default(Script::error(LlmError::status(
        StatusCode::BAD_GATEWAY,
        None,
    )));
    let svc = layer().layer(mock.clone());
    for _ in 0..9 {
        let _ = run(&svc).await;
    }
    assert_eq!(
        mock.calls(),
        9,
        "nine unattributed failures in a row do not trip it"
    );
    let _ = run(&svc).await;
    let e = svc.clone().oneshot(req()).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.open_providers()),
        (ErrorKind::CircuitOpen, &["m".to_owned()][..])
    );
}

#[tokio::test(start_paused = true)]
async fn the_callers_only_and_ignore_are_kept() {
    let mock = MockChat::new();
    let svc = layer().layer(mock.clone());
    for p in ["Good", "Other"] {
        mock.push(ok(p));
        run(&svc).await.unwrap();
    }
    for _ in 0..3 {
        mock.push(fail("Bad"));
        let _ = run(&svc).await;
    }
    let mut r = req();
    r.body_mut().provider_mut().ignore = Some(vec!["mine".into()]);
    r.body_mut().provider_mut().only = Some(vec!["good".into(), "bad".into()]);
    mock.push(ok("Good"));
    svc.clone()
        .oneshot(r)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let seen = mock.requests().last().unwrap().clone();
    let p = seen.body().provider.as_ref().unwrap();
    assert_eq!(
        p.only.as_deref(),
        Some(&["good".to_owned(), "bad".to_owned()][..])
    );
    assert_eq!(
        p.ignore.as_deref(),
        Some(&["mine".to_owned(), "bad".to_owned()][..])
    );
    // `only` with nothing but the open provider: fast CircuitOpen.
    let mut r = req();
    r.body_mut().provider_mut().only = Some(vec!["bad".into()]);
    let e = svc.clone().oneshot(r).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen);
    // `only` naming a provider never seen is left to OpenRouter.
    let mut r = req();
    r.body_mut().provider_mut().only = Some(vec!["bad".into(), "unseen".into()]);
    mock.push(ok("Unseen"));
    assert!(svc.clone().oneshot(r).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn shared_across_clones_and_bounded() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder()
        .consecutive_failures(2)
        .max_entries(16)
        .idle_ttl(S(60))
        .build()
        .unwrap();
    // Two services from one layer share the registry.
    let (one, two) = (b.layer(mock.clone()), b.layer(mock.clone()));
    mock.push(ok("Good"));
    run(&one).await.unwrap();
    mock.push(fail("Bad"));
    let _ = run(&one).await;
    mock.push(fail("Bad"));
    let _ = run(&two).await;
    mock.push(ok("Good"));
    run(&two).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["bad"]);
    // 1,000 distinct models: the registry stays at its cap, and idle ones make room.
    let many = MockChat::with_default(ok("P"));
    let svc = b.layer(many.clone());
    for i in 0..1000 {
        svc.clone()
            .oneshot(ChatRequest::new(format!("m{i}"), vec![Message::user("x")]))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        if i == 500 {
            tokio::time::advance(S(61)).await;
        }
    }
    assert!(b.snapshot().len() <= 16, "{}", b.snapshot().len());
}

#[tokio::test(start_paused = true)]
async fn scattered_unattributed_failures_do_not_open_the_model() {
    let mock = MockChat::new();
    let svc = layer().layer(mock.clone());
    // One connect error (no provider) in three calls, never two in a row: before successes
    // counted for the model, three such scattered errors opened it.
    for _ in 0..10 {
        mock.push(Script::error(LlmError::new(ErrorKind::Connect)));
        let _ = run(&svc).await;
        mock.push(ok("Good"));
        run(&svc).await.unwrap();
        mock.push(ok("Good"));
        run(&svc).await.unwrap();
    }
    assert_eq!(mock.calls(), 30, "no call was refused");
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_fast_failures_does_not_outrun_slow_successes() {
    // 60 calls at once: the 6 that fail answer in 10 ms, the 54 others commit after 1 s.
    let mock = MockChat::new();
    for i in 0..60 {
        mock.push(if i % 10 == 0 {
            Script::new()
                .wait(Duration::from_millis(10))
                .fail(LlmError::status(StatusCode::BAD_GATEWAY, None).with_provider("P"))
        } else {
            slow_ok("P")
        });
    }
    let b = layer();
    let svc = b.layer(mock.clone());
    let mut tasks = Vec::new();
    for _ in 0..60 {
        tasks.push(tokio::spawn(run_owned(svc.clone())));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    assert!(
        b.snapshot().iter().all(|i| i.state == State::Closed),
        "10 % failures arriving first must not trip it: {:?}",
        b.snapshot()
    );
}

async fn run_owned(svc: llm_layers_breaker::Breaker<MockChat>) -> Result<(), LlmError> {
    run(&svc).await
}

#[test]
fn bad_configuration_is_rejected() {
    for (bld, field) in [
        (
            BreakerLayer::builder().consecutive_failures(0),
            "consecutive_failures",
        ),
        (
            BreakerLayer::builder()
                .failure_ratio(1.5)
                .window(20)
                .min_calls(10),
            "failure_ratio",
        ),
        (
            BreakerLayer::builder()
                .failure_ratio(0.5)
                .window(10)
                .min_calls(20),
            "min_calls",
        ),
        (
            BreakerLayer::builder()
                .open_for(Duration::ZERO)
                .max_open_for(S(1))
                .open_jitter(0.1),
            "open_for",
        ),
        (
            BreakerLayer::builder()
                .open_for(S(2))
                .max_open_for(S(1))
                .open_jitter(0.1),
            "max_open_for",
        ),
        (
            BreakerLayer::builder()
                .open_for(S(1))
                .max_open_for(S(2))
                .open_jitter(1.5),
            "open_jitter",
        ),
        (BreakerLayer::builder().probes(0), "probes"),
        (
            BreakerLayer::builder().slow_call(SlowCall::Fixed(Duration::ZERO)),
            "slow_call",
        ),
    ] {
        let e = bld.build().unwrap_err();
        assert!(e.message().contains(field), "{field}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_preset_after_the_breaker_opens_the_dead_provider_gets_nothing_until_a_probe() {
    use llm_layers_mock::MockServer;
    let server = MockServer::start(outage_without_hang().with_time_scale(0.0))
        .await
        .unwrap();
    let leaf = llm_layers_openrouter::OpenRouter::builder()
        .api_key("sk-or-v1-t")
        .base_url(server.base_url())
        .build()
        .unwrap();
    let b = BreakerLayer::builder()
        .consecutive_failures(3)
        .open_for(S(3600))
        .max_open_for(S(3600))
        .open_jitter(0.0)
        .build()
        .unwrap();
    let svc = b.layer(leaf);
    let mut i = 0;
    while !b
        .snapshot()
        .iter()
        .any(|x| x.provider.as_deref() == Some("down") && matches!(x.state, State::Open { .. }))
    {
        let r = ChatRequest::new("mock/echo", vec![Message::user(format!("warm {i}"))]);
        let _ = match svc.clone().oneshot(r).await {
            Ok(s) => s.collect().await.map(|_| ()),
            Err(e) => Err(e),
        };
        i += 1;
        assert!(i < 500, "the breaker never opened");
    }
    let dead_before = server.counters().requests_to("down");
    let mut ok = 0;
    for i in 0..300 {
        let r = ChatRequest::new("mock/echo", vec![Message::user(format!("after {i}"))]);
        if let Ok(s) = svc.clone().oneshot(r).await {
            ok += usize::from(s.collect().await.is_ok());
        }
    }
    assert_eq!(
        server.counters().requests_to("down"),
        dead_before,
        "not one request to the dead provider"
    );
    assert_eq!(ok, 300);
}

/// The `outage` preset without its hanging provider (this test is about the dead one).
fn outage_without_hang() -> llm_layers_mock::Scenario {
    let mut s = llm_layers_mock::Scenario::outage();
    s.providers.retain(|p| p.slug != "stuck");
    s
}

/// Under sustained concurrency (far more calls in flight than the window) a provider that
/// fails at once still trips: the calls in flight cannot outweigh every record.
#[tokio::test(start_paused = true)]
async fn trips_under_sustained_load() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder()
        .failure_ratio(0.5)
        .window(20)
        .min_calls(10)
        .open_for(S(10))
        .max_open_for(S(300))
        .open_jitter(0.0)
        .build()
        .unwrap();
    let svc = b.layer(mock.clone());
    // 200 slow successes from Good keep 200 calls in flight for 10 s ...
    let mut tasks = Vec::new();
    for _ in 0..200 {
        mock.push(Script::tokens(S(10), 1, Duration::ZERO).provider("Good"));
        tasks.push(tokio::spawn(run_owned(svc.clone())));
    }
    tokio::task::yield_now().await;
    // ... while Bad answers 502 at once, call after call.
    for _ in 0..40 {
        mock.push(fail("Bad"));
        let _ = run(&svc).await;
    }
    assert!(
        b.snapshot()
            .iter()
            .any(|i| i.provider.as_deref() == Some("bad") && matches!(i.state, State::Open { .. })),
        "{:?}",
        b.snapshot()
    );
    for t in tasks {
        let _ = t.await;
    }
}

/// First-token timeouts of a provider nobody can name (hung calls time out together) do not
/// open the model as a whole while other calls succeed.
#[tokio::test(start_paused = true)]
async fn unnamed_first_token_timeouts_do_not_open_the_model() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    for _ in 0..30 {
        mock.push(Script::error(LlmError::timeout(
            llm_layers_core::TimeoutKind::FirstToken,
        )));
        let _ = run(&svc).await;
    }
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert!(
        b.snapshot().iter().all(|i| i.state == State::Closed),
        "{:?}",
        b.snapshot()
    );
}

/// A probe slot taken in one half-open period cannot be given back into the next one.
#[tokio::test(start_paused = true)]
async fn a_probe_from_an_earlier_period_does_not_free_a_slot_of_the_next() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    trip_bad(&svc, &mock).await;
    tokio::time::advance(S(10)).await;
    // Period 1: a probe to bad hangs (kept as a future); it holds the one slot.
    let mut only_bad = req();
    only_bad.body_mut().provider_mut().only = Some(vec!["bad".into()]);
    mock.push(Script::new().hang());
    let stale = svc.clone().oneshot(only_bad.clone());
    let mut stale = Box::pin(stale);
    assert!(still_pending(&mut stale).await);
    // The probe's answer comes from another call: bad fails again, reopens (20 s), and
    // half-opens into period 2 with a fresh slot.
    mock.push(fail("Bad"));
    let mut other = req();
    other.body_mut().provider_mut().order = Some(vec!["bad".into()]);
    let _ = svc.clone().oneshot(other).await;
    tokio::time::advance(S(20)).await;
    mock.push(Script::new().hang());
    let current = Box::pin(svc.clone().oneshot(only_bad.clone()));
    let mut current = current;
    assert!(still_pending(&mut current).await);
    // Dropping the stale probe must not free period 2's slot.
    drop(stale);
    let calls = mock.calls();
    let e = svc.clone().oneshot(only_bad).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(mock.calls(), calls);
    drop(current);
}

/// Polls a future once: whether it is still pending.
async fn still_pending<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx).is_pending())
    })
    .await
}

/// An attempt teaches while it is still open: calls aimed at a provider (first in their
/// order) that has no first token by the slow threshold count against it then, so a
/// provider that starts to hang is opened within about one threshold, long before any
/// first-token timeout, and each call is counted once.
#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_is_opened_while_its_calls_are_still_open() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder()
        .failure_ratio(0.5)
        .window(4)
        .min_calls(4)
        .open_for(S(30))
        .max_open_for(S(300))
        .open_jitter(0.0)
        .slow_call(SlowCall::Fixed(S(1)))
        .build()
        .unwrap();
    let svc = b.layer(mock.clone());
    let aimed = || {
        let mut r = req();
        r.body_mut().provider_mut().order = Some(vec!["alpha".into(), "beta".into()]);
        r
    };
    mock.push(ok("Beta"));
    svc.clone().oneshot(aimed()).await.unwrap();
    // Four calls to alpha hang (they would wait for a 30 s first-token timeout).
    let mut hung = Vec::new();
    for _ in 0..4 {
        mock.push(Script::new().provider("Alpha").hang());
        hung.push(tokio::spawn(svc.clone().oneshot(aimed())));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let alpha = b
        .snapshot()
        .into_iter()
        .find(|i| i.provider.as_deref() == Some("alpha"))
        .expect("alpha is known from its slow calls");
    assert!(matches!(alpha.state, State::Open { .. }), "{alpha:?}");
    // The next call already stays away from it.
    mock.push(ok("Beta"));
    svc.clone().oneshot(aimed()).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["alpha"]);
    assert_eq!(
        alpha.recent_failures + alpha.recent_calls,
        0,
        "cleared at the trip"
    );
    for h in hung {
        h.abort();
    }
}

/// A full table makes room instead of dropping outcomes silently: idle entries first (an
/// open one whose time is long past included), else the least recently used closed one.
#[tokio::test(start_paused = true)]
async fn a_full_table_evicts_instead_of_dropping_outcomes() {
    let mock = MockChat::new();
    let b = small_table(3);
    let svc = b.layer(mock.clone());
    // The model's own entry and two providers fill it.
    for p in ["A", "B"] {
        mock.push(ok(p));
        run(&svc).await.unwrap();
        tokio::time::advance(S(1)).await;
    }
    // A third provider takes the least recently used one's room.
    mock.push(ok("C"));
    run(&svc).await.unwrap();
    assert_eq!(providers(&b), ["b", "c"]);
    // An open entry of another model, long past its time, is idle too: it goes first.
    let mut other = req();
    other.body_mut().model = Some("x".into());
    mock.push(fail("Z"));
    let _ = svc.clone().oneshot(other).await;
    assert!(
        b.snapshot().iter().any(|i| i.model == "x"),
        "x/z took b's room"
    );
    tokio::time::advance(S(80)).await;
    mock.push(ok("D"));
    run(&svc).await.unwrap();
    assert!(
        b.snapshot().iter().all(|i| i.model != "x"),
        "{:?}",
        b.snapshot()
    );
    // c, unused for 80 s, was idle as well.
    assert_eq!(providers(&b), ["d"]);
}
