//! The head a stream repeats: every chunk of one answer starts with the same bytes
//! (`{"id":"gen-…","object":"chat.completion.chunk","created":…,"model":"…","provider":"…",`),
//! about half of its strings. [`Head`] keeps those bytes and the fields they hold; a chunk
//! that starts with them is parsed from its `"choices"` on and gets the fields by copy.
//!
//! What follows the head is, for most chunks of an answer, the same bytes around a new
//! token (`"choices":[{"index":0,"delta":{"content":"` … `"},"finish_reason":null}]}`).
//! [`Shape`] keeps those bytes and the choice they hold; a tail made of them and a string
//! that needs no unescaping is that choice with that string as its content, and is not
//! parsed at all.

use std::sync::{Arc, LazyLock};

use memchr::memmem::Finder;

use super::shape::{Shape, Tail};
use super::{checked, parse_whole, passes_as_is};
use crate::chunk::{ChatChunk, HeadFields, Shaped, Tailed};
use crate::error::LlmError;

/// What [`HeadCache::decode`] made of an event.
pub(super) enum Decoded {
    /// Parsed: the typed chunk.
    Parsed(Box<ChatChunk>),
    /// Read by its shape, not parsed: the facts every layer needs.
    Shaped(Shaped),
    /// Parsed past the stream's head, which it shares: a chunk that is no error.
    Tailed(Box<Tailed>),
}

/// The key that ends a head: what comes before it at the top level is the head.
const CHOICES_KEY: &[u8] = b",\"choices\":";

/// Searchers for the keys a head is checked for, built once (`memmem::find` builds its
/// searcher on every call: more work than the search on a chunk's few hundred bytes).
struct Finders {
    choices_key: Finder<'static>,
    /// Keys a tail may hold, which a learned head must not.
    tail_keys: [Finder<'static>; 3],
}

static FINDERS: LazyLock<Finders> = LazyLock::new(|| Finders {
    choices_key: Finder::new(CHOICES_KEY),
    tail_keys: [
        Finder::new(b"\"usage\""),
        Finder::new(b"\"error\""),
        Finder::new(b"\"choices\""),
    ],
});

/// How many chunks in a row may fail to start with the learned head before a stream is
/// taken as one whose head changes (a timestamp per chunk) and no longer compared.
const MAX_MISSES: u8 = 2;

/// How many shapes one head may learn: each costs a parse more, so a stream whose tails
/// keep changing their shape stops paying for it.
const MAX_SHAPES: u8 = 3;

/// [`decode_event_str`](super::decode_event_str) for the events of one stream, with the
/// head they repeat parsed once: a chunk that starts with the head bytes of the chunk
/// before is parsed from `"choices"` on, or not at all when the rest is the learned shape
/// around a new token (3.0k instructions per typical event, SSE framing included, against
/// 8.6k for each event alone). The same chunks and errors either way.
#[derive(Default)]
pub(super) struct HeadCache {
    head: Option<Box<Head>>,
    misses: u8,
}

impl HeadCache {
    pub(super) fn decode(&mut self, text: &str) -> Result<Option<Decoded>, LlmError> {
        if text.starts_with("[DONE]") {
            return Ok(None);
        }
        if let Some(decoded) = self.head.as_mut().and_then(|h| h.decode(text)) {
            self.misses = 0;
            return match decoded {
                Decoded::Parsed(chunk) => {
                    checked(*chunk, text).map(|c| Some(Decoded::Parsed(Box::new(c))))
                }
                known => Ok(Some(known)),
            };
        }
        let chunk = parse_whole(text)?;
        if self.misses <= MAX_MISSES {
            self.misses += 1;
            self.head = Head::learn(text, &chunk).map(Box::new);
        } else {
            self.head = None;
        }
        checked(chunk, text).map(|c| Some(Decoded::Parsed(Box::new(c))))
    }
}

/// The head of the chunks of one stream, as the last learned chunk sent it.
struct Head {
    /// The bytes of the head, up to and including the `,` before `"choices"`.
    prefix: Box<[u8]>,
    /// Its fields, shared with the chunks read by shape.
    fields: Arc<HeadFields>,
    /// `{` and the rest of the chunk, rebuilt in place for each chunk.
    scratch: String,
    /// The bytes the tails of this head repeat around their content, once learned (boxed: a
    /// head without one stays small).
    shape: Option<Box<Shape>>,
    /// How many shapes were learned (at most [`MAX_SHAPES`]).
    shapes: u8,
}

impl Head {
    /// The head of `text`, whose whole parse is `chunk`: the bytes before its top-level
    /// `"choices"` key, when they parse on their own as an object holding exactly the head
    /// fields `chunk` has (which proves the key is at the top level and the head holds no
    /// other field that matters). `None` for a chunk with no such head.
    fn learn(text: &str, chunk: &ChatChunk) -> Option<Head> {
        let finders = &*FINDERS;
        let at = finders.choices_key.find(text.as_bytes())?;
        // A head naming a key a tail may hold (`"usage": null`, say) is not learned: the
        // same key again in a tail is a duplicate field, which only a whole parse sees.
        let head = &text.as_bytes()[..at];
        if finders.tail_keys.iter().any(|k| k.find(head).is_some()) {
            return None;
        }
        let mut scratch = String::with_capacity(text.len() + 1);
        scratch.push_str(&text[..at]);
        scratch.push('}');
        let alone: ChatChunk = serde_json::from_str(&scratch).ok()?;
        let same = alone.choices.is_empty()
            && alone.usage.is_none()
            && alone.error.is_none()
            && alone.id == chunk.id
            && alone.object == chunk.object
            && alone.created == chunk.created
            && alone.model == chunk.model
            && alone.provider == chunk.provider
            && alone.system_fingerprint == chunk.system_fingerprint;
        if !same {
            return None;
        }
        // The first chunk's tail may be the shape of the ones after it (OpenRouter's first
        // delta is the role and an empty content, as every delta after it but for the text).
        let rest = &text[at + 1..];
        let shape = match (&chunk.usage, &chunk.error) {
            (None, None) => Shape::learn(rest, &chunk.choices, &mut scratch),
            _ => None,
        };
        if shape.is_some() {
            // The chunks of a shape are not parsed: a stream that idles after its first token
            // does not keep room for them (a miss makes it again).
            scratch = String::new();
        }
        Some(Head {
            prefix: text.as_bytes()[..=at].into(),
            fields: Arc::new(HeadFields {
                id: alone.id,
                object: alone.object,
                created: alone.created,
                model: alone.model,
                provider: alone.provider,
                system_fingerprint: alone.system_fingerprint,
            }),
            scratch,
            shapes: u8::from(shape.is_some()),
            shape: shape.map(Box::new),
        })
    }

    /// `text` parsed, when it starts with this head and the rest names none of its fields:
    /// the same chunk a whole parse gives. `None` when it does not (the caller parses it
    /// whole, and so gets the canonical error of a malformed one).
    fn decode(&mut self, text: &str) -> Option<Decoded> {
        let rest = text.as_bytes().strip_prefix(&*self.prefix)?;
        // The prefix ends with an ASCII `,`: `rest` starts on a character boundary.
        let rest = &text[text.len() - rest.len()..];
        // `,` then `}` is no object: the caller parses it whole, and gets its error.
        if rest.trim_start().starts_with('}') {
            return None;
        }
        if let Some(shape) = &self.shape {
            if let Some((content, output)) = shape.read(rest) {
                let start = (text.len() - rest.len() + content.start) as u32;
                return Some(Decoded::Shaped(Shaped {
                    head: self.fields.clone(),
                    choice: shape.choice.clone(),
                    content: start..start + content.len() as u32,
                    output,
                }));
            }
        }
        self.scratch.clear();
        self.scratch.reserve(rest.len() + 1);
        self.scratch.push('{');
        self.scratch.push_str(rest);
        let tail: Tail = serde_json::from_str(&self.scratch).ok()?;
        let (choices, usage, error) = (
            tail.choices.unwrap_or_default(),
            tail.usage.flatten(),
            tail.error.flatten(),
        );
        if let (None, None) = (&usage, &error) {
            if self.shapes < MAX_SHAPES {
                if let Some(shape) = Shape::learn(rest, &choices, &mut self.scratch) {
                    self.scratch = String::new();
                    self.shape = Some(Box::new(shape));
                    self.shapes += 1;
                }
            }
        }
        // A chunk `checked` passes as it is shares the head (no copy of its strings); any
        // other is typed and checked.
        if passes_as_is(&choices, usage.is_some(), error.is_some()) {
            return Some(Decoded::Tailed(Box::new(Tailed {
                head: self.fields.clone(),
                choices,
                usage,
            })));
        }
        let mut chunk = self.fields.chunk(choices, usage);
        chunk.error = error;
        Some(Decoded::Parsed(Box::new(chunk)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_event_str;
    use crate::decode::shape::PROBE;

    const HEAD: &str =
        r#"{"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m","provider":"P","#;

    fn event(tail: &str) -> String {
        format!("{HEAD}{tail}")
    }

    /// A token as OpenRouter sends it: the role in every delta.
    fn content(t: &str) -> String {
        event(&format!(
            r#""choices":[{{"index":0,"delta":{{"role":"assistant","content":"{t}"}},"finish_reason":null,"native_finish_reason":null}}]}}"#
        ))
    }

    /// The typed chunk of what the cache made of `text`.
    fn typed(d: Decoded, text: &str) -> ChatChunk {
        match d {
            Decoded::Parsed(c) => *c,
            Decoded::Shaped(s) => {
                let raw = bytes::Bytes::copy_from_slice(text.as_bytes());
                crate::StreamChunk::shaped(raw, s).into_chunk()
            }
            Decoded::Tailed(t) => {
                let raw = bytes::Bytes::copy_from_slice(text.as_bytes());
                crate::StreamChunk::tailed(raw, t).into_chunk()
            }
        }
    }

    /// Decodes `events` with one cache, checking each against its parse alone.
    fn decode_all(cache: &mut HeadCache, events: &[String]) {
        for e in events {
            let got = cache
                .decode(e)
                .map(|d| d.map(|d| typed(d, e)))
                .map_err(|e| e.kind());
            let want = decode_event_str(e).map_err(|e| e.kind());
            assert_eq!(got, want, "{e}");
        }
    }

    fn shape(cache: &HeadCache) -> Option<&Shape> {
        cache.head.as_ref()?.shape.as_deref()
    }

    #[test]
    fn a_stream_of_tokens_learns_its_shape_once_and_reads_through_it() {
        let mut cache = HeadCache::default();
        decode_all(&mut cache, &[content("")]);
        let learned = shape(&cache).expect("learned from the first chunk, with the head");
        assert_eq!(
            learned.suffix(),
            br#""},"finish_reason":null,"native_finish_reason":null}]}"#
        );
        let tokens: Vec<String> = ["Hello", " wor", "ld", "", "é😀", "a'b"]
            .map(content)
            .to_vec();
        decode_all(&mut cache, &tokens);
        assert_eq!(
            cache.head.as_ref().unwrap().shapes,
            1,
            "read, not learned again"
        );
        let token = content(" x");
        let rest = &token[HEAD.len()..];
        let (at, output) = shape(&cache).unwrap().read(rest).unwrap();
        assert_eq!((&rest[at], output), (" x", true));
        let (_, output) = shape(&cache)
            .unwrap()
            .read(&content("")[HEAD.len()..])
            .unwrap();
        assert!(!output, "an empty content is no output");
        // A token that needs unescaping, a finish, usage and a role-less delta are parsed.
        let rest = [
            content(r#"a\"b"#),
            content(r#"\u00e9"#),
            event(
                r#""choices":[{"index":0,"delta":{"content":"t"},"finish_reason":null,"native_finish_reason":null}]}"#,
            ),
            event(
                r#""choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop","native_finish_reason":"stop"}]}"#,
            ),
            event(
                r#""choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            ),
        ];
        for e in &rest {
            assert!(
                shape(&cache).unwrap().read(&e[HEAD.len()..]).is_none(),
                "{e}"
            );
        }
        decode_all(&mut cache, &rest);
    }

    /// The content's text found first under another `"content"` key: the probe shows the
    /// place is not the content, so nothing is learned there, and a later event whose two
    /// strings differ decodes as parsed.
    #[test]
    fn the_same_text_elsewhere_is_not_taken_for_the_content() {
        let both = |a: &str, c: &str| {
            event(&format!(
                r#""choices":[{{"index":0,"delta":{{"annotations":[{{"content":"{a}"}}],"content":"{c}"}},"finish_reason":null}}]}}"#
            ))
        };
        let mut cache = HeadCache::default();
        decode_all(&mut cache, &[content("x"), both("a", "a")]);
        let learned = shape(&cache).expect("learned at the second content string");
        assert!(learned.prefix().ends_with(br#"}],"content":""#));
        decode_all(
            &mut cache,
            &[both("b", "a"), both("a", "b"), both("c", "c")],
        );
    }

    #[test]
    fn the_probe_text_itself_and_two_choices_are_not_learned() {
        let mut cache = HeadCache::default();
        let two = event(
            r#""choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null},{"index":1,"delta":{"content":"a"},"finish_reason":null}]}"#,
        );
        decode_all(&mut cache, &[content("x")]);
        cache.head.as_mut().unwrap().shape = None;
        decode_all(&mut cache, &[content(PROBE), two]);
        assert!(shape(&cache).is_none());
    }

    /// A shape whose choice carries reasoning or tool calls besides its content: a chunk read
    /// by it is output even when its content is empty.
    #[test]
    fn a_shape_with_reasoning_or_tool_calls_is_output_without_content() {
        for extra in [
            r#""reasoning":"r","#,
            r#""tool_calls":[{"index":0,"function":{"arguments":"{}"}}],"#,
        ] {
            let ev = |t: &str| {
                event(&format!(
                    r#""choices":[{{"index":0,"delta":{{{extra}"content":"{t}"}},"finish_reason":null}}]}}"#
                ))
            };
            let mut cache = HeadCache::default();
            decode_all(&mut cache, &[ev("a"), ev("b")]);
            assert!(shape(&cache).is_some(), "{extra}: a shape is learned");
            let empty = ev("");
            match cache.decode(&empty) {
                Ok(Some(Decoded::Shaped(s))) => assert!(s.output, "{extra}"),
                _ => panic!("{extra}: read by the shape"),
            }
            let plain =
                event(r#""choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}"#);
            let mut cache = HeadCache::default();
            decode_all(&mut cache, &[plain.clone(), plain.clone()]);
            match cache.decode(&plain) {
                Ok(Some(Decoded::Shaped(s))) => assert!(!s.output, "an empty content alone"),
                Ok(Some(Decoded::Parsed(c))) => assert!(!c.has_output()),
                Ok(Some(Decoded::Tailed(t))) => assert!(!crate::chunk::has_output(&t.choices)),
                _ => panic!("a chunk"),
            }
        }
    }

    /// A stream whose head changes with every chunk (a timestamp per chunk) stops being
    /// learned after a few misses: each learning costs a second parse.
    #[test]
    fn a_head_that_keeps_changing_is_given_up() {
        let mut cache = HeadCache::default();
        let events: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    r#"{{"id":"gen-1","created":{i},"choices":[{{"index":0,"delta":{{"content":"t"}},"finish_reason":null}}]}}"#
                )
            })
            .collect();
        decode_all(&mut cache, &events[..1]);
        assert!(cache.head.is_some(), "the first head is learned");
        decode_all(&mut cache, &events[1..]);
        assert!(
            cache.head.is_none(),
            "given up after {MAX_MISSES} misses in a row"
        );
        assert_eq!(cache.misses, MAX_MISSES + 1);
    }

    #[test]
    fn a_head_learns_at_most_a_few_shapes() {
        let mut cache = HeadCache::default();
        let events: Vec<String> = (0..8)
            .map(|i| {
                event(&format!(
                    r#""choices":[{{"index":0,"delta":{{"content":"t","x{i}":1}},"finish_reason":null}}]}}"#
                ))
            })
            .collect();
        decode_all(&mut cache, &events);
        assert_eq!(cache.head.as_ref().unwrap().shapes, MAX_SHAPES);
    }
}
