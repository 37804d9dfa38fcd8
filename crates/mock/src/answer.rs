//! The mock's answers: a pure function of the request, so a test can check that no token is
//! missing, duplicated, reordered or taken from another request.

use std::hash::{Hash, Hasher};

use llm_layers_core::continuation::{
    ContinueMode, continued, expected_start, original_limit, split_for_prefill,
};
use llm_layers_core::{ChatBody, Content, Message};

/// A short tag derived from the request's messages (8 hex digits).
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

/// Token `i` of the answer to a request with tag `tag`: `"{tag}-{i} "`.
pub fn answer_token(tag: &str, i: u32) -> String {
    format!("{tag}-{i} ")
}

/// The whole answer of `n` tokens to `body`.
///
/// ```
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_mock::{answer_tag, expected_answer};
/// let req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let tag = answer_tag(req.body());
/// assert_eq!(expected_answer(req.body(), 2), format!("{tag}-0 {tag}-1 "));
/// ```
pub fn expected_answer(body: &ChatBody, n: u32) -> String {
    let tag = answer_tag(body);
    (0..n).map(|i| answer_token(&tag, i)).collect()
}

/// How many tokens the whole answer has that `body` asks for, when its own output limit is
/// `limit`: `limit` itself, or for a continuation, the caller's limit it was made from
/// ([`original_limit`]): the tokens it says were delivered (found by matching the text it
/// sends against the whole answer), less the text it must write again.
///
/// ```
/// use llm_layers_core::continuation::{ContinueMode, continuation_body, continuation_limit, expected_start};
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_mock::{expected_answer, whole_answer_tokens};
/// let req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let full = expected_answer(req.body(), 10);
/// let delivered = &full[..full.len() * 4 / 10]; // four of ten tokens
/// for mode in [ContinueMode::Prefill, ContinueMode::Instruction] {
///     let mut body = continuation_body(req.body(), delivered, mode);
///     let limit = continuation_limit(10, 4, expected_start(delivered, mode));
///     body.max_tokens = Some(limit);
///     assert_eq!(whole_answer_tokens(&body, limit), 10);
/// }
/// ```
pub fn whole_answer_tokens(body: &ChatBody, limit: u32) -> u32 {
    let Some(c) = continued(body).filter(|_| body.max_output_tokens().is_some()) else {
        return limit;
    };
    let tag = tag_of(c.original);
    let mut delivered = String::new();
    for k in 1..=u64::from(limit) + 4096 {
        delivered.push_str(&answer_token(&tag, (k - 1) as u32));
        let found = match c.mode {
            ContinueMode::Instruction => delivered == c.delivered,
            _ => split_for_prefill(&delivered).0 == c.delivered,
        };
        if found {
            return original_limit(limit, k, expected_start(&delivered, c.mode));
        }
        if delivered.len() > c.delivered.len() + 4096 {
            break;
        }
    }
    limit
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
