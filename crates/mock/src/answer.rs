//! The mock's answers: a pure function of the request, so a test can check that no token is
//! missing, duplicated, reordered or taken from another request.

use std::hash::{Hash, Hasher};

use llm_layers_core::continuation::{ContinueMode, INSTRUCTION_OVERLAP, continued};
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

/// The pieces the mock sends for `body`, one per token: the answer's tokens, or, for a
/// request that continues a prefix of the answer it would give the original conversation
/// ([`llm_layers_core::continuation`]), the rest of that answer: after the delivered text
/// for prefill (its trimmed whitespace sent again, as a provider would), and from
/// [`INSTRUCTION_OVERLAP`] characters before its end for an instruction.
///
/// ```
/// use llm_layers_core::continuation::{ContinueMode, continuation_body};
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_mock::{answer_pieces, expected_answer};
/// let req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let full = expected_answer(req.body(), 4);
/// let cut = &full[..full.len() / 2];
/// let rest: String = answer_pieces(&continuation_body(req.body(), cut, ContinueMode::Prefill), 4).concat();
/// assert_eq!(format!("{}{rest}", cut.trim_end()), full);
/// ```
pub fn answer_pieces(body: &ChatBody, n: u32) -> Vec<String> {
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
        ContinueMode::Instruction => c.delivered.len().saturating_sub(INSTRUCTION_OVERLAP),
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
