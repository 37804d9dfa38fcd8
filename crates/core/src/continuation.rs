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

/// How many characters of the delivered text, at least, are held back from a prefill: the
/// continuation must write them again before any new text, which proves it continued the
/// prefill rather than starting a new answer.
pub const HELD_BACK: usize = 16;

/// The message of a `400` refusing an assistant prefill (Anthropic's words; the mock says
/// the same). See [`is_prefill_refusal`].
pub const PREFILL_REFUSAL: &str = "This model does not support assistant message prefill. The conversation must end with a user message.";

/// Whether `e` is a `400` about the prefill itself ("does not support assistant message
/// prefill", "must end with a user message"), as opposed to any other `400` (a context too
/// long, a bad parameter), which says nothing about how a provider continues.
///
/// ```
/// use http::StatusCode;
/// use llm_layers_core::continuation::{PREFILL_REFUSAL, is_prefill_refusal};
/// use llm_layers_core::{ApiError, LlmError};
/// let refusal = LlmError::status(StatusCode::BAD_REQUEST, None).with_message(PREFILL_REFUSAL);
/// assert!(is_prefill_refusal(&refusal));
/// let too_long = LlmError::status(StatusCode::BAD_REQUEST, None)
///     .with_message("This model's maximum context length is 8192 tokens");
/// assert!(!is_prefill_refusal(&too_long));
/// ```
pub fn is_prefill_refusal(e: &crate::LlmError) -> bool {
    if e.status_code() != Some(http::StatusCode::BAD_REQUEST) {
        return false;
    }
    let said = [
        e.api_error().and_then(|a| a.message.as_deref()),
        e.message(),
    ];
    said.into_iter().flatten().any(|m| {
        let m = m.to_ascii_lowercase();
        m.contains("prefill")
            || m.contains("must end with a user message")
            || (m.contains("assistant") && (m.contains("final") || m.contains("last message")))
    })
}

/// The byte offset where the last `n` characters of `text` start (0 when it has fewer).
fn last_chars(text: &str, n: usize) -> usize {
    text.char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i)
}

/// `delivered` split for a prefill: the text sent as the partial assistant message, and the
/// tail held back from it, which the continuation must write again first. The tail is at
/// least [`HELD_BACK`] characters (all of `delivered` when shorter), on a char boundary, and
/// takes the whitespace before it too, so the prefill never ends with whitespace (some APIs
/// refuse that). When nothing is left to prefill, the continuation is asked by instruction
/// ([`effective_mode`]).
///
/// ```
/// use llm_layers_core::continuation::split_for_prefill;
/// assert_eq!(split_for_prefill("The quick brown fox jumps over the"), ("The quick brown", " fox jumps over the"));
/// assert_eq!(split_for_prefill("short"), ("", "short"));
/// assert_eq!(split_for_prefill("   \n  "), ("", "   \n  "));
/// ```
pub fn split_for_prefill(delivered: &str) -> (&str, &str) {
    let at = last_chars(delivered, HELD_BACK);
    // At the start of a word when one starts within 32 characters before (a prefill that
    // ends mid-word is read oddly by some models); text without spaces is cut where it is.
    let mid_word = delivered[at..].starts_with(|c: char| !c.is_whitespace())
        && delivered[..at].ends_with(|c: char| !c.is_whitespace());
    let at = if mid_word {
        delivered[..at]
            .char_indices()
            .rev()
            .take(32)
            .find(|(_, c)| c.is_whitespace())
            .map_or(at, |(i, c)| i + c.len_utf8())
    } else {
        at
    };
    let head = delivered[..at].trim_end();
    (head, &delivered[head.len()..])
}

/// How a continuation of `delivered` is asked when `mode` is wanted: as `mode`, but by
/// instruction when nothing would be left to prefill once the tail is held back (a short or
/// whitespace-only text: an empty assistant message is refused, and a request without one is
/// the original request again).
///
/// ```
/// use llm_layers_core::continuation::{ContinueMode, effective_mode};
/// assert_eq!(effective_mode("Hello, world", ContinueMode::Prefill), ContinueMode::Instruction);
/// assert_eq!(effective_mode("Once upon a time, in a land far away", ContinueMode::Prefill), ContinueMode::Prefill);
/// ```
pub fn effective_mode(delivered: &str, mode: ContinueMode) -> ContinueMode {
    match mode {
        ContinueMode::Prefill | ContinueMode::Prefix
            if split_for_prefill(delivered).0.is_empty() =>
        {
            ContinueMode::Instruction
        }
        m => m,
    }
}

/// The text a continuation of `delivered` in `mode` must start with before any new text
/// reaches the caller: the tail held back from a prefill ([`split_for_prefill`]), or the last
/// [`INSTRUCTION_OVERLAP`] characters an instruction asks to be repeated.
///
/// ```
/// use llm_layers_core::continuation::{ContinueMode, expected_start};
/// let d = "ha ha ha ha ha ha ha ha ";
/// assert_eq!(expected_start(d, ContinueMode::Instruction), &d[8..]);
/// assert_eq!(expected_start(d, ContinueMode::Prefill), &d[8..]);
/// assert_eq!(expected_start("言葉の途中で切れた文章がここにあります", ContinueMode::Prefill), "途中で切れた文章がここにあります");
/// ```
pub fn expected_start(delivered: &str, mode: ContinueMode) -> &str {
    match effective_mode(delivered, mode) {
        ContinueMode::Instruction => &delivered[last_chars(delivered, INSTRUCTION_OVERLAP)..],
        _ => split_for_prefill(delivered).1,
    }
}

/// How much of `delivered` a continuation in `mode` keeps: it joins there, writing again
/// what follows ([`expected_start`]).
pub fn kept_len(delivered: &str, mode: ContinueMode) -> usize {
    delivered.len() - expected_start(delivered, mode).len()
}

/// The output limit a continuation asks for: what is left of the caller's `limit` once
/// `kept` chunks were delivered that the continuation does not write again (a token each:
/// the chunks that end at or before where it joins, see [`ChunkEnds`]). The text it must
/// write again ([`expected_start`]) costs what its chunks cost when they came. So the whole
/// answer stays within the caller's limit, and `finish_reason: "length"` still means it.
/// Never below 1 (an upstream refuses a limit of 0).
///
/// ```
/// use llm_layers_core::continuation::{continuation_limit, original_limit};
/// assert_eq!(continuation_limit(100, 27), 73);
/// assert_eq!(original_limit(73, 27), 100);
/// assert_eq!(continuation_limit(10, 12), 1);
/// ```
pub fn continuation_limit(limit: u32, kept: u64) -> u32 {
    let left = u64::from(limit).saturating_sub(kept).max(1);
    u32::try_from(left).unwrap_or(u32::MAX)
}

/// The caller's limit a continuation's `limit` was made from ([`continuation_limit`]'s
/// inverse): what a mock needs to give the same whole answer.
pub fn original_limit(limit: u32, kept: u64) -> u32 {
    u32::try_from(u64::from(limit) + kept).unwrap_or(u32::MAX)
}

/// Where the last content chunks of a stream ended (byte offsets into the text delivered),
/// for counting the chunks a continuation keeps: those that end at or before where it joins.
/// Fixed size, no allocation; when the join is further back than it remembers, the text
/// from there is counted as a token per 4 bytes, and one more.
///
/// ```
/// use llm_layers_core::continuation::ChunkEnds;
/// let mut ends = ChunkEnds::default();
/// let mut text = String::new();
/// for piece in ["The ", "quick ", "brown ", "fox "] {
///     text.push_str(piece);
///     ends.push(text.len());
/// }
/// assert_eq!(ends.kept(4), 1); // "The " ends at 4
/// assert_eq!(ends.kept(5), 1); // cut inside "quick ": it is written again
/// assert_eq!(ends.kept(text.len()), 4);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChunkEnds {
    ends: [usize; CHUNK_ENDS],
    /// Chunks pushed so far.
    count: u64,
}

const CHUNK_ENDS: usize = 32;

impl ChunkEnds {
    /// A content chunk was delivered: the text now ends at `end`.
    pub fn push(&mut self, end: usize) {
        self.ends[(self.count % CHUNK_ENDS as u64) as usize] = end;
        self.count += 1;
    }

    /// Content chunks delivered.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The chunks that end at or before `cut`.
    pub fn kept(&self, cut: usize) -> u64 {
        let remembered = self.count.min(CHUNK_ENDS as u64);
        let mut after = 0u64;
        for back in 1..=remembered {
            let i = ((self.count - back) % CHUNK_ENDS as u64) as usize;
            if self.ends[i] <= cut {
                return self.count - after;
            }
            after += 1;
        }
        if remembered == self.count {
            return 0;
        }
        // Further back than remembered: estimate the chunks from the cut to the oldest end.
        let oldest = self.ends[(self.count % CHUNK_ENDS as u64) as usize];
        let estimate = ((oldest - cut) as u64).div_ceil(4) + 1;
        (self.count - after).saturating_sub(estimate)
    }
}

/// The user message of an [`Instruction`](ContinueMode::Instruction) continuation.
pub const CONTINUE_INSTRUCTION: &str = "Your previous message was cut off. Continue it from \
exactly where it stopped: begin your reply with the last 16 characters of that message, \
repeated verbatim, then go on with the rest. Write nothing else.";

/// The request for the rest of an answer to `original` of which `delivered` was received:
/// a prefill of `delivered` less its held-back tail ([`split_for_prefill`]), or the whole
/// `delivered` and an instruction to go on, repeating its last [`INSTRUCTION_OVERLAP`]
/// characters first. [`expected_start`] says what the continuation must write first.
///
/// ```
/// use llm_layers_core::continuation::{ContinueMode, continuation_body, continued};
/// use llm_layers_core::{ChatRequest, Message};
/// let req = ChatRequest::new("m", vec![Message::user("count")]);
/// let body = continuation_body(req.body(), "one two three four five six ", ContinueMode::Prefill);
/// let c = continued(&body).ok_or("not a continuation")?;
/// // "three four five six " is held back (16 characters, from the start of a word).
/// assert_eq!((c.delivered, c.mode, c.original.len()), ("one two", ContinueMode::Prefill, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn continuation_body(original: &ChatBody, delivered: &str, mode: ContinueMode) -> ChatBody {
    let mut body = original.clone();
    let (prefill, _) = split_for_prefill(delivered);
    match effective_mode(delivered, mode) {
        ContinueMode::Prefill => body.messages.push(Message::new("assistant", prefill)),
        ContinueMode::Prefix => {
            let mut m = Message::new("assistant", prefill);
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

/// A continuation request, read back: the conversation it continues, the text it sends
/// (the prefill, for prefill modes; the whole delivered text for an instruction), and how it
/// asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Continued<'a> {
    /// The messages of the original request.
    pub original: &'a [Message],
    /// The partial answer as sent (for a prefill, without its held-back tail).
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
