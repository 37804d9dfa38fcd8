//! Coalescing under paused time with the scripted mock.

use std::time::Duration;

use futures_util::StreamExt;
use llm_layers_coalesce::{Coalesce, CoalesceLayer};
use llm_layers_core::{ChatRequest, Message};
use llm_layers_mock::{MockChat, Script};
use tower::{Layer, ServiceExt};

fn req(text: &str, temperature: Option<f64>) -> ChatRequest {
    let mut r = ChatRequest::new("m", vec![Message::user(text)]);
    r.body_mut().temperature = temperature;
    r
}

fn slow_answer() -> Script {
    // First token at 100 ms, then one every 50 ms: 10 tokens.
    Script::tokens(Duration::from_millis(100), 10, Duration::from_millis(50))
}

#[tokio::test(start_paused = true)]
async fn n_waiters_get_n_exact_answers_from_one_upstream_call() {
    let mock = MockChat::with_default(slow_answer());
    let svc = CoalesceLayer::new().layer(mock.clone());
    let alone = svc
        .clone()
        .oneshot(req("other", Some(0.7)))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let expected = alone.choices[0].message.content.clone();
    assert_eq!(mock.calls(), 1);

    let mut set = tokio::task::JoinSet::new();
    for i in 0..8u64 {
        let svc = svc.clone();
        set.spawn(async move {
            // Joiners arrive over 300 ms: the last ones after several tokens went by
            // (they are replayed the prefix).
            tokio::time::sleep(Duration::from_millis(40 * i)).await;
            let r = if i % 2 == 0 {
                req("same", Some(0.0))
            } else {
                let mut r = req("same", Some(0.0));
                r.extensions_mut().insert(Coalesce);
                r
            };
            svc.oneshot(r).await.unwrap().collect().await.unwrap()
        });
    }
    let mut answers = Vec::new();
    while let Some(a) = set.join_next().await {
        answers.push(a.unwrap().choices[0].message.content.clone());
    }
    assert_eq!(answers.len(), 8);
    assert!(
        answers.iter().all(|a| *a == expected),
        "{answers:?} vs {expected:?}"
    );
    assert_eq!(mock.calls(), 2, "eight callers, one upstream call");
    // Not deterministic and not marked: never shared.
    let (a, b) = tokio::join!(
        svc.clone().oneshot(req("warm", Some(0.7))),
        svc.clone().oneshot(req("warm", Some(0.7)))
    );
    drop((a.unwrap(), b.unwrap()));
    assert_eq!(mock.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn one_caller_leaving_does_not_cut_the_others_and_the_last_cancels_upstream() {
    let mock = MockChat::with_default(slow_answer());
    let svc = CoalesceLayer::new().layer(mock.clone());
    let (a, b) = tokio::join!(
        svc.clone().oneshot(req("same", Some(0.0))),
        svc.clone().oneshot(req("same", Some(0.0)))
    );
    let (mut a, b) = (a.unwrap(), b.unwrap());
    // A reads two chunks and leaves; B reads to the end.
    let _ = a.next().await;
    let _ = a.next().await;
    drop(a);
    let answer = b.collect().await.unwrap();
    assert!(answer.choices[0].message.content.as_deref().unwrap().len() > 10);
    assert_eq!((mock.calls(), mock.cancelled()), (1, 0));

    // Both leave early: the upstream call is cancelled.
    let (c, d) = tokio::join!(
        svc.clone().oneshot(req("again", Some(0.0))),
        svc.clone().oneshot(req("again", Some(0.0)))
    );
    drop((c.unwrap(), d.unwrap()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!((mock.calls(), mock.cancelled()), (2, 1));
    // And the next identical call starts a new one.
    let e = svc.clone().oneshot(req("again", Some(0.0))).await.unwrap();
    e.collect().await.unwrap();
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_error_before_the_first_token_reaches_every_caller() {
    let mock = MockChat::new();
    mock.push(
        Script::new()
            .wait(Duration::from_millis(50))
            .fail(llm_layers_core::LlmError::new(
                llm_layers_core::ErrorKind::Upstream,
            )),
    );
    let svc = CoalesceLayer::new().layer(mock.clone());
    let (a, b) = tokio::join!(
        svc.clone().oneshot(req("x", Some(0.0))),
        svc.clone().oneshot(req("x", Some(0.0)))
    );
    for e in [a.unwrap_err(), b.unwrap_err()] {
        assert_eq!(e.kind(), llm_layers_core::ErrorKind::Upstream, "{e}");
    }
    assert_eq!(mock.calls(), 1);
}

/// A caller that leaves before the shared call's task even ran takes the flight with it:
/// the next identical call starts its own, and is answered (it used to join the abandoned
/// flight and get "every caller left").
#[tokio::test(start_paused = true)]
async fn a_caller_that_leaves_at_once_never_cuts_the_next() {
    use tower::Service;
    let mock = MockChat::with_default(slow_answer());
    let svc = CoalesceLayer::new().layer(mock.clone());
    let mut a = svc.clone();
    ServiceExt::ready(&mut a).await.unwrap();
    drop(a.call(req("same", Some(0.0))));
    let b = svc.clone().oneshot(req("same", Some(0.0))).await;
    let answer = b.unwrap().collect().await.unwrap();
    assert!(answer.choices[0].message.content.is_some());
}

/// A shared call whose task panics ends every caller with an error (none waits forever)
/// and is forgotten: the next identical call starts afresh.
#[tokio::test(start_paused = true)]
async fn a_panic_below_ends_every_caller_and_is_forgotten() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let boom = tower::service_fn(move |_req: ChatRequest| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a layer below panicked");
            #[allow(unreachable_code)]
            Ok::<llm_layers_core::ChatStream, llm_layers_core::LlmError>(unreachable!())
        }
    });
    let layer = CoalesceLayer::new();
    let svc = layer.layer(boom);
    let (a, b) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(5),
            svc.clone().oneshot(req("p", Some(0.0)))
        ),
        tokio::time::timeout(
            Duration::from_secs(5),
            svc.clone().oneshot(req("p", Some(0.0)))
        ),
    );
    let (a, b) = (a.expect("a waited forever"), b.expect("b waited forever"));
    assert_eq!(a.unwrap_err().kind(), llm_layers_core::ErrorKind::Internal);
    assert!(b.is_err());
    assert_eq!(layer.in_flight(), 0, "the flight is forgotten");
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        svc.clone().oneshot(req("p", Some(0.0))),
    )
    .await
    .expect("a later identical call waited forever");
    assert!(c.is_err());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Tenants never share a call (nor a bill, nor a limit); the same tenant's identical calls
/// do.
#[tokio::test(start_paused = true)]
async fn tenants_never_share_a_call() {
    let mock = MockChat::with_default(slow_answer());
    let svc = CoalesceLayer::new().layer(mock.clone());
    let as_tenant = |t: &str| {
        let mut r = req("same", Some(0.0));
        r.extensions_mut()
            .insert(llm_layers_core::Tenant(std::sync::Arc::from(t)));
        r
    };
    let (a, b, a2) = tokio::join!(
        svc.clone().oneshot(as_tenant("acme")),
        svc.clone().oneshot(as_tenant("globex")),
        svc.clone().oneshot(as_tenant("acme")),
    );
    drop((a.unwrap(), b.unwrap(), a2.unwrap()));
    assert_eq!(mock.calls(), 2, "one for acme's two calls, one for globex");
}

/// The replay buffer is bounded: past it a flight takes no more joiners (the next identical
/// call goes upstream itself) and keeps only what its callers have not read yet.
#[tokio::test(start_paused = true)]
async fn the_replay_buffer_is_bounded() {
    let long = Script::tokens(Duration::from_millis(10), 400, Duration::from_millis(5));
    let mock = MockChat::with_default(long);
    let layer = CoalesceLayer::new().replay_limit(4 * 1024);
    let svc = layer.layer(mock.clone());
    let mut first = svc.clone().oneshot(req("long", Some(0.0))).await.unwrap();
    // Past 8 KiB read (every chunk holds at least its own struct), but well under the
    // default 64 KiB: only the configured limit turns the late caller away.
    let enough = 8 * 1024 / std::mem::size_of::<llm_layers_core::ChatChunk>() + 1;
    for _ in 0..enough {
        first.next().await.unwrap().unwrap();
    }
    assert!(
        layer.held_bytes() <= 4 * 1024 + 1024,
        "{} bytes held for a caller that read them",
        layer.held_bytes()
    );
    let late = svc.clone().oneshot(req("long", Some(0.0))).await.unwrap();
    assert_eq!(
        mock.calls(),
        2,
        "past the replay limit, a new call of its own"
    );
    drop(late);
    let rest = first.collect().await.unwrap();
    assert!(rest.choices[0].message.content.is_some());
}

/// The layer's gauges: flights in progress, and the bytes they keep for late joiners (at
/// least a chunk's own size for each chunk kept), back to none when the flight ends.
#[tokio::test(start_paused = true)]
async fn in_flight_and_held_bytes_say_what_is_kept() {
    let mock = MockChat::with_default(slow_answer());
    let layer = CoalesceLayer::new();
    let svc = layer.layer(mock.clone());
    assert_eq!((layer.in_flight(), layer.held_bytes()), (0, 0));
    let mut s = svc.clone().oneshot(req("gauges", Some(0.0))).await.unwrap();
    for _ in 0..5 {
        s.next().await.unwrap().unwrap();
    }
    assert_eq!(layer.in_flight(), 1);
    let chunk = std::mem::size_of::<llm_layers_core::ChatChunk>();
    assert!(layer.held_bytes() >= 5 * chunk, "{}", layer.held_bytes());
    while s.next().await.is_some() {}
    drop(s);
    tokio::task::yield_now().await;
    assert_eq!((layer.in_flight(), layer.held_bytes()), (0, 0));
}

/// What a chunk weighs counts its text, its reasoning and its tool-call arguments (the
/// replay limit bounds what callers actually send), not only its struct.
#[tokio::test(start_paused = true)]
async fn held_bytes_weigh_text_reasoning_and_tool_arguments() {
    use llm_layers_core::{ChatChunk, ChunkChoice, Delta, FunctionDelta, ToolCallDelta};
    let heavy = |field: usize| {
        let big = "x".repeat(10_000);
        let mut delta = Delta::default();
        match field {
            0 => delta.content = Some(big),
            1 => delta.reasoning = Some(big),
            _ => {
                delta.tool_calls = Some(vec![ToolCallDelta {
                    function: Some(FunctionDelta {
                        arguments: Some(big),
                        ..FunctionDelta::default()
                    }),
                    ..ToolCallDelta::default()
                }])
            }
        }
        ChatChunk {
            id: "gen-1".into(),
            model: "m".into(),
            choices: vec![ChunkChoice {
                delta,
                ..ChunkChoice::default()
            }],
            ..ChatChunk::default()
        }
    };
    for field in 0..3 {
        let script = Script::new()
            .wait(Duration::from_millis(10))
            .chunk(heavy(field))
            .wait(Duration::from_secs(1))
            .finish("stop");
        let layer = CoalesceLayer::new();
        let svc = layer.layer(MockChat::with_default(script));
        let mut s = svc.oneshot(req("heavy", Some(0.0))).await.unwrap();
        s.next().await.unwrap().unwrap();
        let held = layer.held_bytes();
        // A scripted chunk keeps no upstream bytes: its fields are what it holds.
        let overhead = std::mem::size_of::<llm_layers_core::StreamChunk>()
            + std::mem::size_of::<ChatChunk>()
            + "gen-1m".len();
        assert_eq!(held, 10_000 + overhead, "field {field}");
    }
}

/// Calls that differ in what `partition_by` reads never share; calls that agree do.
#[tokio::test(start_paused = true)]
async fn partition_by_keeps_apart_what_it_is_told_to() {
    let mock = MockChat::with_default(slow_answer());
    let svc = CoalesceLayer::new()
        .partition_by(|r| format!("{:?}", r.extensions().get::<u32>()))
        .layer(mock.clone());
    let tagged = |n: u32| {
        let mut r = req("same", Some(0.0));
        r.extensions_mut().insert(n);
        r
    };
    let (a, b, c) = tokio::join!(
        svc.clone().oneshot(tagged(1)),
        svc.clone().oneshot(tagged(1)),
        svc.clone().oneshot(tagged(2)),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(mock.calls(), 2, "one for the two 1s, one for the 2");
    for s in [a, b, c] {
        let answer = s.collect().await.unwrap();
        assert!(answer.choices[0].message.content.is_some());
    }
}

/// The layer is ready only when the service below is: a full service below is never
/// hidden behind a coalescing layer that says yes.
#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services() {
    use std::task::{Context, Waker};
    use tower::Service;
    let mock = MockChat::with_default(slow_answer());
    let mut svc = CoalesceLayer::new().layer(mock.clone());
    let mut cx = Context::from_waker(Waker::noop());
    mock.set_ready(false);
    assert!(svc.poll_ready(&mut cx).is_pending());
    mock.set_ready(true);
    assert!(svc.poll_ready(&mut cx).is_ready());
}

/// A joiner polled again from another task (a new waker) is woken on that one: the waker
/// kept is always the latest.
#[tokio::test(start_paused = true)]
async fn a_joiner_is_woken_on_its_latest_waker() {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let mock = MockChat::with_default(slow_answer());
    let svc = CoalesceLayer::new().layer(mock.clone());
    let lead = svc.clone().oneshot(req("wake", Some(0.0)));
    let mut joiner = Box::pin(svc.clone().oneshot(req("wake", Some(0.0))));
    let (old, new) = (
        Arc::new(Count(AtomicUsize::new(0))),
        Arc::new(Count(AtomicUsize::new(0))),
    );
    let old_waker = Waker::from(old.clone());
    assert!(
        joiner
            .as_mut()
            .poll(&mut Context::from_waker(&old_waker))
            .is_pending()
    );
    let new_waker = Waker::from(new.clone());
    assert!(
        joiner
            .as_mut()
            .poll(&mut Context::from_waker(&new_waker))
            .is_pending()
    );
    let lead = lead.await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(new.0.load(Ordering::SeqCst), 1, "the latest waker is woken");
    assert_eq!(old.0.load(Ordering::SeqCst), 0, "the stale one is not");
    assert_eq!(mock.calls(), 1);
    drop((lead, joiner));
}
