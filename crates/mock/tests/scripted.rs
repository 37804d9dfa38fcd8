//! The scripted service under paused time.

use std::time::Duration;

use futures_util::StreamExt;
use llm_layers_core::{ChatRequest, ErrorKind, LlmError, Message};
use llm_layers_mock::{MockChat, Script};
use tokio::time::Instant;
use tower::ServiceExt;

fn req(text: &str) -> ChatRequest {
    ChatRequest::new("m", vec![Message::user(text)])
}

#[tokio::test(start_paused = true)]
async fn resolves_at_the_first_token_and_plays_the_rest_on_time() {
    let mock = MockChat::new();
    mock.push(
        Script::new()
            .provider("Alpha")
            .wait(Duration::from_secs(1))
            .role()
            .wait(Duration::from_secs(2))
            .token("a")
            .wait(Duration::from_millis(500))
            .token("b")
            .finish("stop")
            .usage(3, 2),
    );
    let start = Instant::now();
    let mut s = mock.clone().oneshot(req("x")).await.unwrap();
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(3),
        "role-only chunk is not the commit"
    );
    assert_eq!(s.meta().provider.as_deref(), Some("Alpha"));
    assert_eq!(s.meta().model, "m");
    assert!(s.next().await.unwrap().unwrap().content() == Some(""));
    assert_eq!(s.next().await.unwrap().unwrap().content(), Some("a"));
    assert_eq!(s.next().await.unwrap().unwrap().content(), Some("b"));
    assert_eq!(Instant::now() - start, Duration::from_millis(3500));
    let rest: Vec<_> = StreamExt::collect(s).await;
    assert_eq!(rest.len(), 2);
    assert_eq!(mock.completed(), 1);
    assert_eq!(mock.open_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn errors_before_and_after_commit_and_records() {
    let mock = MockChat::with_default(Script::tokens(Duration::ZERO, 2, Duration::ZERO));
    mock.push(
        Script::new()
            .wait(Duration::from_secs(1))
            .fail(LlmError::truncated()),
    );
    mock.push(Script::new().token("a").fail(LlmError::truncated()));
    let e = mock.clone().oneshot(req("1")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Truncated);
    let mut s = mock.clone().oneshot(req("2")).await.unwrap();
    assert!(s.next().await.unwrap().is_ok());
    assert_eq!(
        s.next().await.unwrap().unwrap_err().kind(),
        ErrorKind::Truncated
    );
    assert!(s.next().await.is_none());
    // The queue is empty: the default script plays.
    let done = mock
        .clone()
        .oneshot(req("3"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(done.choices[0].message.content.as_deref(), Some("t0 t1 "));
    let seen: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| {
            serde_json::to_value(r).unwrap()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(seen, ["1", "2", "3"]);
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn hang_and_drop_is_counted_as_cancelled() {
    let mock = MockChat::new();
    mock.push(Script::new().hang());
    mock.push(Script::new().token("a").hang());
    let r = tokio::time::timeout(Duration::from_secs(60), mock.clone().oneshot(req("h"))).await;
    assert!(r.is_err(), "a hang never commits");
    let mut s = mock.clone().oneshot(req("h2")).await.unwrap();
    assert!(s.next().await.unwrap().is_ok());
    assert!(
        tokio::time::timeout(Duration::from_secs(60), s.next())
            .await
            .is_err()
    );
    drop(s);
    assert_eq!(mock.cancelled(), 2);
    assert_eq!(mock.open_streams(), 0);
}
