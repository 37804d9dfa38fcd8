//! The three limits under paused time, against the scripted mock.

use std::time::Duration;

use futures_util::StreamExt;
use llm_layers_core::{
    ChatRequest, ChatStream, Deadline, ErrorKind, LlmError, Message, TimeoutKind,
};
use llm_layers_mock::{MockChat, Script};
use llm_layers_timeout::{TimeoutLayer, Timeouts};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const MS: Duration = Duration::from_millis(1);

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn layer(first: Option<u64>, idle: Option<u64>, total: Option<u64>) -> TimeoutLayer {
    TimeoutLayer::builder()
        .limits(Timeouts {
            first_token: first.map(Duration::from_secs),
            idle: idle.map(Duration::from_secs),
            total: total.map(Duration::from_secs),
        })
        .build()
        .unwrap()
}

async fn drain(mut s: ChatStream) -> (Vec<String>, Option<LlmError>) {
    let mut text = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(c) => text.extend(c.content().map(str::to_owned)),
            Err(e) => return (text, Some(e)),
        }
    }
    (text, None)
}

#[tokio::test(start_paused = true)]
async fn first_token_fires_at_its_deadline_and_not_a_tick_before() {
    let mock = MockChat::new();
    let svc = layer(Some(5), None, None).layer(mock.clone());
    // Just in time: the first token at 5 s - 1 ms commits.
    mock.push(Script::tokens(
        Duration::from_secs(5) - MS,
        1,
        Duration::ZERO,
    ));
    let (text, err) = drain(svc.clone().oneshot(req()).await.unwrap()).await;
    assert_eq!((text.len(), err.is_none()), (1, true));
    // One tick late: the error comes at exactly 5 s.
    mock.push(Script::tokens(
        Duration::from_secs(5) + MS,
        1,
        Duration::ZERO,
    ));
    let start = Instant::now();
    let e = svc.clone().oneshot(req()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
    assert_eq!(mock.cancelled(), 1, "the late attempt is dropped upstream");
}

#[tokio::test(start_paused = true)]
async fn idle_is_reset_by_chunks_and_fires_after_a_long_gap() {
    let mock = MockChat::new();
    let svc = layer(None, Some(3), None).layer(mock.clone());
    // Slow but alive: a chunk every 2.9 s for 10 chunks (29 s in all) completes.
    mock.push(Script::tokens(
        Duration::ZERO,
        10,
        Duration::from_millis(2900),
    ));
    let (text, err) = drain(svc.clone().oneshot(req()).await.unwrap()).await;
    assert_eq!(text.len(), 10);
    assert!(err.is_none());
    // A 3 s + 1 ms gap after the second chunk: cut at exactly 3 s after it.
    mock.push(
        Script::new()
            .token("a")
            .wait(Duration::from_secs(1))
            .token("b")
            .wait(Duration::from_secs(3) + MS)
            .token("c"),
    );
    let start = Instant::now();
    let (text, err) = drain(svc.clone().oneshot(req()).await.unwrap()).await;
    assert_eq!(text, ["a", "b"], "what was delivered is intact");
    assert_eq!(err.unwrap().kind(), ErrorKind::Timeout(TimeoutKind::Idle));
    assert_eq!(Instant::now() - start, Duration::from_secs(4));
    assert_eq!(mock.cancelled(), 1);
    // Exactly at the limit is still in time.
    mock.push(
        Script::new()
            .token("a")
            .wait(Duration::from_secs(3) - MS)
            .token("b")
            .finish("stop"),
    );
    let (text, err) = drain(svc.clone().oneshot(req()).await.unwrap()).await;
    assert_eq!((text.len(), err.is_none()), (2, true));
}

#[tokio::test(start_paused = true)]
async fn total_cuts_a_long_stream_after_intact_chunks() {
    let mock = MockChat::new();
    let svc = layer(None, Some(60), Some(10)).layer(mock.clone());
    mock.push(Script::tokens(
        Duration::from_secs(1),
        100,
        Duration::from_secs(1),
    ));
    let start = Instant::now();
    let (text, err) = drain(svc.oneshot(req()).await.unwrap()).await;
    assert_eq!(err.unwrap().kind(), ErrorKind::Timeout(TimeoutKind::Total));
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
    let expected: Vec<String> = (0..text.len()).map(|i| format!("t{i} ")).collect();
    assert_eq!(text, expected);
    // Tokens at 1..=10 s arrived: one landing exactly at the deadline is still in time.
    assert_eq!(text.len(), 10);
}

#[tokio::test(start_paused = true)]
async fn total_also_bounds_the_first_token_and_sets_the_deadline() {
    let mock = MockChat::with_default(Script::tokens(Duration::from_secs(30), 1, Duration::ZERO));
    let svc = layer(Some(20), None, Some(7)).layer(mock.clone());
    let start = Instant::now();
    let e = svc.oneshot(req()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::Total));
    assert_eq!(Instant::now() - start, Duration::from_secs(7));
    let seen = mock.requests();
    assert_eq!(
        seen[0].deadline(),
        Some(start + Duration::from_secs(7)),
        "inner layers see the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn overrides_and_the_deadline_extension_win() {
    let mock = MockChat::with_default(Script::tokens(Duration::from_secs(8), 1, Duration::ZERO));
    let svc = layer(Some(5), None, None).layer(mock.clone());
    // A per-request override lifts the first-token limit to 10 s.
    let mut r = req();
    r.extensions_mut().insert(Timeouts {
        first_token: Some(Duration::from_secs(10)),
        ..Timeouts::default()
    });
    assert!(svc.clone().oneshot(r).await.is_ok());
    // A caller's deadline 2 s away beats the layer's 5 s first-token limit.
    let mut r = req();
    let start = Instant::now();
    r.extensions_mut()
        .insert(Deadline(start + Duration::from_secs(2)));
    let e = svc.clone().oneshot(r).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::Total));
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_cancels_timers_and_upstream() {
    let mock = MockChat::with_default(Script::tokens(Duration::ZERO, 5, Duration::from_secs(1)));
    let svc = layer(Some(5), Some(5), Some(50)).layer(mock.clone());
    let mut s = svc.oneshot(req()).await.unwrap();
    assert!(s.next().await.unwrap().is_ok());
    drop(s);
    assert_eq!(mock.cancelled(), 1);
    assert_eq!(mock.open_streams(), 0);
    // Nothing is left to fire into anything: no task of its own, and past every deadline
    // the upstream sees nothing more.
    tokio::time::advance(Duration::from_secs(100)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        0,
        "a task of the layer outlived its stream"
    );
    assert_eq!(
        (mock.calls(), mock.cancelled(), mock.completed()),
        (1, 1, 0)
    );
}

#[test]
fn zero_durations_are_rejected() {
    for (b, field) in [
        (
            TimeoutLayer::builder().first_token(Duration::ZERO),
            "first_token",
        ),
        (TimeoutLayer::builder().idle(Duration::ZERO), "idle"),
        (TimeoutLayer::builder().total(Duration::ZERO), "total"),
    ] {
        let e = b.build().unwrap_err();
        assert!(e.message().contains(field), "{field}: {e}");
    }
    assert!(TimeoutLayer::builder().build().is_ok(), "all off is valid");
}

/// The shortcuts never panic: a zero limit fires at once (tower's `Timeout` semantics).
#[tokio::test(start_paused = true)]
async fn a_shortcut_with_a_zero_limit_fires_at_once_instead_of_panicking() {
    let mock = MockChat::new();
    mock.push(Script::tokens(Duration::from_millis(1), 1, Duration::ZERO));
    let start = Instant::now();
    let e = TimeoutLayer::first_token(Duration::ZERO)
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn the_one_limit_shortcuts_enforce_their_limit_and_only_it() {
    let mock = MockChat::new();
    mock.push(Script::tokens(Duration::from_secs(3), 1, Duration::ZERO));
    let svc = TimeoutLayer::first_token(Duration::from_secs(2)).layer(mock.clone());
    let e = svc.oneshot(req()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
    // An idle-only layer lets a slow first token through, then cuts a long gap.
    mock.push(Script::tokens(
        Duration::from_secs(3),
        2,
        Duration::from_secs(5),
    ));
    let svc = TimeoutLayer::idle(Duration::from_secs(2)).layer(mock.clone());
    let (words, e) = drain(svc.oneshot(req()).await.unwrap()).await;
    assert_eq!(words.len(), 1, "{words:?}");
    assert_eq!(e.unwrap().kind(), ErrorKind::Timeout(TimeoutKind::Idle));
    assert_eq!(
        TimeoutLayer::total(Duration::from_secs(9)).limits().total,
        Some(Duration::from_secs(9))
    );
}

/// The idle limit of a stream follows what its model and provider were measured to do:
/// 20 × the p99 of the longest gap per stream, here 20 × 50 ms = 1 s, not the 30 s cap.
#[tokio::test(start_paused = true)]
async fn the_adaptive_idle_limit_follows_the_measured_gaps() {
    use llm_layers_latency::{LatencyStore, Outcome};
    use llm_layers_timeout::AdaptiveLimit;
    let store = LatencyStore::builder().min_samples(5).build().unwrap();
    for _ in 0..10 {
        store.record(("m", Some("A")), Some(MS * 100), None, Outcome::Ok);
        store.record_max_gap(("m", Some("A")), MS * 50);
    }
    let limit = AdaptiveLimit {
        quantile: 0.99,
        factor: 20.0,
        min: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    let layer = TimeoutLayer::builder()
        .idle(Duration::from_secs(30))
        .idle_adaptive(store.clone(), limit)
        .build()
        .unwrap();
    // Two tokens, then silence.
    let mock = MockChat::with_default(Script::new().provider("A").token("a").token("b").hang());
    let s = layer.layer(mock.clone()).oneshot(req()).await.unwrap();
    let start = Instant::now();
    let (text, err) = drain(s).await;
    assert_eq!(text, ["a", "b"]);
    assert_eq!(err.unwrap().kind(), ErrorKind::Timeout(TimeoutKind::Idle));
    let waited = Instant::now() - start;
    assert!(
        waited >= Duration::from_millis(990) && waited <= Duration::from_millis(1010),
        "{waited:?}"
    );
    // Unmeasured (another model): the cap.
    let s = layer
        .layer(mock)
        .oneshot(ChatRequest::new("other", vec![Message::user("x")]))
        .await
        .unwrap();
    let start = Instant::now();
    let (_, err) = drain(s).await;
    assert_eq!(err.unwrap().kind(), ErrorKind::Timeout(TimeoutKind::Idle));
    assert_eq!(Instant::now() - start, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_first_token_limit_follows_the_measured_ttft() {
    use llm_layers_latency::{LatencyStore, Outcome};
    use llm_layers_timeout::AdaptiveLimit;
    let store = LatencyStore::builder().min_samples(5).build().unwrap();
    for _ in 0..10 {
        store.record(
            ("m", Some("A")),
            Some(Duration::from_secs(1)),
            None,
            Outcome::Ok,
        );
    }
    let layer = TimeoutLayer::builder()
        .first_token_adaptive(
            store,
            AdaptiveLimit {
                quantile: 0.99,
                factor: 3.0,
                min: Duration::from_secs(2),
                max: Duration::from_secs(60),
            },
        )
        .build()
        .unwrap();
    let mock = MockChat::with_default(Script::new().hang());
    let start = Instant::now();
    let e = layer.layer(mock).oneshot(req()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
    let waited = Instant::now() - start;
    assert!(
        waited >= Duration::from_millis(2990) && waited <= Duration::from_millis(3030),
        "{waited:?}"
    );
    // A quantile out of (0, 1] is refused, naming what is wrong.
    let e = TimeoutLayer::builder()
        .idle_adaptive(
            llm_layers_latency::LatencyStore::new(),
            AdaptiveLimit {
                quantile: 0.0,
                factor: 1.0,
                min: MS,
                max: MS,
            },
        )
        .build()
        .unwrap_err();
    assert!(
        e.message().contains("idle") && e.message().contains("quantile"),
        "{e}"
    );
}

/// A stream whose chunks are always ready (a slow reader, a fast upstream) still ends at
/// its total deadline: the timer is not only looked at while the upstream is pending.
#[tokio::test(start_paused = true)]
async fn the_total_deadline_holds_for_a_stream_that_never_pauses() {
    let mut script = Script::new();
    for _ in 0..100 {
        script = script.token("x");
    }
    let mock = MockChat::with_default(script.finish("stop"));
    let mut s = layer(None, Some(5), Some(3))
        .layer(mock)
        .oneshot(req())
        .await
        .unwrap();
    let mut got = 0;
    let err = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match s.next().await {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert_eq!(err.unwrap().kind(), ErrorKind::Timeout(TimeoutKind::Total));
    assert!((29..=31).contains(&got), "{got}");
}

/// An attempt that starts while its model is unmeasured (a cold process) waits on the cap,
/// but reads its limit again every `min`: once other calls have measured the model, it is cut
/// where an attempt started after them would be (3 × 1 s here), not at the 60 s cap. A
/// model that stays unmeasured keeps the cap.
#[tokio::test(start_paused = true)]
async fn a_cold_attempt_reads_its_first_token_limit_again_as_it_waits() {
    use llm_layers_latency::{LatencyStore, Outcome};
    use llm_layers_timeout::AdaptiveLimit;
    let store = LatencyStore::builder().min_samples(5).build().unwrap();
    let layer = TimeoutLayer::builder()
        .first_token_adaptive(
            store.clone(),
            AdaptiveLimit {
                quantile: 0.99,
                factor: 3.0,
                min: Duration::from_secs(2),
                max: Duration::from_secs(60),
            },
        )
        .build()
        .unwrap();
    let mock = MockChat::with_default(Script::new().hang());
    let start = Instant::now();
    let call = tokio::spawn(layer.layer(mock.clone()).oneshot(req()));
    // Measured 5 s in: the attempt is past the new limit (3 s) and is cut at the next look.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 0..10 {
        store.record(
            ("m", Some("A")),
            Some(Duration::from_secs(1)),
            None,
            Outcome::Ok,
        );
    }
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(6),
        "the look at 6 s"
    );
    // Another model, never measured: the cap.
    let start = Instant::now();
    let e = layer
        .layer(mock)
        .oneshot(ChatRequest::new("other", vec![Message::user("x")]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::FirstToken));
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
}

/// A stream committed while its model's gaps are unmeasured waits on the idle cap, but reads
/// its limit again every `min`: once the streams beside it have measured the gaps, it is cut
/// where a stream committed after them would be (20 × 50 ms = 1 s), not at the 30 s cap.
#[tokio::test(start_paused = true)]
async fn a_cold_stream_reads_its_idle_limit_again_as_it_waits() {
    use llm_layers_latency::{LatencyStore, Outcome};
    use llm_layers_timeout::AdaptiveLimit;
    let store = LatencyStore::builder().min_samples(5).build().unwrap();
    let layer = TimeoutLayer::builder()
        .idle(Duration::from_secs(30))
        .idle_adaptive(
            store.clone(),
            AdaptiveLimit {
                quantile: 0.99,
                factor: 20.0,
                min: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
        )
        .build()
        .unwrap();
    let mock = MockChat::with_default(Script::new().provider("A").token("a").hang());
    let s = layer.layer(mock).oneshot(req()).await.unwrap();
    let start = Instant::now();
    let read = tokio::spawn(drain(s));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..10 {
        store.record(("m", Some("A")), Some(MS * 100), None, Outcome::Ok);
        store.record_max_gap(("m", Some("A")), MS * 50);
    }
    let (text, err) = read.await.unwrap();
    assert_eq!(text, ["a"]);
    assert_eq!(err.unwrap().kind(), ErrorKind::Timeout(TimeoutKind::Idle));
    assert_eq!(
        Instant::now() - start,
        Duration::from_millis(1500),
        "the look at 1.5 s"
    );
}

/// The idle gap is measured from when a chunk's bytes arrived (the decoder's stamp, one
/// clock read per network read), not from when the caller got round to taking it: an
/// upstream that sent two events at once and then nothing is idle from that read on.
#[tokio::test(start_paused = true)]
async fn the_idle_gap_runs_from_when_the_bytes_arrived() {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use llm_layers_core::decode::SseChatDecoder;
    use llm_layers_timeout::TimeoutStream;
    const EVENTS: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n";
    // One read with both events, then an upstream that says nothing more.
    let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
        Bytes::from_static(EVENTS),
    ))])
    .chain(futures_util::stream::pending());
    let start = Instant::now();
    let stream = ChatStream::commit(
        SseChatDecoder::new(StreamBody::new(frames)),
        llm_layers_core::ResponseMeta::default(),
    )
    .await
    .expect("committed");
    let mut s = std::pin::pin!(TimeoutStream::new(
        stream,
        Some(Duration::from_secs(25)),
        None
    ));
    assert!(matches!(s.next().await, Some(Ok(c)) if c.content() == Some("a")));
    // The caller is slow to take the second event: it still arrived at 0 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(matches!(s.next().await, Some(Ok(c)) if c.content() == Some("b")));
    let e = s.next().await.expect("an item").expect_err("idle");
    assert_eq!(e.kind(), ErrorKind::Timeout(TimeoutKind::Idle));
    assert_eq!(
        Instant::now().saturating_duration_since(start),
        Duration::from_secs(25),
        "from the read, not from the take"
    );
}
