//! [`ChatChunk::write_json`]: the bytes `serde_json` writes for a chunk, without its
//! per-byte escaping machinery on the common path.
//!
//! A gateway re-encodes every chunk it relays. Through `serde_json` that is about 3,600
//! instructions for a 220-byte chunk, half as much as parsing it: each key and string goes
//! through the escaper byte by byte and through a writer call per fragment. Here a string
//! that needs no escape (almost all of them) is one check and one copy; one that does, and
//! every free-form JSON value (`extra`, `logprobs`, `error`), is written by `serde_json`
//! itself, so the output is byte for byte what `serde_json::to_writer(out, chunk)` gives
//! (a property test holds it to that).

use serde_json::{Map, Value};

use super::{
    AssistantMessage, ChatChunk, ChatCompletion, Choice, ChunkChoice, Delta, FunctionDelta,
    ToolCall, ToolCallDelta, Usage,
};

/// Whether `s` is written as it is between quotes: no `"`, `\` or control character
/// (what `serde_json` escapes).
fn plain(s: &str) -> bool {
    plain_bytes(s.as_bytes())
}

/// [`plain`] on bytes, eight at a time: a chunk's strings (ids, model names, tokens) are
/// mostly longer than that, and a byte-by-byte test was half the writer's work. Also what a
/// JSON string's body must be to mean its bytes unescaped (the decoder's shape cache).
pub(crate) fn plain_bytes(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte of `w` that is below `n` (`n` ≤ 0x80), and maybe of bytes
    /// above it when one below is there: zero exactly when no byte is below `n`.
    fn below(w: u64, n: u8) -> u64 {
        w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH
    }
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_ne_bytes(word.try_into().expect("eight bytes"));
        let hits = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if hits != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        if plain(s) {
            self.0.reserve(s.len() + 2);
            self.0.push(b'"');
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(b'"');
        } else {
            self.value(&s);
        }
    }

    fn u64(&mut self, n: u64) {
        self.raw(itoa::Buffer::new().format(n).as_bytes());
    }

    /// Anything else, through `serde_json` (writing to a `Vec` cannot fail).
    fn value(&mut self, v: &impl serde::Serialize) {
        let _ = serde_json::to_writer(&mut *self.0, v);
    }

    /// `,"key":` (or `{"key":` for the first member): a key is one of ours, never escaped.
    fn key(&mut self, first: &mut bool, key: &str) {
        self.raw(if std::mem::take(first) {
            b"{\""
        } else {
            b",\""
        });
        self.raw(key.as_bytes());
        self.raw(b"\":");
    }

    fn opt_str(&mut self, first: &mut bool, key: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(first, key);
            self.str(v);
        }
    }

    fn opt_value(&mut self, first: &mut bool, key: &str, v: Option<&Value>) {
        if let Some(v) = v {
            self.key(first, key);
            self.value(v);
        }
    }

    /// `[a,b,...]`, each item written by `item`.
    fn array<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        self.raw(b"[");
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                self.raw(b",");
            }
            item(self, x);
        }
        self.raw(b"]");
    }

    fn extra(&mut self, first: &mut bool, extra: &Map<String, Value>) {
        for (k, v) in extra {
            self.raw(if std::mem::take(first) { b"{" } else { b"," });
            self.str(k);
            self.raw(b":");
            self.value(v);
        }
    }

    fn end(&mut self, first: bool) {
        self.raw(if first { b"{}" } else { b"}" });
    }

    fn chunk(&mut self, c: &ChatChunk) {
        self.head(c, None);
        self.rest(c);
    }

    /// The members before the choices, and the `"choices":` key: the part of a chunk that
    /// every chunk of one answer repeats. `spans`, when asked for, gets where each of its
    /// strings' bytes went (between the quotes; the bytes of the string itself when it needs
    /// no escape).
    fn head(&mut self, c: &ChatChunk, mut spans: Option<&mut Spans>) {
        let first = &mut true;
        let [id, object, model, provider] = head_strings(c);
        let mut member =
            |out: &mut Self, first: &mut bool, i: usize, key: &str, v: Option<&str>| {
                if let Some(v) = v {
                    out.key(first, key);
                    let at = out.0.len() + 1;
                    out.str(v);
                    if let Some(spans) = spans.as_deref_mut() {
                        let end = out.0.len() - 1;
                        spans[i] = u16::try_from(at).ok().zip(u16::try_from(end).ok());
                    }
                }
            };
        member(self, first, 0, "id", id);
        member(self, first, 1, "object", object);
        self.key(first, "created");
        self.u64(c.created);
        member(self, first, 2, "model", model);
        member(self, first, 3, "provider", provider);
        self.key(first, "choices");
    }

    /// What follows [`head`](Self::head), to the closing brace (`created` is always written,
    /// so every member here follows another).
    fn rest(&mut self, c: &ChatChunk) {
        let first = &mut false;
        self.array(&c.choices, Self::choice);
        self.opt_usage(first, c.usage.as_ref());
        self.opt_value(first, "error", c.error.as_ref());
        self.opt_str(first, "system_fingerprint", c.system_fingerprint.as_deref());
        self.end(*first);
    }

    fn choice(&mut self, c: &ChunkChoice) {
        let first = &mut true;
        self.key(first, "index");
        self.u64(u64::from(c.index));
        self.key(first, "delta");
        self.delta(&c.delta);
        self.choice_end(
            first,
            c.finish_reason.as_deref(),
            c.native_finish_reason.as_deref(),
            c.logprobs.as_ref(),
            c.error.as_ref(),
        );
    }

    /// The members a streamed choice and a whole one end with, from `finish_reason` on
    /// (inlined: a call with five arguments per chunk was 5 % of writing one).
    #[inline(always)]
    fn choice_end(
        &mut self,
        first: &mut bool,
        finish_reason: Option<&str>,
        native_finish_reason: Option<&str>,
        logprobs: Option<&Value>,
        error: Option<&Value>,
    ) {
        self.key(first, "finish_reason");
        self.opt_null(finish_reason);
        self.opt_str(first, "native_finish_reason", native_finish_reason);
        self.opt_value(first, "logprobs", logprobs);
        self.opt_value(first, "error", error);
        self.end(*first);
    }

    fn delta(&mut self, d: &Delta) {
        let first = &mut true;
        self.opt_str(first, "role", d.role.as_deref());
        self.opt_str(first, "content", d.content.as_deref());
        self.opt_str(first, "reasoning", d.reasoning.as_deref());
        if let Some(calls) = &d.tool_calls {
            self.key(first, "tool_calls");
            self.array(calls, Self::tool_call);
        }
        self.extra(first, &d.extra);
        self.end(*first);
    }

    fn tool_call(&mut self, t: &ToolCallDelta) {
        let first = &mut true;
        self.key(first, "index");
        self.u64(u64::from(t.index));
        self.opt_str(first, "id", t.id.as_deref());
        self.opt_str(first, "type", t.kind.as_deref());
        if let Some(f) = &t.function {
            self.key(first, "function");
            self.function(f);
        }
        self.end(*first);
    }

    fn function(&mut self, f: &FunctionDelta) {
        let first = &mut true;
        self.opt_str(first, "name", f.name.as_deref());
        self.opt_str(first, "arguments", f.arguments.as_deref());
        self.end(*first);
    }

    fn completion(&mut self, c: &ChatCompletion) {
        self.raw(b"{\"id\":");
        self.str(&c.id);
        self.raw(b",\"object\":");
        self.str(&c.object);
        self.raw(b",\"created\":");
        self.u64(c.created);
        self.raw(b",\"model\":");
        self.str(&c.model);
        let first = &mut false;
        self.opt_str(first, "provider", c.provider.as_deref());
        self.key(first, "choices");
        self.array(&c.choices, Self::answer);
        self.opt_usage(first, c.usage.as_ref());
        self.opt_str(first, "system_fingerprint", c.system_fingerprint.as_deref());
        self.opt_value(first, "error", c.error.as_ref());
        self.end(*first);
    }

    fn answer(&mut self, c: &Choice) {
        let first = &mut true;
        self.key(first, "index");
        self.u64(u64::from(c.index));
        self.key(first, "message");
        self.message(&c.message);
        self.choice_end(
            first,
            c.finish_reason.as_deref(),
            c.native_finish_reason.as_deref(),
            c.logprobs.as_ref(),
            c.error.as_ref(),
        );
    }

    fn message(&mut self, m: &AssistantMessage) {
        let first = &mut true;
        self.key(first, "role");
        self.str(&m.role);
        self.key(first, "content");
        self.opt_null(m.content.as_deref());
        self.opt_str(first, "reasoning", m.reasoning.as_deref());
        if let Some(calls) = &m.tool_calls {
            self.key(first, "tool_calls");
            self.array(calls, Self::whole_call);
        }
        self.extra(first, &m.extra);
        self.end(*first);
    }

    fn whole_call(&mut self, t: &ToolCall) {
        self.raw(b"{\"id\":");
        self.str(&t.id);
        self.raw(b",\"type\":");
        self.str(&t.kind);
        self.raw(b",\"function\":{\"name\":");
        self.str(&t.function.name);
        self.raw(b",\"arguments\":");
        self.str(&t.function.arguments);
        self.raw(b"}}");
    }

    /// A string, or `null`.
    fn opt_null(&mut self, v: Option<&str>) {
        match v {
            Some(s) => self.str(s),
            None => self.raw(b"null"),
        }
    }

    #[inline(always)]
    fn opt_usage(&mut self, first: &mut bool, u: Option<&Usage>) {
        if let Some(u) = u {
            self.key(first, "usage");
            self.usage(u);
        }
    }

    fn usage(&mut self, u: &Usage) {
        let first = &mut true;
        self.key(first, "prompt_tokens");
        self.u64(u.prompt_tokens);
        self.key(first, "completion_tokens");
        self.u64(u.completion_tokens);
        self.key(first, "total_tokens");
        self.u64(u.total_tokens);
        self.extra(first, &u.extra);
        self.end(*first);
    }
}

impl ChatChunk {
    /// Appends this chunk's JSON to `out`: the same bytes as
    /// `serde_json::to_writer(out, self)`, at a little over half the instructions (2.0k
    /// against 3.6k for a typical 220-byte chunk: a string that needs no escape is copied
    /// whole). For relaying chunks on a hot path.
    ///
    /// ```
    /// use llm_layers_core::ChatChunk;
    /// let chunk: ChatChunk = serde_json::from_str(
    ///     r#"{"id":"gen-1","choices":[{"index":0,"delta":{"content":"Hi \"you\""}}]}"#,
    /// )?;
    /// let mut out = Vec::new();
    /// chunk.write_json(&mut out);
    /// assert_eq!(out, serde_json::to_vec(&chunk)?);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn write_json(&self, out: &mut Vec<u8>) {
        Out(out).chunk(self);
    }
}

impl ChatCompletion {
    /// Appends this answer's JSON to `out`: the same bytes as
    /// `serde_json::to_writer(out, self)`, a string that needs no escape copied whole (what
    /// a gateway writes for every whole answer).
    ///
    /// ```
    /// use llm_layers_core::ChatCompletion;
    /// let answer: ChatCompletion = serde_json::from_str(
    ///     r#"{"id":"gen-1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"you\""},"finish_reason":"stop"}]}"#,
    /// )?;
    /// let mut out = Vec::new();
    /// answer.write_json(&mut out);
    /// assert_eq!(out, serde_json::to_vec(&answer)?);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn write_json(&self, out: &mut Vec<u8>) {
        Out(out).completion(self);
    }
}

/// Writes the chunks of one stream as [`ChatChunk::write_json`] does, with the part each
/// chunk of an answer repeats (`{"id":…,"object":…,"created":…,"model":…,"provider":…,`)
/// written once: a chunk whose head fields are the ones before gets the bytes written then
/// (about half of what a typical chunk costs to write).
///
/// ```
/// use llm_layers_core::{ChatChunk, ChunkWriter};
/// let chunk: ChatChunk = serde_json::from_str(
///     r#"{"id":"gen-1","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
/// )?;
/// let mut writer = ChunkWriter::default();
/// let (mut a, mut b) = (Vec::new(), Vec::new());
/// writer.write(&chunk, &mut a);
/// writer.write(&chunk, &mut b);
/// assert_eq!(a, serde_json::to_vec(&chunk)?);
/// assert_eq!(a, b);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct ChunkWriter {
    /// The head last written, when each of its strings needed no escape (empty otherwise, and
    /// before the first chunk).
    bytes: Vec<u8>,
    /// Its `created`.
    created: u64,
    /// Where its strings are in `bytes` (see [`head_strings`]); `None` for one not written.
    spans: Spans,
}

/// Where a head's strings are in its bytes, in [`head_strings`]' order (`u16`: a stream
/// holds its writer while it idles; a longer head is not kept).
type Spans = [Option<(u16, u16)>; 4];

/// The strings of a chunk's head that are written, in the order they are: the id, `object`
/// and the model when not empty, the provider when there is one.
fn head_strings(c: &ChatChunk) -> [Option<&str>; 4] {
    fn non_empty(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }
    [
        non_empty(&c.id),
        non_empty(&c.object),
        non_empty(&c.model),
        c.provider.as_deref(),
    ]
}

impl ChunkWriter {
    /// Appends `chunk`'s JSON to `out`: the bytes of [`ChatChunk::write_json`].
    pub fn write(&mut self, chunk: &ChatChunk, out: &mut Vec<u8>) {
        if !self.holds_head_of(chunk) {
            self.learn(chunk);
        }
        if self.bytes.is_empty() {
            Out(out).head(chunk, None);
        } else {
            out.extend_from_slice(&self.bytes);
        }
        Out(out).rest(chunk);
    }

    /// Whether `bytes` are `c`'s head. The strings kept are the bytes they were written as
    /// (none needed an escape), so equal bytes are equal strings.
    fn holds_head_of(&self, c: &ChatChunk) -> bool {
        !self.bytes.is_empty()
            && self.created == c.created
            && self
                .spans
                .iter()
                .zip(head_strings(c))
                .all(|(span, s)| match (span, s) {
                    (None, None) => true,
                    (Some((a, b)), Some(s)) => {
                        &self.bytes[usize::from(*a)..usize::from(*b)] == s.as_bytes()
                    }
                    _ => false,
                })
    }

    /// Keeps `c`'s head, when none of its strings needs an escape (a head that does is
    /// written for every chunk, as `write_json` does).
    fn learn(&mut self, c: &ChatChunk) {
        self.bytes.clear();
        if head_strings(c).iter().flatten().any(|s| !plain(s)) {
            self.bytes = Vec::new();
            return;
        }
        // A head is about 150 bytes: one allocation, then only as much as it takes (a
        // stream holds its writer while it idles).
        self.bytes.reserve(256);
        self.spans = Spans::default();
        Out(&mut self.bytes).head(c, Some(&mut self.spans));
        if self.bytes.len() > usize::from(u16::MAX) {
            self.bytes = Vec::new();
            return;
        }
        self.bytes.shrink_to_fit();
        self.created = c.created;
    }
}

#[cfg(test)]
mod tests {
    use super::{ChunkWriter, plain_bytes};
    use crate::ChatChunk;

    /// A head string that needs an escape is not kept: its written bytes are another string's
    /// own bytes (`a"b` is written `a\"b`, the bytes of the string `a\"b`), so comparing a
    /// chunk's strings with them would take one for the other.
    #[test]
    fn a_head_that_needs_an_escape_is_written_for_every_chunk() {
        let chunk = |id: &str| ChatChunk {
            id: id.into(),
            model: "m".into(),
            ..ChatChunk::default()
        };
        let mut writer = ChunkWriter::default();
        for id in ["a\"b", "a\\\"b", "a\"b", "plain", "a\\\"b"] {
            let c = chunk(id);
            let mut out = Vec::new();
            writer.write(&c, &mut out);
            assert_eq!(out, serde_json::to_vec(&c).unwrap(), "{id}");
        }
    }

    fn byte_by_byte(b: &[u8]) -> bool {
        b.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
    }

    /// Every pair of byte values at a few pairs of places in a 16-byte string (two words),
    /// and every length up to 24 (the remainder), against the byte-by-byte rule.
    #[test]
    fn the_word_test_is_the_byte_test() {
        for (i, j) in [(0, 7), (3, 4), (7, 8), (9, 15), (1, 14), (6, 6)] {
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    let mut s = *b"abcdefghijklmnop";
                    s[i] = a;
                    s[j] = b;
                    assert_eq!(
                        plain_bytes(&s),
                        byte_by_byte(&s),
                        "{a:#x} at {i}, {b:#x} at {j}"
                    );
                }
            }
        }
        for len in 0..=24 {
            for at in 0..len {
                for bad in [0x00, 0x1f, b'"', b'\\'] {
                    let mut s = vec![b'x'; len];
                    assert!(plain_bytes(&s));
                    s[at] = bad;
                    assert!(!plain_bytes(&s), "{bad:#x} at {at} of {len}");
                }
            }
        }
    }
}
