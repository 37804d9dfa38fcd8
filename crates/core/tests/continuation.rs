//! The continuation helpers resume relies on: names, what a prefill refusal looks like, where
//! a continuation joins and how much it keeps.

use http::StatusCode;
use llm_layers_core::continuation::{
    ContinueMode, expected_start, is_prefill_refusal, kept_len, split_for_prefill,
};
use llm_layers_core::{ApiError, LlmError};

#[test]
fn modes_have_stable_names() {
    assert_eq!(ContinueMode::Prefill.as_str(), "prefill");
    assert_eq!(ContinueMode::Prefix.as_str(), "prefix");
    assert_eq!(ContinueMode::Instruction.as_str(), "instruction");
}

#[test]
fn a_prefill_refusal_is_a_400_that_says_so() {
    let bad = |m: &str| LlmError::status(StatusCode::BAD_REQUEST, None).with_message(m);
    for refusal in [
        "This model does not support assistant message prefill",
        "Conversation must end with a user message",
        "the assistant message must not be the final message",
        "An assistant turn cannot be the last message",
    ] {
        assert!(is_prefill_refusal(&bad(refusal)), "{refusal}");
    }
    for other in [
        "context length exceeded",
        "the assistant is not available",
        "final answer too long",
    ] {
        assert!(!is_prefill_refusal(&bad(other)), "{other}");
    }
    // Said in the upstream's error body rather than our message: the same.
    let mut api = ApiError::default();
    api.message = Some("prefill is not supported".into());
    assert!(is_prefill_refusal(&LlmError::status(
        StatusCode::BAD_REQUEST,
        Some(api.clone())
    )));
    // Not a 400: not a refusal, whatever it says.
    assert!(!is_prefill_refusal(&LlmError::status(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(api)
    )));
}

#[test]
fn a_prefill_is_cut_after_a_wide_space_too() {
    // The held-back tail starts mid-word: the cut moves back to after the ideographic
    // space (three bytes) before the word.
    let d = "これは長い文章です\u{3000}thequickbrownfoxjumps";
    assert_eq!(
        split_for_prefill(d),
        ("これは長い文章です", "\u{3000}thequickbrownfoxjumps")
    );
}

#[test]
fn an_instruction_joins_exactly_its_overlap_and_a_prefill_at_a_word() {
    let d = "The quick brown fox jumps over the";
    let last16: String = {
        let mut c: Vec<char> = d.chars().rev().take(16).collect();
        c.reverse();
        c.into_iter().collect()
    };
    assert_eq!(expected_start(d, ContinueMode::Instruction), last16);
    assert_eq!(
        expected_start(d, ContinueMode::Prefill),
        " fox jumps over the"
    );
    assert_eq!(kept_len(d, ContinueMode::Instruction), d.len() - 16);
    assert_eq!(kept_len(d, ContinueMode::Prefill), "The quick brown".len());
}

#[test]
fn kept_chunks_are_counted_exactly_when_remembered_and_estimated_beyond() {
    use llm_layers_core::continuation::ChunkEnds;
    let mut ends = ChunkEnds::default();
    // Chunk k ends at 4 (k + 1).
    for k in 0..40 {
        ends.push(4 * (k + 1));
    }
    assert_eq!(ends.count(), 40);
    // Within the last 32 ends remembered: exact.
    assert_eq!(ends.kept(160), 40);
    assert_eq!(ends.kept(159), 39, "the last chunk is written again");
    assert_eq!(ends.kept(40), 10);
    // Further back (before chunk 8's end, the oldest remembered, at 36): the 8 chunks not
    // remembered, less a token per 4 bytes from the cut to 36, and one more.
    assert_eq!(ends.kept(20), 8 - ((36 - 20) / 4 + 1));
    assert_eq!(ends.kept(0), 0);
    // Few chunks, all remembered: a cut before the first keeps none.
    let mut few = ChunkEnds::default();
    few.push(5);
    few.push(9);
    assert_eq!(few.kept(4), 0);
    assert_eq!(few.kept(5), 1);
}

#[test]
fn only_a_continuation_body_reads_as_one() {
    use llm_layers_core::continuation::{continuation_body, continued};
    use llm_layers_core::{ChatRequest, Message};
    let original = ChatRequest::new("m", vec![Message::user("tell me a story")]);
    assert!(continued(original.body()).is_none(), "an ordinary request");
    let mut turns = original.body().clone();
    turns
        .messages
        .push(Message::new("assistant", "Once upon a time."));
    turns.messages.push(Message::user("and then?"));
    assert!(continued(&turns).is_none(), "a conversation that goes on");
    let delivered = "Once upon a time, in a land far away";
    for mode in [ContinueMode::Prefill, ContinueMode::Instruction] {
        let body = continuation_body(original.body(), delivered, mode);
        let c = continued(&body).expect("a continuation");
        assert_eq!(c.mode, mode);
        assert_eq!(c.original.len(), 1);
    }
    // An assistant message that calls tools is a turn of its own, not a partial answer.
    let mut body = continuation_body(original.body(), delivered, ContinueMode::Prefill);
    let last = body.messages.last_mut().unwrap();
    last.tool_calls = Some(vec![]);
    assert!(continued(&body).is_none());
}

#[test]
fn an_overlap_of_nothing_proves_nothing() {
    use llm_layers_core::continuation::overlap;
    assert_eq!(
        overlap("abc", "xyz", 0),
        None,
        "no overlap, even with no minimum"
    );
    assert_eq!(
        overlap("", "xyz", 0),
        Some(0),
        "nothing delivered: nothing to repeat"
    );
    assert_eq!(overlap("abc", "cde", 0), Some(1));
}
