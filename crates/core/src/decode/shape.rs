//! What follows a stream's head: [`Shape`], the bytes most tails repeat around a new token,
//! learned and proven once per head, and [`Tail`], the fields after the head, parsed alone.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, LazyLock};

use memchr::memmem::Finder;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::chunk::{ChunkChoice, Usage, plain_bytes};

/// The content a learned shape is proven with: put in the place the content was found, it
/// must come out as the content and change nothing else.
pub(super) const PROBE: &str = "llm-layers shape probe";

/// The key before a delta's content string.
const CONTENT_KEY: &[u8] = b"\"content\":\"";

/// Its searcher, built once (`memmem::find` builds one on every call).
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(CONTENT_KEY));

/// A tail's bytes around the content string of its one choice, and that choice.
pub(super) struct Shape {
    /// The tail (after the head) without the content string's bytes: up to its opening quote
    /// (included) and from its closing quote (included) to the end of the chunk.
    around: Box<[u8]>,
    /// Where the content's bytes were in the tail: `around[..at]` came before them.
    at: usize,
    /// The choice such a tail holds, but for its content (shared with the chunks read by
    /// this shape).
    pub(super) choice: Arc<ChunkChoice>,
    /// Whether that choice carries output besides its content (reasoning, tool calls).
    output: bool,
}

impl Shape {
    /// The shape of `rest` (a tail after the head, holding no usage and no error, whose
    /// choices are `choices`), when:
    /// - it holds one choice with a content, of the stream's middle (no finish, no usage, no
    ///   error; a role may be there: OpenRouter repeats it in every delta);
    /// - the content needs no unescaping;
    /// - putting [`PROBE`] where the content's bytes were found (a `"content":"…"` among the
    ///   first two that hold them) parses as the same choice with the probe as its content.
    ///
    /// The last proves those bytes are the content and nothing else, for any string that
    /// needs no unescaping in their place: the tokens around it are the same bytes, so they
    /// parse the same. `scratch` is the head's buffer.
    pub(super) fn learn(
        rest: &str,
        choices: &[ChunkChoice],
        scratch: &mut String,
    ) -> Option<Shape> {
        let [choice] = choices else {
            return None;
        };
        let content = choice.delta.content.as_deref()?;
        if choice.finish_reason.is_some() || content == PROBE || !plain_bytes(content.as_bytes()) {
            return None;
        }
        let mut want = choice.clone();
        want.delta.content = Some(PROBE.to_owned());
        // The places where the content's string could be, first to last (the content
        // usually comes first, after the role, if any): the first proven is the shape.
        let places = CONTENT
            .find_iter(rest.as_bytes())
            .map(|at| at + CONTENT_KEY.len())
            .filter(|&at| {
                let after = &rest.as_bytes()[at..];
                after.starts_with(content.as_bytes()) && after.get(content.len()) == Some(&b'"')
            });
        for at in places.take(2) {
            let end = at + content.len();
            scratch.clear();
            scratch.push('{');
            scratch.push_str(&rest[..at]);
            scratch.push_str(PROBE);
            scratch.push_str(&rest[end..]);
            let Ok(probe) = serde_json::from_str::<Tail>(scratch) else {
                continue;
            };
            if probe.usage.flatten().is_none()
                && probe.error.flatten().is_none()
                && probe.choices.as_deref() == Some(std::slice::from_ref(&want))
            {
                want.delta.content = None;
                let around = [&rest.as_bytes()[..at], &rest.as_bytes()[end..]].concat();
                let output = want
                    .delta
                    .reasoning
                    .as_deref()
                    .is_some_and(|r| !r.is_empty())
                    || want
                        .delta
                        .tool_calls
                        .as_ref()
                        .is_some_and(|t| !t.is_empty());
                return Some(Shape {
                    around: around.into(),
                    at,
                    choice: Arc::new(want),
                    output,
                });
            }
        }
        None
    }

    /// The bytes before the content.
    pub(super) fn prefix(&self) -> &[u8] {
        &self.around[..self.at]
    }

    /// The bytes after the content.
    pub(super) fn suffix(&self) -> &[u8] {
        &self.around[self.at..]
    }

    /// Where `rest`'s content is in it and whether the chunk carries output, when `rest` is
    /// this shape's bytes around a string that needs no unescaping.
    pub(super) fn read(&self, rest: &str) -> Option<(std::ops::Range<usize>, bool)> {
        let body = rest
            .as_bytes()
            .strip_prefix(self.prefix())?
            .strip_suffix(self.suffix())?;
        if !plain_bytes(body) {
            return None;
        }
        // The prefix ends and the suffix starts with an ASCII `"`: character boundaries.
        let at = self.at;
        Some((at..at + body.len(), self.output || !body.is_empty()))
    }
}

/// The fields of a chunk that follow its head. A head field in it (under any spelling of
/// its key) or any field twice is an error here: a whole parse of such an event says what it
/// says (a duplicate field is an error there), so the caller parses it whole.
#[derive(Default)]
pub(super) struct Tail {
    pub(super) choices: Option<Vec<ChunkChoice>>,
    pub(super) usage: Option<Option<Usage>>,
    pub(super) error: Option<Option<Value>>,
}

impl<'de> Deserialize<'de> for Tail {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TailVisitor;
        impl<'de> Visitor<'de> for TailVisitor {
            type Value = Tail;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the fields of a chunk after its head")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tail, A::Error> {
                fn once<T, E: serde::de::Error>(slot: &mut Option<T>, v: T) -> Result<(), E> {
                    match slot.replace(v) {
                        None => Ok(()),
                        Some(_) => Err(E::custom("a field twice")),
                    }
                }
                let mut out = Tail::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match &*key {
                        "choices" => once(&mut out.choices, map.next_value()?)?,
                        "usage" => once(&mut out.usage, map.next_value()?)?,
                        "error" => once(&mut out.error, map.next_value()?)?,
                        "id" | "object" | "created" | "model" | "provider"
                        | "system_fingerprint" => {
                            return Err(serde::de::Error::custom("a head field after the head"));
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(TailVisitor)
    }
}

/// An object key, borrowed from the input when it has no escapes (unescaped otherwise, so
/// `"\u0069d"` is `id`).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}
