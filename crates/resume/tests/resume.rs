//! Mid-stream resume under paused time, over scripted mocks that continue answers as the
//! mock server does (`answer_pieces`).

use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use llm_layers_core::continuation::{
    ContinueMode, PREFILL_REFUSAL, continuation_body, continuation_limit, continued,
    effective_mode, expected_start, split_for_prefill,
};
use llm_layers_core::{
    ChatChunk, ChatRequest, ChatStream, ChunkChoice, Delta, ErrorKind, LlmError, Message,
    StreamChunk, ToolCallDelta,
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
            Some(c) if refuse_prefill && c.mode != ContinueMode::Instruction => Script::error(
                LlmError::status(StatusCode::BAD_REQUEST, None).with_message(PREFILL_REFUSAL),
            ),
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
            // Refused prefill: first try, the 400, the instruction; then learned. A text too
            // short to hold a tail back is asked by instruction at once.
            let delivered: String = answer_pieces(req().body(), N)[..k].concat();
            let prefilled =
                effective_mode(&delivered, ContinueMode::Prefill) == ContinueMode::Prefill;
            let refused = refuse && prefilled;
            let per_answer = if refused { 3 } else { 2 };
            assert_eq!(mock.calls(), 2 * per_answer - usize::from(refused), "k={k}");
            if refused {
                assert_eq!(layer.mode("m", "P"), ContinueMode::Instruction);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_prefill_holds_its_tail_back_and_is_pinned_to_the_provider_that_served() {
    let mock = breaking_mock(3, false);
    let svc = ResumeLayer::new().layer(mock.clone());
    let _ = drain(svc.oneshot(req()).await.unwrap()).await;
    let sent = mock.requests()[1].clone();
    let last = sent.body().messages.last().unwrap();
    let delivered: String = answer_pieces(req().body(), N)[..3].concat();
    let (prefill, held_back) = split_for_prefill(&delivered);
    assert!(held_back.chars().count() >= 16, "{held_back:?}");
    assert_eq!(last.role, "assistant");
    assert_eq!(
        serde_json::to_value(&last.content).unwrap(),
        serde_json::json!(prefill)
    );
    // It asks for what is left of the caller's limit once the chunks it keeps (those wholly
    // in the prefill) are counted: the held-back text costs what its chunks cost.
    let mut end = 0;
    let kept = answer_pieces(req().body(), N)[..3]
        .iter()
        .filter(|p| {
            end += p.len();
            end <= prefill.len()
        })
        .count() as u64;
    assert!(kept < 3, "the held-back tail is written again");
    assert_eq!(sent.body().max_tokens, Some(continuation_limit(N, kept)));
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
    assert!(e.message().unwrap().contains("started elsewhere"), "{e}");
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

/// An instruction pinned for P, and a mock that breaks after `delivered` and continues with
/// `continuation` (a script built by the caller).
fn pinned_instruction(delivered: &str, continuation: Script) -> (MockChat, ChatStream) {
    let mock = MockChat::new();
    mock.push(broken_after(delivered));
    mock.push(continuation);
    let svc = ResumeLayer::builder()
        .pin("m", "P", ContinueMode::Instruction)
        .build()
        .unwrap()
        .layer(mock.clone());
    let fut = svc.oneshot(req());
    let stream = futures_util::FutureExt::now_or_never(fut);
    (
        mock,
        stream
            .map(Result::unwrap)
            .unwrap_or_else(|| panic!("not ready")),
    )
}

/// An instruction continuation that repeats the overlap and little more, then ends without
/// a finish reason, or with only a usage chunk: the text after the overlap reaches the
/// caller (it was dropped, and the stream called complete).
#[tokio::test(start_paused = true)]
async fn the_end_of_a_continuation_never_drops_the_text_it_holds() {
    let delivered = "The quick brown fox jumps over ";
    let again = expected_start(delivered, ContinueMode::Instruction).to_owned();
    for ending in ["none", "usage_only"] {
        let mut c = Script::new()
            .provider("P")
            .token(again.clone())
            .token("the lazy dog.");
        if ending == "usage_only" {
            c = c.usage(10, 5);
        }
        let (_mock, stream) = pinned_instruction(delivered, c);
        let (text, err, _) = drain(stream).await;
        assert!(err.is_none(), "{ending}: {err:?}");
        assert_eq!(
            text, "The quick brown fox jumps over the lazy dog.",
            "{ending}"
        );
    }
    // A continuation that ends before it has written all of the overlap: an error.
    let (_mock, stream) = pinned_instruction(
        delivered,
        Script::new()
            .provider("P")
            .token(&again[..8])
            .finish("stop"),
    );
    let (text, err, finished) = drain(stream).await;
    assert_eq!(text, delivered);
    assert!(!finished);
    assert_eq!(err.unwrap().kind(), ErrorKind::Truncated);
}

/// Periodic text: exactly the overlap asked for is cut, not the longest repeat (which cut
/// new text that looked like the old).
#[tokio::test(start_paused = true)]
async fn periodic_text_loses_nothing_at_the_seam() {
    let delivered = "ha ha ha ha ha ha ha ha ";
    let again = expected_start(delivered, ContinueMode::Instruction).to_owned();
    let (_mock, stream) = pinned_instruction(
        delivered,
        Script::new()
            .provider("P")
            .token(again)
            .token("ha ha ha! That was funny.")
            .finish("stop"),
    );
    let (text, err, _) = drain(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "ha ha ha ha ha ha ha ha ha ha ha! That was funny.");
}

/// A usage chunk before the break and the continuation's: the caller gets one, last, summed
/// over both attempts, `cost` and details included.
#[tokio::test(start_paused = true)]
async fn one_usage_chunk_last_summed_with_its_extras() {
    let usage = |prompt: u64, completion: u64, cost: f64, cached: u64| {
        let mut u: llm_layers_core::Usage = serde_json::from_value(serde_json::json!({
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "cost": cost,
            "prompt_tokens_details": {"cached_tokens": cached}
        }))
        .unwrap();
        u.total_tokens = prompt + completion;
        ChatChunk {
            usage: Some(u),
            ..ChatChunk::default()
        }
    };
    let delivered = "Once upon a time, there lived a fox ";
    let (_, held_back) = split_for_prefill(delivered);
    let mock = MockChat::new();
    mock.push(
        Script::new()
            .provider("P")
            .token(delivered)
            .chunk(usage(11, 3, 0.25, 4))
            .fail(LlmError::truncated()),
    );
    mock.push(
        Script::new()
            .provider("P")
            .token(held_back)
            .token("in a quiet wood.")
            .finish("stop")
            .chunk(usage(20, 6, 0.5, 1)),
    );
    let svc = ResumeLayer::new().layer(mock.clone());
    let mut s = svc.oneshot(req()).await.unwrap();
    let mut usages = Vec::new();
    let mut text = String::new();
    let mut last_was_usage = false;
    while let Some(item) = s.next().await {
        let c = item.unwrap();
        text.push_str(c.content().unwrap_or(""));
        last_was_usage = c.usage.is_some();
        assert!(
            c.usage.is_some()
                || c.content().is_some_and(|t| !t.is_empty())
                || c.choices.iter().any(|ch| ch.finish_reason.is_some()),
            "the held usage chunk, its usage taken off, is not passed on empty: {c:?}"
        );
        usages.extend(c.usage.clone());
    }
    assert_eq!(text, "Once upon a time, there lived a fox in a quiet wood.");
    assert_eq!(usages.len(), 1, "{usages:?}");
    assert!(last_was_usage);
    let u = &usages[0];
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (31, 9, 40)
    );
    assert_eq!(u.extra["cost"], 0.75);
    assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], 5);
}

/// A provider that answers a prefill from scratch (as OpenAI's models do) fails the proof:
/// nothing of its fresh answer reaches the caller, the continuation is asked again by
/// instruction, and the pair learns.
#[tokio::test(start_paused = true)]
async fn a_prefill_answered_from_scratch_is_refused_and_the_pair_learns() {
    let delivered = "Once upon a time, there lived a fox ";
    let full = "Once upon a time, there lived a fox in a quiet wood.";
    let mock = MockChat::from_fn(move |r| match continued(r.body()) {
        None => broken_after(delivered),
        // From scratch: the whole answer again.
        Some(c) if c.mode != ContinueMode::Instruction => answered(&[full]),
        Some(c) => {
            let again = expected_start(c.delivered, ContinueMode::Instruction);
            answered(&[&full[delivered.len() - again.len()..]])
        }
    });
    let layer = ResumeLayer::new();
    let svc = layer.layer(mock.clone());
    let (text, err, finished) = drain(svc.oneshot(req()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert!(finished);
    assert_eq!(text, full, "no fresh answer spliced on");
    assert_eq!(mock.calls(), 3, "the break, the prefill, the instruction");
    assert_eq!(layer.mode("m", "P"), ContinueMode::Instruction);
}

/// Only a 400 about the prefill teaches a pair a mode: a context too long passes as the
/// failure it is (the stream ends with its error) and the pair keeps prefill.
#[tokio::test(start_paused = true)]
async fn only_a_400_about_the_prefill_teaches_a_mode() {
    let delivered = "Once upon a time, there lived a fox ";
    let mock = MockChat::from_fn(move |r| match continued(r.body()) {
        None => broken_after(delivered),
        Some(_) => Script::error(
            LlmError::status(StatusCode::BAD_REQUEST, None)
                .with_message("This model's maximum context length is 8192 tokens"),
        ),
    });
    let layer = ResumeLayer::new();
    let svc = layer.layer(mock.clone());
    let (text, err, _) = drain(svc.oneshot(req()).await.unwrap()).await;
    assert_eq!(text, delivered);
    assert_eq!(
        err.unwrap().kind(),
        ErrorKind::Truncated,
        "the break, as it was"
    );
    assert_eq!(mock.calls(), 2);
    assert_eq!(layer.mode("m", "P"), ContinueMode::Prefill);
}

/// A non-content delta that arrives while the seam holds (an annotation, say) reaches the
/// caller; only the text written again is dropped.
#[tokio::test(start_paused = true)]
async fn no_delta_but_the_overlap_is_dropped_while_the_seam_holds() {
    let delivered = "Once upon a time, there lived a fox ";
    let (_, held_back) = split_for_prefill(delivered);
    let mut annotated = ChatChunk {
        choices: vec![ChunkChoice {
            delta: Delta {
                content: Some(held_back[..4].to_owned()),
                ..Delta::default()
            },
            ..ChunkChoice::default()
        }],
        ..ChatChunk::default()
    };
    annotated.choices[0].delta.extra.insert(
        "annotations".into(),
        serde_json::json!([{"type": "url_citation"}]),
    );
    let mock = MockChat::new();
    mock.push(broken_after(delivered));
    mock.push(
        Script::new()
            .provider("P")
            .chunk(annotated)
            .token(&held_back[4..])
            .token("in a quiet wood.")
            .finish("stop"),
    );
    let svc = ResumeLayer::new().layer(mock.clone());
    let mut s = svc.oneshot(req()).await.unwrap();
    let (mut text, mut annotations) = (String::new(), 0);
    while let Some(item) = s.next().await {
        let c = item.unwrap();
        text.push_str(c.content().unwrap_or(""));
        annotations += c
            .choices
            .iter()
            .filter(|ch| ch.delta.extra.contains_key("annotations"))
            .count();
    }
    assert_eq!(text, "Once upon a time, there lived a fox in a quiet wood.");
    assert_eq!(annotations, 1);
}

/// A continuation asks for at most what is left of the caller's limit: a stream cut after
/// its last token asks for the text it must write again and nothing more, and gets its end.
#[tokio::test(start_paused = true)]
async fn a_continuation_never_asks_past_the_callers_limit() {
    let words: Vec<String> = (0..N).map(|i| format!("word{i} ")).collect();
    let delivered = words.concat();
    let (_, held_back) = split_for_prefill(&delivered);
    let mock = MockChat::new();
    let mut s = Script::new().provider("P");
    for w in &words {
        s = s.token(w);
    }
    mock.push(s.fail(LlmError::truncated()));
    mock.push(answered(&[held_back]));
    let svc = ResumeLayer::new().layer(mock.clone());
    let (text, err, finished) = drain(svc.oneshot(req()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert!(finished);
    assert_eq!(text, delivered);
    let asked = mock.requests()[1].body().max_tokens;
    // Exactly the chunks the held-back text came in.
    let again = held_back.split_inclusive(' ').count() as u32;
    assert_eq!(asked, Some(again), "{held_back:?}");
    assert_eq!(asked, Some(continuation_limit(N, u64::from(N - again))));
}

/// The resume outcomes counted so far, by outcome.
fn outcomes(rec: &metrics_util::debugging::DebuggingRecorder) -> Vec<(String, u64)> {
    use metrics_util::debugging::DebugValue;
    let mut out: Vec<_> = rec
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == llm_layers_resume::RESUMES)
        .filter_map(|(k, _, _, v)| {
            let outcome = k.key().labels().find(|l| l.key() == "outcome")?;
            let DebugValue::Counter(n) = v else {
                return None;
            };
            Some((outcome.value().to_owned(), n))
        })
        .collect();
    out.sort();
    out
}

/// What may not be resumed: a break that is the caller's (a 400, a cancel), one past the
/// call's deadline, one the budget cannot pay for; each counted by why. A deadline still
/// ahead and a budget that pays resume.
#[tokio::test(start_paused = true)]
async fn what_may_not_be_resumed_ends_with_its_error_and_is_counted() {
    use std::sync::Arc;
    use tower::retry::budget::Budget;
    let rec = metrics_util::debugging::DebuggingRecorder::new();
    let _g = metrics::set_default_local_recorder(&rec);
    let breaking_with = |e: LlmError| {
        let mock = MockChat::new();
        mock.push(Script::new().provider("P").token("a ").fail(e));
        mock.push(answered(&["b"]));
        mock
    };
    for kind in [ErrorKind::BadRequest, ErrorKind::Cancelled] {
        let mock = breaking_with(LlmError::new(kind));
        let s = ResumeLayer::new().layer(mock.clone()).oneshot(req()).await;
        let (_, err, _) = drain(s.unwrap()).await;
        assert_eq!(err.unwrap().kind(), kind);
        assert_eq!(mock.calls(), 1, "{kind:?} is not resumed");
    }
    // The deadline: passed by the time of the break, or still ahead.
    for (ahead, resumed) in [(MS, false), (MS * 1000, true)] {
        // Breaks about 30 ms in.
        let mock = breaking_mock(2, false);
        let mut r = req();
        r.tighten_deadline(tokio::time::Instant::now() + ahead);
        let s = ResumeLayer::new().layer(mock.clone()).oneshot(r).await;
        let (_, err, _) = drain(s.unwrap()).await;
        assert_eq!(err.is_none(), resumed, "deadline {ahead:?}");
        assert_eq!(mock.calls(), if resumed { 2 } else { 1 });
    }
    // The budget: one that pays, then one spent.
    /// Pays for one extra request.
    struct One(std::sync::atomic::AtomicBool);
    impl Budget for One {
        fn deposit(&self) {}
        fn withdraw(&self) -> bool {
            !self.0.swap(true, std::sync::atomic::Ordering::SeqCst)
        }
    }
    let budget = Arc::new(One(Default::default()));
    let layer = ResumeLayer::builder()
        .budget(budget.clone())
        .build()
        .unwrap();
    for resumed in [true, false] {
        let mock = breaking_mock(2, false);
        let (_, err, _) = drain(layer.layer(mock.clone()).oneshot(req()).await.unwrap()).await;
        assert_eq!(err.is_none(), resumed);
        if !resumed {
            assert!(!budget.withdraw(), "the budget was spent");
        }
    }
    let counted = outcomes(&rec);
    for why in ["deadline", "no_budget"] {
        assert!(
            counted.iter().any(|(o, n)| o == why && *n == 1),
            "{why}: {counted:?}"
        );
    }
}

/// A prefill answered from scratch was an upstream call too: its estimate (the prompt, the
/// text delivered before it, what it wrote) is in the summed usage, beside the broken
/// attempt's and what the joined continuation reported.
#[tokio::test(start_paused = true)]
async fn a_continuation_that_fell_back_is_counted_in_the_usage() {
    let delivered = "Once upon a time, there lived a fox ";
    let full = "Once upon a time, there lived a fox in a quiet wood.";
    let mock = MockChat::from_fn(move |r| match continued(r.body()) {
        None => broken_after(delivered),
        // From scratch, and slow after its first token: cut at once, not read to its end.
        Some(c) if c.mode != ContinueMode::Instruction => Script::new()
            .provider("P")
            .token(full)
            .wait(Duration::from_secs(60))
            .finish("stop"),
        Some(c) => {
            let again = expected_start(c.delivered, ContinueMode::Instruction);
            Script::new()
                .provider("P")
                .token(&full[delivered.len() - again.len()..])
                .finish("stop")
                .usage(100, 8)
        }
    });
    let svc = ResumeLayer::new().layer(mock.clone());
    let t0 = tokio::time::Instant::now();
    let done = svc.oneshot(req()).await.unwrap().collect().await.unwrap();
    assert!(
        tokio::time::Instant::now() - t0 < Duration::from_secs(1),
        "cut at once"
    );
    let usage = done.usage.unwrap();
    let prompt = req().body().approx_prompt_tokens();
    // The prompt the prefill that fell back was sent: the caller's, with the text delivered.
    let prefill = ResumeLayer::new().mode(req().model(), "P");
    let fell_back_prompt =
        continuation_body(req().body(), delivered, prefill).approx_prompt_tokens();
    assert!(fell_back_prompt > prompt);
    // Reported (100, 8); the broken attempt: its prompt and its one chunk; the one that
    // fell back: the prompt it was sent and all it wrote, a token per 4 bytes.
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens),
        (
            100 + prompt + fell_back_prompt,
            8 + 1 + (full.len() as u64).div_ceil(4)
        )
    );
    assert_eq!(mock.calls(), 3);
}

/// The caller sees one answer: the first attempt's role chunk, then text; a continuation's
/// own role chunk (and anything else that says nothing once its role is taken off) is not
/// passed on.
#[tokio::test(start_paused = true)]
async fn a_resumed_answer_has_one_role_and_no_empty_chunks() {
    let mock = breaking_mock(2, false);
    let s = ResumeLayer::new()
        .layer(mock.clone())
        .oneshot(req())
        .await
        .unwrap();
    let chunks: Vec<StreamChunk> = s.map(Result::unwrap).collect().await;
    assert_eq!(mock.calls(), 2, "resumed once");
    assert_eq!(
        chunks[0].choices[0].delta.role.as_deref(),
        Some("assistant")
    );
    for c in &chunks[1..] {
        assert!(c.choices.iter().all(|ch| ch.delta.role.is_none()), "{c:?}");
        let says = c.usage.is_some()
            || c.choices.iter().any(|ch| {
                ch.finish_reason.is_some()
                    || ch.delta.content.as_deref().is_some_and(|t| !t.is_empty())
            });
        assert!(says, "an empty chunk reached the caller: {c:?}");
    }
}

/// An instruction continuation that ends before writing all of the overlap it was asked to
/// repeat is not asked again the same way: the stream ends with an error after two calls.
#[tokio::test(start_paused = true)]
async fn an_instruction_continuation_that_ends_inside_its_overlap_is_not_asked_again() {
    let mock = MockChat::new();
    mock.push(broken_after("The quick brown fox jumps "));
    // Asked to repeat "brown fox jumps " (16 characters), it writes part and stops.
    mock.push(Script::new().provider("P").token("brown fox"));
    mock.push(answered(&["brown fox jumps over the lazy dog."]));
    let svc = ResumeLayer::builder()
        .pin("m", "P", ContinueMode::Instruction)
        .build()
        .unwrap()
        .layer(mock.clone());
    let (text, err, _) = drain(svc.oneshot(req()).await.unwrap()).await;
    assert_eq!(text, "The quick brown fox jumps ");
    assert_eq!(err.unwrap().kind(), ErrorKind::Truncated);
    assert_eq!(mock.calls(), 2);
}

/// A usage chunk that also carries text, held when the stream breaks: its text still reaches
/// the caller. And a stream that is never resumed passes its usage as the upstream sent it.
#[tokio::test(start_paused = true)]
async fn held_text_is_kept_and_an_unresumed_usage_is_untouched() {
    let delivered = "Once upon a time, there lived a ";
    let mut last = ChatChunk {
        choices: vec![ChunkChoice {
            delta: Delta {
                content: Some("fox ".into()),
                ..Default::default()
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    last.usage = Some(llm_layers_core::Usage {
        prompt_tokens: 11,
        completion_tokens: 3,
        total_tokens: 14,
        ..Default::default()
    });
    let (_, held_back) = split_for_prefill("Once upon a time, there lived a fox ");
    let mock = MockChat::new();
    mock.push(
        Script::new()
            .provider("P")
            .token(delivered)
            .chunk(last)
            .fail(LlmError::truncated()),
    );
    mock.push(answered(&[held_back, "in a quiet wood."]));
    let (text, err, _) = drain(ResumeLayer::new().layer(mock).oneshot(req()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "Once upon a time, there lived a fox in a quiet wood.");

    // Not resumed: a total the upstream counted its own way stays as sent.
    let mut odd = llm_layers_core::Usage {
        prompt_tokens: 1,
        completion_tokens: 2,
        ..Default::default()
    };
    odd.total_tokens = 999;
    let mock = MockChat::with_default(
        Script::new()
            .provider("P")
            .token("hi")
            .finish("stop")
            .chunk(ChatChunk {
                usage: Some(odd),
                ..Default::default()
            }),
    );
    let done = ResumeLayer::new()
        .layer(mock)
        .oneshot(req())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(done.usage.unwrap().total_tokens, 999);
}
