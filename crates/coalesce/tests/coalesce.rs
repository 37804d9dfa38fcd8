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
    assert!(a.is_err() && b.is_err());
    assert_eq!(mock.calls(), 1);
}
