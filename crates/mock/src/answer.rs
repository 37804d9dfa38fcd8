//! The mock's answers: a pure function of the request, so a test can check that no token is
//! missing, duplicated, reordered or taken from another request.

use std::hash::{Hash, Hasher};

use llm_layers_core::{ChatBody, Content};

/// A short tag derived from the request's messages (8 hex digits).
pub fn answer_tag(body: &ChatBody) -> String {
    let mut h = std::hash::DefaultHasher::new();
    for m in &body.messages {
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
