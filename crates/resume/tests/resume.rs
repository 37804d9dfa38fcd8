//! Mid-stream resume under paused time, over scripted mocks that continue answers as the
//! mock server does (`answer_pieces`).

use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use llm_layers_core::continuation::{ContinueMode, continued};
use llm_layers_core::{
    ChatChunk, ChatRequest, ChatStream, ChunkChoice, Delta, ErrorKind, LlmError, Message,
    ToolCallDelta,
};
use llm_layers_mock::{MockChat, Script, answer_pieces, expected_answer};
use llm_layers_resume::{ResumeChoice, ResumeLayer, ResumeReport};
use tower::{Layer, ServiceExt};

const N: u32 = 8;
const MS: Duration = Duration::from_millis(1);

fn req() -> ChatRequest {
    let mut r = ChatRequest::new("m", vec![Message::user("count to eight")]);
    r.body_mut().max_tokens = Some(N);
    r
}

/// An answer from provider P that breaks after `text`.
fn broken_after(text: &str) -> Script {
    Script::new()
        .provider("P")
        .token(text)
        .fail(LlmError::truncated())
}

/// A continuation from provider P: `pieces`, then the end.
fn answered(pieces: &[&str]) -> Script {
    let mut s = Script::new().provider("P");
    for p in pieces {
        s = s.token(*p);
    }
    s.finish("stop")
}

fn pieces_script(pieces: Vec<String>) -> Script {
    let mut s = Script::new().provider("P").wait(MS * 20).role();
    for p in pieces {
        s = s.token(p).wait(MS * 5);
    }
    s.finish("stop").usage(100, 8)
}

/// A mock whose first answer breaks after `k` tokens (with `fault`) and whose
/// continuations answer the rest, as the mock server would; a prefill is refused with a
/// 400 when `refuse_prefill`.
fn breaking_mock(k: usize, refuse_prefill: bool) -> MockChat {
    MockChat::from_fn(move |r| {
        let pieces = answer_pieces(r.body(), N);
        match continued(r.body()) {
            Some(c) if refuse_prefill && c.mode != ContinueMode::Instruction => {
                Script::error(LlmError::status(StatusCode::BAD_REQUEST, None))
            }
            Some(_) => pieces_script(pieces),
            None => {
                let mut s = Script::new().provider("P").wait(MS * 20).role();
                for p in pieces.into_iter().take(k) {
                    s = s.token(p).wait(MS * 5);
                }
                s.fail(LlmError::truncated())
            }
        }
    })
}

async fn drain(mut s: ChatStream) -> (String, Option<LlmError>, bool) {
    let (mut text, mut finished) = (String::new(), false);
    while let Some(item) = s.next().await {
        match item {
            Ok(c) => {
                for ch in &c.choices {
                    text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                    finished |= ch.finish_reason.is_some();
                }
            }
            Err(e) => return (text, Some(e), finished),
        }
    }
    (text, None, finished)
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_any_token_resumes_to_exactly_the_answer() {
    let want = expected_answer(req().body(), N);
    for refuse in [false, true] {
        for k in 1..N as usize {
            let mock = breaking_mock(k, refuse);
            let layer = ResumeLayer::new();
            let svc = layer.layer(mock.clone());
            // Streaming: chunk by chunk.
            let (text, err, finished) = drain(svc.clone().oneshot(req()).await.unwrap()).await;
            assert!(err.is_none(), "k={k} refuse={refuse}: {err:?}");
            assert!(finished);
            assert_eq!(text, want, "k={k} refuse={refuse}");
            // Whole: collected.
            let done = svc.oneshot(req()).await.unwrap().collect().await.unwrap();
            assert_eq!(
                done.choices[0].message.content.as_deref(),
                Some(want.as_str()),
                "k={k} refuse={refuse}"
            );
            // Refused prefill: first try, the 400, the instruction; then learned.
            let per_answer = if refuse { 3 } else { 2 };
            assert_eq!(mock.calls(), 2 * per_answer - usize::from(refuse), "k={k}");
            if refuse {
                assert_eq!(layer.mode("m", "P"), ContinueMode::Instruction);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_prefill_is_the_trimmed_text_pinned_to_the_provider_that_served() {
    let mock = breaking_mock(3, false);
    let svc = ResumeLayer::new().layer(mock.clone());
    let _ = drain(svc.oneshot(req()).await.unwrap()).await;
    let sent = mock.requests()[1].clone();
    let last = sent.body().messages.last().unwrap();
    let delivered: String = answer_pieces(req().body(), N)[..3].concat();
    assert_eq!(last.role, "assistant");
    assert_eq!(
        serde_json::to_value(&last.content).unwrap(),
        serde_json::json!(delivered.trim_end())
    );
    let only = sent.body().provider.as_ref().unwrap().only.clone();
    assert_eq!(only, Some(vec!["p".to_owned()]));
}

fn tool_call_chunk() -> ChatChunk {
    ChatChunk {
        choices: vec![ChunkChoice {
            delta: Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index: 0,
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn tool_call_and_reasoning_streams_are_not_resumed() {
    let mut reasoning = ChatChunk::default();
    reasoning.choices.push(ChunkChoice {
        delta: Delta {
            reasoning: Some("thinking".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    for odd in [tool_call_chunk(), reasoning] {
        let mock = MockChat::new();
        mock.push(
            Script::new()
                .provider("P")
                .token("a ")
                .chunk(odd)
                .fail(LlmError::truncated()),
        );
        let svc = ResumeLayer::new().layer(mock.clone());
        let (_, err, _) = drain(svc.oneshot(req()).await.unwrap()).await;
        assert_eq!(err.unwrap().kind(), ErrorKind::Truncated);
        assert_eq!(mock.calls(), 1, "no continuation was sent");
    }
}

#[tokio::test(start_paused = true)]
async fn a_continuation_that_does_not_join_ends_with_an_error_not_a_quiet_end() {
    let mock = MockChat::new();
    mock.push(broken_after("The quick brown fox jumps "));
    // Asked to repeat its last 16 characters, it starts somewhere else.
    mock.push(answered(&[
        "Once upon a time, in a land far away, ",
        "there was a fox.",
    ]));
    let svc = ResumeLayer::builder()
        .pin("m", "P", ContinueMode::Instruction)
        .build()
        .unwrap()
        .layer(mock.clone());
    let (text, err, finished) = drain(svc.oneshot(req()).await.unwrap()).await;
    assert_eq!(
        text, "The quick brown fox jumps ",
        "nothing of the continuation"
    );
    assert!(
        !finished,
        "no finish reason: the answer is not called complete"
    );
    let e = err.unwrap();
    assert_eq!(e.kind(), ErrorKind::Truncated);
    assert!(e.message().unwrap().contains("did not join"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn an_instruction_continuation_cuts_its_repeated_overlap() {
    let mock = MockChat::new();
    mock.push(broken_after("The quick brown fox jumps "));
    mock.push(answered(&["brown fox jumps over", " the lazy dog."]));
    let svc = ResumeLayer::builder()
        .pin("m", "P", ContinueMode::Instruction)
        .build()
        .unwrap()
        .layer(mock.clone());
    let done = svc.oneshot(req()).await.unwrap().collect().await.unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some("The quick brown fox jumps over the lazy dog.")
    );
}

#[tokio::test(start_paused = true)]
async fn usage_is_summed_over_both_attempts_and_reported() {
    let mock = breaking_mock(3, false);
    let svc = ResumeLayer::new().layer(mock.clone());
    let stream = svc.oneshot(req()).await.unwrap();
    let report = stream
        .meta()
        .extensions
        .get::<ResumeReport>()
        .cloned()
        .unwrap();
    let done = stream.collect().await.unwrap();
    let usage = done.usage.unwrap();
    let prompt = req().body().approx_prompt_tokens();
    // The continuation reported (100, 8); the broken attempt adds its prompt and 3 chunks.
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (100 + prompt, 8 + 3)
    );
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert_eq!(report.resumed(), 1);
    assert_eq!(report.broken_usage().completion_tokens, 3);
    assert_eq!(report.reported_usage().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_caller_cancels_the_continuation() {
    let mock = MockChat::new();
    mock.push(broken_after("a "));
    mock.push(
        Script::new()
            .provider("P")
            .wait(Duration::from_secs(60))
            .token("b"),
    );
    let svc = ResumeLayer::new().layer(mock.clone());
    let mut stream = svc.oneshot(req()).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    // The next read breaks, sends the continuation and waits on it.
    let pending = tokio::time::timeout(MS * 100, stream.next()).await;
    assert!(pending.is_err());
    assert_eq!((mock.calls(), mock.open_streams()), (2, 1));
    drop(stream);
    assert_eq!(mock.open_streams(), 0);
    assert_eq!(mock.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn off_by_request_or_by_default_a_break_ends_with_its_error() {
    let on_by_default = ResumeLayer::new();
    let off_by_default = ResumeLayer::builder().on_by_default(false).build().unwrap();
    for (layer, choice, resumed) in [
        (&on_by_default, Some(ResumeChoice::Off), false),
        (&off_by_default, None, false),
        (&off_by_default, Some(ResumeChoice::On), true),
    ] {
        let mock = breaking_mock(2, false);
        let svc = layer.layer(mock.clone());
        let mut r = req();
        if let Some(c) = choice {
            r.extensions_mut().insert(c);
        }
        let (_, err, _) = drain(svc.oneshot(r).await.unwrap()).await;
        assert_eq!(err.is_none(), resumed, "{choice:?}");
        assert_eq!(mock.calls(), if resumed { 2 } else { 1 });
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_continuation_gives_the_original_error() {
    let mock = MockChat::new();
    mock.push(
        Script::new()
            .provider("P")
            .token("a ")
            .fail(LlmError::new(ErrorKind::Upstream).with_message("provider went away")),
    );
    mock.push(Script::error(LlmError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
    )));
    let svc = ResumeLayer::new().layer(mock.clone());
    let (_, err, _) = drain(svc.oneshot(req()).await.unwrap()).await;
    let e = err.unwrap();
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert_eq!(e.message(), Some("provider went away"));
}
