//! Continuing an answer that broke after its first token: the request that asks for the rest
//! ([`continuation_body`]), and how an upstream reads one ([`continued`]). The resume layer
//! builds them; the mock answers them; both through these two functions, so they cannot
//! drift apart.

use serde_json::Value;

use crate::{ChatBody, Content, Message};

/// How a provider is asked to continue a partial assistant answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContinueMode {
    /// The last message is the partial assistant text (trailing whitespace trimmed): the
    /// provider continues it. OpenRouter documents it; older Claude models and many
    /// open-weight hosts honour it.
    Prefill,
    /// As `Prefill`, with `"prefix": true` on that message (DeepSeek's and Mistral's flag).
    Prefix,
    /// The partial text as a finished assistant turn, then a user message asking to go on
    /// exactly, starting with its last [`INSTRUCTION_OVERLAP`] characters repeated: for
    /// providers that refuse prefill (recent Claude models answer 400) or read a trailing
    /// assistant message as a finished turn (OpenAI).
    Instruction,
}

impl ContinueMode {
    /// A short, stable name, fit for a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ContinueMode::Prefill => "prefill",
            ContinueMode::Prefix => "prefix",
            ContinueMode::Instruction => "instruction",
        }
    }
}

/// How many characters of the delivered text an [`Instruction`](ContinueMode::Instruction)
/// continuation must repeat first: the overlap that proves where it joins.
pub const INSTRUCTION_OVERLAP: usize = 16;

/// The user message of an [`Instruction`](ContinueMode::Instruction) continuation.
pub const CONTINUE_INSTRUCTION: &str = "Your previous message was cut off. Continue it from \
exactly where it stopped: begin your reply with the last 16 characters of that message, \
repeated verbatim, then go on with the rest. Write nothing else.";

/// The request for the rest of an answer to `original` of which `delivered` was received.
///
/// ```
/// use llm_layers_core::continuation::{ContinueMode, continuation_body, continued};
/// use llm_layers_core::{ChatRequest, Message};
/// let req = ChatRequest::new("m", vec![Message::user("count")]);
/// let body = continuation_body(req.body(), "one two ", ContinueMode::Prefill);
/// let c = continued(&body).ok_or("not a continuation")?;
/// assert_eq!((c.delivered, c.mode, c.original.len()), ("one two", ContinueMode::Prefill, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn continuation_body(original: &ChatBody, delivered: &str, mode: ContinueMode) -> ChatBody {
    let mut body = original.clone();
    match mode {
        ContinueMode::Prefill => body
            .messages
            .push(Message::new("assistant", delivered.trim_end())),
        ContinueMode::Prefix => {
            let mut m = Message::new("assistant", delivered.trim_end());
            m.extra.insert("prefix".into(), Value::Bool(true));
            body.messages.push(m);
        }
        ContinueMode::Instruction => {
            body.messages.push(Message::new("assistant", delivered));
            body.messages.push(Message::user(CONTINUE_INSTRUCTION));
        }
    }
    body
}

/// A continuation request, read back: the conversation it continues, the text it says was
/// delivered (trimmed, for prefill modes), and how it asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Continued<'a> {
    /// The messages of the original request.
    pub original: &'a [Message],
    /// The partial answer as sent.
    pub delivered: &'a str,
    /// How it asks for the rest.
    pub mode: ContinueMode,
}

fn text(m: &Message) -> Option<&str> {
    match &m.content {
        Some(Content::Text(s)) => Some(s),
        _ => None,
    }
}

/// Whether `body` asks to continue a partial answer, and how.
pub fn continued(body: &ChatBody) -> Option<Continued<'_>> {
    let ms = &body.messages;
    let (last, rest) = ms.split_last()?;
    if last.role == "assistant" && last.tool_calls.is_none() {
        let prefix = last.extra.get("prefix") == Some(&Value::Bool(true));
        return Some(Continued {
            original: rest,
            delivered: text(last)?,
            mode: if prefix {
                ContinueMode::Prefix
            } else {
                ContinueMode::Prefill
            },
        });
    }
    if last.role == "user" && text(last) == Some(CONTINUE_INSTRUCTION) {
        let (partial, original) = rest.split_last()?;
        if partial.role == "assistant" {
            return Some(Continued {
                original,
                delivered: text(partial)?,
                mode: ContinueMode::Instruction,
            });
        }
    }
    None
}

/// The length of the longest overlap between the end of `delivered` and the start of
/// `continuation` of at least `min` bytes (or all of `delivered`, when shorter), on char
/// boundaries; `None` when there is none: the seam cannot be proven.
///
/// ```
/// use llm_layers_core::continuation::overlap;
/// assert_eq!(overlap("the quick brown", "brown fox", 5), Some(5));
/// assert_eq!(overlap("the quick brown", "fox", 3), None);
/// assert_eq!(overlap("ab", "ab cd", 16), Some(2)); // all of a short delivered text
/// ```
pub fn overlap(delivered: &str, continuation: &str, min: usize) -> Option<usize> {
    let need = min.min(delivered.len());
    let most = delivered.len().min(continuation.len());
    (need..=most)
        .rev()
        .filter(|&k| continuation.is_char_boundary(k))
        .find(|&k| delivered.ends_with(&continuation[..k]))
        .filter(|&k| k > 0 || delivered.is_empty())
}
