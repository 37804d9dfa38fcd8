//! Throttled is not broken: a `429` holds its provider for its `Retry-After`, never trips it;
//! holds are probed or not worth waiting for, and lengthen when they change nothing.

mod common;
use common::*;

fn throttled(provider: &str, after: Duration) -> Script {
    Script::error(
        LlmError::status(StatusCode::TOO_MANY_REQUESTS, None)
            .with_provider(provider)
            .with_retry_after(after),
    )
}

/// Throttled is not broken: a 429 holds its provider for its Retry-After, never trips it,
/// says "retry elsewhere" while another provider is free, and fails fast with 429 and the
/// shortest hold when all are held.
#[tokio::test(start_paused = true)]
async fn a_429_holds_its_provider_and_never_trips_it() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    mock.push(ok("Alpha"));
    mock.push(ok("Beta"));
    run(&svc).await.unwrap();
    run(&svc).await.unwrap();
    // Sixteen 429s from Alpha in a row: held, never open (and its holds are no longer
    // worth probing: fewer than a fifth of its recent requests succeeded).
    for _ in 0..16 {
        mock.push(throttled("Alpha", S(2)));
        let e = run(&svc).await.unwrap_err();
        assert!(e.retry_elsewhere(), "Beta is free: {e}");
    }
    assert!(
        b.snapshot().iter().all(|i| i.state == State::Closed),
        "{:?}",
        b.snapshot()
    );
    // The next call stays away from Alpha while it is held.
    mock.push(ok("Beta"));
    run(&svc).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["alpha"]);
    // Beta is throttled too. It served until now, so its hold is worth probing: the next
    // calls go to it anyway, and each 429 says more of it (fifteen more in a row, and its
    // holds are no longer worth probing).
    mock.push(throttled("Beta", S(5)));
    let e = run(&svc).await.unwrap_err();
    assert!(!e.retry_elsewhere());
    for _ in 0..15 {
        mock.push(throttled("Beta", S(5)));
        let calls = mock.calls();
        assert!(run(&svc).await.is_err());
        assert_eq!(mock.calls(), calls + 1, "a probe of Beta's hold");
    }
    // Now nothing is free: the call fails fast with the shortest wait, and says no retry
    // could help before it.
    let calls = mock.calls();
    let e = run(&svc).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.no_retry(), "{e}");
    let wait = e.retry_after().unwrap();
    assert!(
        wait > Duration::from_millis(1500) && wait <= S(2),
        "{wait:?}"
    );
    assert!(e.to_string().contains("alpha throttled"), "{e}");
    assert_eq!(mock.calls(), calls, "never asks the upstream for nothing");
    // After the shortest hold, Alpha takes calls again.
    tokio::time::advance(wait).await;
    mock.push(ok("Alpha"));
    run(&svc).await.unwrap();
    assert_eq!(ignored(mock.requests().last().unwrap()), ["beta"]);
}

#[tokio::test(start_paused = true)]
async fn a_hold_is_capped_whatever_the_retry_after() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder()
        .hold(S(1))
        .max_hold(S(60))
        .build()
        .unwrap();
    let svc = b.layer(mock.clone());
    mock.push(ok("Alpha"));
    run(&svc).await.unwrap();
    mock.push(ok("Beta"));
    run(&svc).await.unwrap();
    mock.push(throttled("Alpha", Duration::from_secs(u64::MAX / 4)));
    assert!(run(&svc).await.is_err());
    let alpha = b
        .snapshot()
        .into_iter()
        .find(|i| i.provider.as_deref() == Some("alpha"))
        .unwrap();
    assert_eq!(alpha.held_until.unwrap() - Instant::now(), S(60));
    // No Retry-After at all: the default hold.
    mock.push(Script::error(
        LlmError::status(StatusCode::TOO_MANY_REQUESTS, None).with_provider("Beta"),
    ));
    assert!(run(&svc).await.is_err());
    let beta = b
        .snapshot()
        .into_iter()
        .find(|i| i.provider.as_deref() == Some("beta"))
        .unwrap();
    assert_eq!(beta.held_until.unwrap() - Instant::now(), S(1));
}

/// An upstream 404 "no endpoints" caused by the ignore list the breaker sent is not the
/// caller's `not_found`: it is the fast error the ignore list stood for.
#[tokio::test(start_paused = true)]
async fn a_404_our_ignore_list_caused_becomes_circuit_open() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    trip_bad(&svc, &mock).await;
    // The upstream has only "bad" for this request: ignoring it leaves nothing.
    let mut api = llm_layers_core::ApiError::default();
    api.availability_code = Some("no_endpoints".into());
    mock.push(Script::error(LlmError::status(
        StatusCode::NOT_FOUND,
        Some(api),
    )));
    let e = run(&svc).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(e.open_providers(), ["bad"]);
    // A 404 for a model that does not exist is still the caller's.
    let mut api = llm_layers_core::ApiError::default();
    api.availability_code = Some("model_not_found".into());
    mock.push(Script::error(LlmError::status(
        StatusCode::NOT_FOUND,
        Some(api),
    )));
    let e = run(&svc).await.unwrap_err();
    assert_eq!(e.status_code(), Some(StatusCode::NOT_FOUND));
}

/// A provider that throttles again as soon as its hold ends is held twice as long each time
/// (capped), so it costs one request per hold, not one per call; a success resets it.
#[tokio::test(start_paused = true)]
async fn a_provider_that_throttles_after_every_hold_is_held_longer_each_time() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder().max_hold(S(60)).build().unwrap();
    let svc = b.layer(mock.clone());
    let held_for = |b: &BreakerLayer| {
        b.snapshot()
            .into_iter()
            .find(|i| i.provider.as_deref() == Some("alpha"))
            .and_then(|i| i.held_until)
            .map(|u| u - Instant::now())
    };
    mock.push(ok("Alpha"));
    run(&svc).await.unwrap();
    let mut holds = Vec::new();
    for _ in 0..6 {
        mock.push(throttled("Alpha", S(2)));
        assert!(run(&svc).await.is_err());
        let d = held_for(&b).unwrap();
        holds.push(d.as_secs());
        tokio::time::advance(d).await;
    }
    assert_eq!(holds, [2, 4, 8, 16, 32, 60]);
    // A success ends the streak: the next throttle holds for what it asks.
    mock.push(ok("Alpha"));
    run(&svc).await.unwrap();
    mock.push(throttled("Alpha", S(2)));
    assert!(run(&svc).await.is_err());
    assert_eq!(held_for(&b), Some(S(2)));
}

/// A provider whose requests mostly succeed (one request's 429 is not the provider's) is
/// probed while held: a few calls go to it anyway, at most four at once, and a success ends
/// its hold. One that throttles everything is not: the call fails fast, marked not worth
/// retrying.
#[tokio::test(start_paused = true)]
async fn a_hold_is_probed_when_the_providers_requests_mostly_succeed() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    for _ in 0..5 {
        mock.push(ok("Solo"));
        run(&svc).await.unwrap();
    }
    mock.push(throttled("Solo", S(10)));
    assert!(run(&svc).await.is_err());
    // Held for 10 s, and nothing else is known: still, calls go (probes), at most four in
    // flight.
    let hang = Script::tokens(S(5), 1, Duration::ZERO).provider("Solo");
    let mut probes = Vec::new();
    for _ in 0..4 {
        mock.push(hang.clone());
        let svc = svc.clone();
        probes.push(tokio::spawn(async move { run(&svc).await }));
    }
    tokio::task::yield_now().await;
    let calls = mock.calls();
    let e = run(&svc).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::RateLimited,
        "a fifth is not let through"
    );
    assert!(!e.no_retry(), "worth trying again soon: {e}");
    assert!(e.retry_after().unwrap() <= Duration::from_millis(100));
    assert_eq!(mock.calls(), calls);
    for p in probes {
        p.await.unwrap().unwrap();
    }
    // The probes succeeded: the hold is over.
    assert!(
        b.snapshot().iter().all(|i| i.held_until.is_none()),
        "{:?}",
        b.snapshot()
    );
}

/// A full table never makes room by evicting a held entry, even the least recently used:
/// forgetting a hold would send calls straight back to a provider that asked us to wait.
#[tokio::test(start_paused = true)]
async fn a_full_table_never_evicts_a_held_entry() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder()
        .max_entries(3)
        .idle_ttl(S(600))
        .build()
        .unwrap();
    let svc = b.layer(mock.clone());
    // Beta is held for a minute (and used first); Alpha serves after it.
    mock.push(throttled("Beta", S(60)));
    let _ = run(&svc).await;
    tokio::time::advance(S(1)).await;
    mock.push(ok("Alpha"));
    run(&svc).await.unwrap();
    tokio::time::advance(S(1)).await;
    // A third provider needs room: Alpha's, not the held Beta's.
    mock.push(ok("Gamma"));
    run(&svc).await.unwrap();
    assert_eq!(providers(&b), ["beta", "gamma"]);
    let beta = b
        .snapshot()
        .into_iter()
        .find(|i| i.provider.as_deref() == Some("beta"));
    assert!(
        beta.unwrap()
            .held_until
            .is_some_and(|h| h > tokio::time::Instant::now()),
        "still held"
    );
}

/// Idle entries make room, but never one still held; evicting a model's own idle entry
/// keeps its providers' entries, and the table's count stays exact (the next provider
/// fits where the evicted ones were).
#[tokio::test(start_paused = true)]
async fn idle_entries_make_room_but_a_held_one_is_not_idle() {
    let mock = MockChat::new();
    let b = BreakerLayer::builder()
        .max_entries(3)
        .idle_ttl(S(60))
        .max_hold(S(300))
        .build()
        .unwrap();
    let svc = b.layer(mock.clone());
    // The model's entry, Beta held for 200 s, Alpha: full.
    mock.push(throttled("Beta", S(200)));
    let _ = run(&svc).await;
    tokio::time::advance(S(1)).await;
    mock.push(ok("Alpha"));
    run(&svc).await.unwrap();
    // 100 s later every entry is unused for longer than the idle time, but Beta is held.
    // A call of another model needs two entries: the idle ones of `m` (its own and
    // Alpha's) make room, Beta's stays.
    tokio::time::advance(S(100)).await;
    mock.push(ok("Gamma"));
    let mut other = req();
    other.body_mut().model = Some("x".into());
    svc.clone().oneshot(other).await.unwrap();
    let mut entries: Vec<(String, Option<String>)> = b
        .snapshot()
        .into_iter()
        .map(|i| (i.model, i.provider))
        .collect();
    entries.sort();
    let entry = |m: &str, p: Option<&str>| (m.to_owned(), p.map(str::to_owned));
    assert_eq!(
        entries,
        [
            entry("m", Some("beta")),
            entry("x", None),
            entry("x", Some("gamma"))
        ]
    );
    let beta = b
        .snapshot()
        .into_iter()
        .find(|i| i.provider.as_deref() == Some("beta"));
    assert!(beta.unwrap().held_until.is_some(), "{:?}", b.snapshot());
}

/// A half-open entry whose probe is still out is not idle, however long since it was used:
/// evicting it would lose what the probe is finding out.
#[tokio::test(start_paused = true)]
async fn a_probe_in_flight_keeps_its_entry() {
    let mock = MockChat::new();
    let b = small_table(2);
    let svc = b.layer(mock.clone());
    mock.push(fail("Alpha"));
    let _ = run(&svc).await;
    tokio::time::advance(S(11)).await;
    // The probe: slow to answer.
    mock.push(
        Script::new()
            .provider("Alpha")
            .wait(S(300))
            .token("late")
            .finish("stop"),
    );
    let probe = tokio::spawn({
        let svc = svc.clone();
        async move { run(&svc).await }
    });
    tokio::task::yield_now().await;
    let alpha = |b: &BreakerLayer| {
        b.snapshot()
            .into_iter()
            .find(|i| i.provider.as_deref() == Some("alpha"))
            .map(|i| i.state)
    };
    assert_eq!(alpha(&b), Some(State::HalfOpen));
    // 100 s on, another model needs room: not Alpha's, its probe is out.
    tokio::time::advance(S(100)).await;
    mock.push(ok("Gamma"));
    let mut other = req();
    other.body_mut().model = Some("x".into());
    svc.clone().oneshot(other).await.unwrap();
    assert_eq!(alpha(&b), Some(State::HalfOpen), "{:?}", b.snapshot());
    probe.abort();
}
