//! The seam, as a property: whatever text was delivered (periodic, whitespace-only,
//! multi-byte, emoji, CJK, text that contains its own tail), wherever it broke, and whatever
//! the continuation does (continues exactly, restarts from scratch, paraphrases, repeats more
//! or less than asked, ends with or without a finish reason or usage, arrives in any pieces),
//! the caller's text is exactly the whole answer, or the stream ends with an error after a
//! prefix of it. Never anything else.
//!
//! Half the cases take the upstream's chunks as the leaf does: written as SSE and read back
//! by the stream decoder, so the layer sees chunks read by a learned shape or parsed past
//! the stream's head (not typed), as it does in the gateway.
//!
//! `PROPTEST_CASES` sets the number of cases (default 10,000; about a second).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use llm_layers_core::continuation::{
    ContinueMode, PREFILL_REFUSAL, continued, effective_mode, expected_start,
};
use llm_layers_core::decode::SseChatDecoder;
use llm_layers_core::{ChatRequest, ChatStream, LlmError, Message, StreamChunk};
use llm_layers_mock::{MockChat, Script};
use llm_layers_resume::ResumeLayer;
use proptest::prelude::*;
use tower::{Layer, ServiceExt};

/// What the texts are made of: words, periodic laughter, whitespace runs, accents, emoji,
/// CJK.
const UNITS: &[&str] = &[
    "ha ",
    "ha",
    "the ",
    "fox",
    "jumps ",
    "over",
    " ",
    "  ",
    "\n",
    "\t",
    "é",
    "🦊",
    "言葉",
    "の",
    "a",
    "b",
    ".",
    ",",
    "Once upon a time ",
];

/// How the continuation answers.
#[derive(Debug, Clone, Copy)]
enum Behavior {
    /// As asked: the rest of the answer from where it was told to start.
    Exact,
    /// The whole answer again, from its beginning.
    FromScratch,
    /// Something else.
    Paraphrase,
    /// Starts `n` characters earlier than asked (repeats more).
    RepeatMore(usize),
    /// Starts `n` characters later than asked (repeats less).
    RepeatLess(usize),
}

/// How the continuation ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Finish,
    Nothing,
    UsageOnly,
    FinishAndUsage,
}

fn behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        3 => Just(Behavior::Exact),
        1 => Just(Behavior::FromScratch),
        1 => Just(Behavior::Paraphrase),
        1 => (1usize..8).prop_map(Behavior::RepeatMore),
        1 => (1usize..8).prop_map(Behavior::RepeatLess),
    ]
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        Just(Ending::Finish),
        Just(Ending::Nothing),
        Just(Ending::UsageOnly),
        Just(Ending::FinishAndUsage),
    ]
}

fn tokens() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::collection::vec(prop::sample::select(UNITS), 1..6).prop_map(|u| u.concat()),
        2..14,
    )
}

/// Byte offset `n` characters before (negative) or after `at` in `text`, clamped.
fn shift(text: &str, at: usize, n: isize) -> usize {
    if n < 0 {
        text[..at]
            .char_indices()
            .rev()
            .nth((-n - 1) as usize)
            .map_or(0, |(i, _)| i)
    } else {
        text[at..]
            .char_indices()
            .nth(n as usize)
            .map_or(text.len(), |(i, _)| at + i)
    }
}

/// The continuation's text for a request that sends `sent` (the prefill, or the whole
/// delivered text for an instruction), by `b`.
fn continuation_text(full: &str, sent: &str, mode: ContinueMode, b: Behavior) -> String {
    let start = match mode {
        ContinueMode::Instruction => sent.len() - expected_start(sent, mode).len(),
        _ => sent.len(),
    };
    match b {
        Behavior::Exact => full[start..].to_owned(),
        Behavior::FromScratch => full.to_owned(),
        Behavior::Paraphrase => "Something else entirely, said another way.".to_owned(),
        Behavior::RepeatMore(n) => full[shift(full, start, -(n as isize))..].to_owned(),
        Behavior::RepeatLess(n) => full[shift(full, start, n as isize)..].to_owned(),
    }
}

/// The bytes the decoder reads: events written to it as they come, and whether the
/// stream ended.
#[derive(Clone, Default)]
struct Feed(Arc<Mutex<(VecDeque<Bytes>, bool)>>);

impl http_body::Body for Feed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    // Pending when nothing was written yet: `OverTheWire` polls its source next, which
    // registers the waker.
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut q = llm_layers_core::sync::lock(&self.0);
        match q.0.pop_front() {
            Some(b) => Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            None if q.1 => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// A stream's chunks as the leaf gives them: each written as an SSE event and read back by
/// the stream decoder; an error passes as it is.
struct OverTheWire {
    source: ChatStream,
    feed: Feed,
    decoder: SseChatDecoder<Feed>,
}

impl Stream for OverTheWire {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Poll::Ready(item) = Pin::new(&mut self.decoder).poll_next(cx) {
                return Poll::Ready(item);
            }
            let mut event = b"data: ".to_vec();
            match Pin::new(&mut self.source).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    chunk.write_json(&mut event);
                    event.extend_from_slice(b"\n\n");
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    event.extend_from_slice(b"[DONE]\n\n");
                    llm_layers_core::sync::lock(&self.feed.0).1 = true;
                }
                Poll::Pending => return Poll::Pending,
            }
            llm_layers_core::sync::lock(&self.feed.0)
                .0
                .push_back(Bytes::from(event));
        }
    }
}

fn over_the_wire(stream: ChatStream) -> ChatStream {
    stream.wrap(|source| {
        let feed = Feed::default();
        OverTheWire {
            source,
            decoder: SseChatDecoder::new(feed.clone()),
            feed,
        }
    })
}

/// `text` as a script cut at `cuts` (char boundaries), ended by `ending`.
fn script(text: &str, cuts: &[usize], ending: Ending) -> Script {
    let mut s = Script::new().provider("P");
    let mut at = 0;
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (text.len() + 1))
        .filter(|c| text.is_char_boundary(*c))
        .collect();
    points.sort_unstable();
    points.push(text.len());
    for p in points {
        if p > at {
            s = s.token(&text[at..p]);
            at = p;
        }
    }
    match ending {
        Ending::Finish => s.finish("stop"),
        Ending::Nothing => s,
        Ending::UsageOnly => s.usage(5, 5),
        Ending::FinishAndUsage => s.finish("stop").usage(5, 5),
    }
}

#[derive(Debug, Clone)]
struct Case {
    tokens: Vec<String>,
    broken_after: usize,
    /// 0: prefill (the default), 1: instruction (pinned), 2: prefill refused with a 400.
    mode: u8,
    prefill: Behavior,
    instruction: Behavior,
    ending: Ending,
    cuts: Vec<usize>,
    /// The chunks written as SSE and read back by the decoder, as the leaf gives them.
    wire: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        tokens(),
        any::<prop::sample::Index>(),
        0u8..3,
        behavior(),
        behavior(),
        ending(),
        prop::collection::vec(any::<usize>(), 0..6),
        any::<bool>(),
    )
        .prop_map(
            |(tokens, k, mode, prefill, instruction, ending, cuts, wire)| {
                let broken_after = 1 + k.index(tokens.len() - 1);
                Case {
                    tokens,
                    broken_after,
                    mode,
                    prefill,
                    instruction,
                    ending,
                    cuts,
                    wire,
                }
            },
        )
}

/// Whether a continuation that repeats more or less than asked is, by chance, the very
/// text a correct continuation of another answer would be (periodic text: "ha ha ha"
/// repeated one "ha " more): no seam can tell those apart, so the property does not judge
/// them.
fn indistinguishable(c: &Case, full: &str, delivered: &str) -> bool {
    let modes: &[(ContinueMode, Behavior)] = match c.mode {
        1 => &[(ContinueMode::Instruction, c.instruction)],
        2 => &[(ContinueMode::Instruction, c.instruction)],
        _ => &[
            (ContinueMode::Prefill, c.prefill),
            (ContinueMode::Instruction, c.instruction),
        ],
    };
    modes.iter().any(|&(mode, b)| {
        let mode = effective_mode(delivered, mode);
        let sent = match mode {
            ContinueMode::Instruction => delivered.to_owned(),
            _ => llm_layers_core::continuation::split_for_prefill(delivered)
                .0
                .to_owned(),
        };
        let text = continuation_text(full, &sent, mode, b);
        let expect = expected_start(delivered, mode);
        !matches!(b, Behavior::Exact)
            && text.starts_with(expect)
            && format!("{delivered}{}", &text[expect.len()..]) != full
    })
}

/// Runs one case; `Ok(true)` when the caller got the whole answer, `Ok(false)` when an
/// error after a prefix of it.
fn run(c: &Case) -> Result<bool, TestCaseError> {
    let full: String = c.tokens.concat();
    let delivered: String = c.tokens[..c.broken_after].concat();
    prop_assume!(!indistinguishable(c, &full, &delivered));
    let first = {
        let mut s = Script::new().provider("P");
        for t in &c.tokens[..c.broken_after] {
            s = s.token(t);
        }
        s.fail(LlmError::truncated())
    };
    let case = c.clone();
    let answer = full.clone();
    let mock = MockChat::from_fn(move |r| match continued(r.body()) {
        None => first.clone(),
        Some(k) if k.mode != ContinueMode::Instruction && case.mode == 2 => Script::error(
            LlmError::status(StatusCode::BAD_REQUEST, None).with_message(PREFILL_REFUSAL),
        ),
        Some(k) => {
            let b = match k.mode {
                ContinueMode::Instruction => case.instruction,
                _ => case.prefill,
            };
            let text = continuation_text(&answer, k.delivered, k.mode, b);
            script(&text, &case.cuts, case.ending)
        }
    });
    let mut layer = ResumeLayer::builder().max_resumes(2);
    if c.mode == 1 {
        layer = layer.pin("m", "P", ContinueMode::Instruction);
    }
    let wire = c.wire;
    let mock = tower::ServiceBuilder::new()
        .map_response(move |s: ChatStream| if wire { over_the_wire(s) } else { s })
        .service(mock);
    let svc = layer.build().unwrap().layer(mock);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (text, error, finished_at) = rt.block_on(async move {
        let req = ChatRequest::new("m", vec![Message::user("tell")]);
        let mut s = svc.oneshot(req).await.unwrap();
        let mut text = String::new();
        let mut finished_at = None;
        while let Some(item) = s.next().await {
            match item {
                Ok(chunk) => {
                    text.push_str(chunk.content().unwrap_or(""));
                    if chunk.finish_reason().is_some() {
                        finished_at.get_or_insert(text.clone());
                    }
                }
                Err(e) => return (text, Some(e), finished_at),
            }
        }
        (text, None, finished_at)
    });
    // A finish reason says the answer is whole: never on a part of it.
    if let Some(at) = &finished_at {
        prop_assert_eq!(at, &full, "a finish reason on a part of the answer");
    }
    match error {
        None => {
            prop_assert_eq!(text, full, "no error, so the whole answer");
            Ok(true)
        }
        Some(_) => {
            prop_assert!(
                full.starts_with(&text) && text.len() >= delivered.len(),
                "an error after a prefix of the answer: {:?} of {:?}",
                text,
                full
            );
            Ok(false)
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn the_callers_text_is_the_whole_answer_or_an_error(c in case()) {
        let _whole = run(&c)?;
    }
}

/// The cases the property must cover are drawn: every behaviour succeeds or fails as it
/// should on a plain text (so the property is not passing by skipping everything).
#[test]
fn each_behavior_ends_as_it_should_on_plain_text() {
    let tokens: Vec<String> =
        "Once upon a time there lived a clever red fox in a quiet wood by the river."
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
    let whole = |mode: u8, prefill: Behavior, instruction: Behavior, ending: Ending| {
        let outcomes = [false, true].map(|wire| {
            let c = Case {
                tokens: tokens.clone(),
                broken_after: 6,
                mode,
                prefill,
                instruction,
                ending,
                cuts: vec![3, 11],
                wire,
            };
            run(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"))
        });
        assert_eq!(outcomes[0], outcomes[1], "the same over the wire");
        outcomes[0]
    };
    use Behavior::*;
    for ending in [
        Ending::Finish,
        Ending::Nothing,
        Ending::UsageOnly,
        Ending::FinishAndUsage,
    ] {
        assert!(whole(0, Exact, Paraphrase, ending), "{ending:?}");
        assert!(whole(0, FromScratch, Exact, ending), "{ending:?}");
        assert!(!whole(0, FromScratch, Paraphrase, ending), "{ending:?}");
        assert!(!whole(0, Paraphrase, RepeatLess(1), ending), "{ending:?}");
        assert!(whole(1, Paraphrase, Exact, ending), "{ending:?}");
        assert!(!whole(1, Exact, RepeatMore(3), ending), "{ending:?}");
        assert!(!whole(1, Exact, Paraphrase, ending), "{ending:?}");
        assert!(whole(2, Paraphrase, Exact, ending), "{ending:?}");
        assert!(!whole(2, Exact, RepeatLess(2), ending), "{ending:?}");
    }
}

/// The wire cases draw what they are for: the decoder reads the tokens by their learned
/// shape and the finish and usage past the stream's head, without typing them.
#[test]
fn over_the_wire_the_layer_sees_chunks_the_decoder_did_not_type() {
    let script = script(
        "Once upon a time there lived a fox",
        &[5, 10, 15, 20],
        Ending::FinishAndUsage,
    );
    let mock = MockChat::from_fn(move |_| script.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let chunks: Vec<StreamChunk> = rt.block_on(async move {
        let req = ChatRequest::new("m", vec![Message::user("tell")]);
        let s = mock.oneshot(req).await.unwrap();
        over_the_wire(s).map(|c| c.unwrap()).collect().await
    });
    let untyped = |c: &StreamChunk| c.raw().is_some() && !c.is_parsed();
    let tokens = chunks
        .iter()
        .filter(|c| c.has_output() && untyped(c))
        .count();
    assert!(
        tokens >= 2,
        "tokens read by their shape: {tokens} of {}",
        chunks.len()
    );
    let finish = chunks.iter().find(|c| c.finish_reason().is_some()).unwrap();
    let usage = chunks.iter().find(|c| c.usage().is_some()).unwrap();
    assert!(untyped(finish) && untyped(usage));
}
