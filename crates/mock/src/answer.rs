//! The mock's answers: a pure function of the request, so a test can check that no token is
//! missing, duplicated, reordered or taken from another request.

use std::hash::{Hash, Hasher};

use llm_layers_core::continuation::{
    ContinueMode, continued, expected_start, kept_len, original_limit,
};
use llm_layers_core::{ChatBody, Content, Message};

/// A short tag derived from the request's messages (8 hex digits): where in [`PASSAGE`] its
/// answer starts.
pub fn answer_tag(body: &ChatBody) -> String {
    tag_of(&body.messages)
}

fn tag_of(messages: &[Message]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    for m in messages {
        m.role.hash(&mut h);
        match &m.content {
            Some(Content::Text(s)) => s.hash(&mut h),
            Some(Content::Parts(p)) => serde_json::to_string(p).unwrap_or_default().hash(&mut h),
            None => {}
        }
    }
    format!("{:08x}", h.finish() as u32)
}

/// Token `i` of the answer to a request with tag `tag`: a word of [`PASSAGE`] and a space.
pub fn answer_token(tag: &str, i: u32) -> String {
    let start = u32::from_str_radix(tag, 16).unwrap_or(0) as usize;
    let word = PASSAGE[(start + i as usize) % PASSAGE.len()];
    let mut t = String::with_capacity(word.len() + 1);
    t.push_str(word);
    t.push(' ');
    t
}

/// The words the mock answers with, one per token: each conversation starts at its own
/// place ([`answer_tag`]) and reads on, from the beginning again when it runs out. An answer
/// reads as words yet is checkable token by token from outside: its tokens are consecutive
/// words of this passage (`GET /_mock/words` serves it to a bench in another process).
pub const PASSAGE: &[&str] = &[
    "This",
    "answer",
    "comes",
    "from",
    "the",
    "llm-layers",
    "mock",
    "upstream,",
    "which",
    "writes",
    "the",
    "same",
    "words",
    "for",
    "the",
    "same",
    "conversation",
    "every",
    "time,",
    "so",
    "a",
    "test",
    "can",
    "check",
    "each",
    "token",
    "it",
    "receives:",
    "none",
    "missing,",
    "none",
    "repeated,",
    "none",
    "out",
    "of",
    "order",
    "and",
    "none",
    "borrowed",
    "from",
    "another",
    "call.",
    "Each",
    "conversation",
    "starts",
    "at",
    "its",
    "own",
    "place",
    "in",
    "this",
    "passage",
    "and",
    "reads",
    "on",
    "from",
    "there,",
    "back",
    "to",
    "the",
    "beginning",
    "when",
    "it",
    "runs",
    "out.",
    "The",
    "mock",
    "can",
    "be",
    "slow,",
    "fast",
    "or",
    "rude",
    "on",
    "purpose:",
    "it",
    "queues",
    "a",
    "first",
    "token",
    "behind",
    "a",
    "long",
    "tail,",
    "throttles",
    "with",
    "Retry-After,",
    "drops",
    "the",
    "connection",
    "halfway,",
    "hangs",
    "after",
    "the",
    "headers,",
    "answers",
    "a",
    "prefill",
    "from",
    "scratch,",
    "sends",
    "garbage",
    "between",
    "events",
    "and",
    "ends",
    "streams",
    "without",
    "a",
    "finish",
    "reason.",
    "Every",
    "layer",
    "of",
    "the",
    "stack",
    "is",
    "measured",
    "against",
    "it:",
    "retries",
    "with",
    "jittered",
    "backoff",
    "and",
    "a",
    "budget,",
    "hedges",
    "that",
    "race",
    "a",
    "second",
    "provider",
    "when",
    "an",
    "answer",
    "is",
    "late,",
    "breakers",
    "that",
    "hold",
    "a",
    "provider",
    "that",
    "keeps",
    "failing,",
    "rate",
    "limits",
    "for",
    "requests",
    "and",
    "tokens,",
    "timeouts",
    "for",
    "connecting,",
    "waiting,",
    "stalling",
    "and",
    "the",
    "whole",
    "call,",
    "and",
    "resume,",
    "which",
    "continues",
    "a",
    "broken",
    "stream",
    "where",
    "it",
    "stopped.",
    "Point",
    "the",
    "gateway",
    "at",
    "a",
    "real",
    "upstream",
    "with",
    "an",
    "API",
    "key",
    "and",
    "these",
    "words",
    "give",
    "way",
    "to",
    "a",
    "model's",
    "own.",
];

/// The whole answer of `n` tokens to `body`.
///
/// ```
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_mock::{answer_tag, expected_answer};
/// let req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let tag = answer_tag(req.body());
/// let answer = expected_answer(req.body(), 2);
/// assert_eq!(answer.split(' ').count(), 3, "two words, each with its space: {answer:?}");
/// assert!(answer.starts_with(&llm_layers_mock::answer_token(&tag, 0)));
/// ```
pub fn expected_answer(body: &ChatBody, n: u32) -> String {
    let tag = answer_tag(body);
    (0..n).map(|i| answer_token(&tag, i)).collect()
}

/// How many tokens the whole answer has that `body` asks for, when its own output limit is
/// `limit`: `limit` itself, or for a continuation, the caller's limit it was made from
/// ([`original_limit`]): its limit and the tokens it keeps (those that end where it joins,
/// or before), found by laying the text it sends over the whole answer.
///
/// ```
/// use llm_layers_core::continuation::{ChunkEnds, ContinueMode, continuation_body, continuation_limit, kept_len};
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_mock::{answer_pieces, expected_answer, whole_answer_tokens};
/// let req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let mut delivered = String::new();
/// let mut ends = ChunkEnds::default();
/// for piece in answer_pieces(req.body(), 10).iter().take(4) {
///     delivered.push_str(piece);
///     ends.push(delivered.len());
/// }
/// for mode in [ContinueMode::Prefill, ContinueMode::Instruction] {
///     let mut body = continuation_body(req.body(), &delivered, mode);
///     let limit = continuation_limit(10, ends.kept(kept_len(&delivered, mode)));
///     body.max_tokens = Some(limit);
///     assert_eq!(whole_answer_tokens(&body, limit), 10);
/// }
/// ```
pub fn whole_answer_tokens(body: &ChatBody, limit: u32) -> u32 {
    let Some(c) = continued(body).filter(|_| body.max_output_tokens().is_some()) else {
        return limit;
    };
    let tag = tag_of(c.original);
    // A prefill is what is kept; an instruction sends everything and joins its last
    // characters.
    let cut = match c.mode {
        ContinueMode::Instruction => kept_len(c.delivered, ContinueMode::Instruction),
        _ => c.delivered.len(),
    };
    let mut text = String::new();
    let mut kept = 0;
    for i in 0.. {
        if text.len() >= c.delivered.len() {
            break;
        }
        text.push_str(&answer_token(&tag, i));
        if text.len() <= cut {
            kept += 1;
        }
    }
    if !text.starts_with(c.delivered) {
        return limit;
    }
    original_limit(limit, kept)
}

/// The pieces the mock sends for `body`, one per token: the answer's tokens, or, for a
/// request that continues a prefix of the answer it would give the original conversation
/// ([`llm_layers_core::continuation`]), the rest of that answer: after the delivered text
/// the prefill (which held back the delivered text's tail: that is sent again first), and
/// from [`INSTRUCTION_OVERLAP`](llm_layers_core::continuation::INSTRUCTION_OVERLAP)
/// characters before its end for an instruction.
///
/// ```
/// use llm_layers_core::continuation::{ContinueMode, continuation_body, split_for_prefill};
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_mock::{answer_pieces, expected_answer};
/// let req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let full = expected_answer(req.body(), 8);
/// let cut = &full[..full.len() / 2];
/// let (prefill, held_back) = split_for_prefill(cut);
/// let rest: String = answer_pieces(&continuation_body(req.body(), cut, ContinueMode::Prefill), 8).concat();
/// assert!(rest.starts_with(held_back));
/// assert_eq!(format!("{prefill}{rest}"), full);
/// ```
pub fn answer_pieces(body: &ChatBody, n: u32) -> Vec<String> {
    answer_pieces_as(body, n, false)
}

/// [`answer_pieces`], by a provider that answers a prefill from scratch when
/// `prefill_from_scratch` (it reads the partial assistant message as a finished turn and
/// gives the whole answer to the original conversation again).
pub fn answer_pieces_as(body: &ChatBody, n: u32, prefill_from_scratch: bool) -> Vec<String> {
    let own = || {
        let tag = answer_tag(body);
        (0..n).map(|i| answer_token(&tag, i)).collect()
    };
    let Some(c) = continued(body) else {
        return own();
    };
    let tag = tag_of(c.original);
    let tokens: Vec<String> = (0..n).map(|i| answer_token(&tag, i)).collect();
    let full: String = tokens.concat();
    if !full.starts_with(c.delivered) {
        return own();
    }
    let from = match c.mode {
        // The last characters of the delivered text, repeated as asked.
        ContinueMode::Instruction => {
            c.delivered.len() - expected_start(c.delivered, ContinueMode::Instruction).len()
        }
        _ if prefill_from_scratch => 0,
        _ => c.delivered.len(),
    };
    let mut pieces = Vec::new();
    let mut start = 0;
    for t in tokens {
        let end = start + t.len();
        if end > from {
            pieces.push(full[start.max(from)..end].to_owned());
        }
        start = end;
    }
    pieces
}
