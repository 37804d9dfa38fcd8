//! The head a stream repeats: every chunk of one answer starts with the same bytes
//! (`{"id":"gen-…","object":"chat.completion.chunk","created":…,"model":"…","provider":"…",`),
//! about half of its strings. [`Head`] keeps those bytes and the fields they hold; a chunk
//! that starts with them is parsed from its `"choices"` on and gets the fields by copy.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::{checked, parse_whole};
use crate::chunk::{ChatChunk, ChunkChoice, Usage};
use crate::error::LlmError;

/// The key that ends a head: what comes before it at the top level is the head.
const CHOICES_KEY: &[u8] = b",\"choices\":";

/// How many chunks in a row may fail to start with the learned head before a stream is
/// taken as one whose head changes (a timestamp per chunk) and no longer compared.
const MAX_MISSES: u8 = 2;

/// [`decode_event_str`](super::decode_event_str) for the events of one stream, with the
/// head they repeat parsed once: a chunk that starts with the head bytes of the chunk
/// before is parsed from `"choices"` on (a quarter fewer instructions on a typical chunk:
/// 5.5k against 7.6k).
/// The same chunks and errors either way.
#[derive(Default)]
pub(super) struct HeadCache {
    head: Option<Box<Head>>,
    misses: u8,
}

impl HeadCache {
    pub(super) fn decode(&mut self, text: &str) -> Result<Option<ChatChunk>, LlmError> {
        if text.starts_with("[DONE]") {
            return Ok(None);
        }
        if let Some(chunk) = self.head.as_mut().and_then(|h| h.decode(text)) {
            self.misses = 0;
            return checked(chunk, text).map(Some);
        }
        let chunk = parse_whole(text)?;
        if self.misses <= MAX_MISSES {
            self.misses += 1;
            self.head = Head::learn(text, &chunk).map(Box::new);
        } else {
            self.head = None;
        }
        checked(chunk, text).map(Some)
    }
}

/// The head of the chunks of one stream, as the last learned chunk sent it.
struct Head {
    /// The bytes of the head, up to and including the `,` before `"choices"`.
    prefix: Box<[u8]>,
    id: String,
    object: Cow<'static, str>,
    created: u64,
    model: String,
    provider: Option<String>,
    system_fingerprint: Option<String>,
    /// `{` and the rest of the chunk, rebuilt in place for each chunk.
    scratch: String,
}

impl Head {
    /// The head of `text`, whose whole parse is `chunk`: the bytes before its top-level
    /// `"choices"` key, when they parse on their own as an object holding exactly the head
    /// fields `chunk` has (which proves the key is at the top level and the head holds no
    /// other field that matters). `None` for a chunk with no such head.
    fn learn(text: &str, chunk: &ChatChunk) -> Option<Head> {
        let at = memchr::memmem::find(text.as_bytes(), CHOICES_KEY)?;
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
        same.then(|| Head {
            prefix: text.as_bytes()[..=at].into(),
            id: alone.id,
            object: alone.object,
            created: alone.created,
            model: alone.model,
            provider: alone.provider,
            system_fingerprint: alone.system_fingerprint,
            scratch,
        })
    }

    /// `text` parsed, when it starts with this head and the rest names none of its fields:
    /// the same chunk a whole parse gives. `None` when it does not (the caller parses it
    /// whole, and so gets the canonical error of a malformed one).
    fn decode(&mut self, text: &str) -> Option<ChatChunk> {
        let rest = text.as_bytes().strip_prefix(&*self.prefix)?;
        // The prefix ends with an ASCII `,`: `rest` starts on a character boundary.
        let rest = &text[text.len() - rest.len()..];
        self.scratch.clear();
        self.scratch.push('{');
        self.scratch.push_str(rest);
        let tail: Tail = serde_json::from_str(&self.scratch).ok()?;
        Some(ChatChunk {
            id: self.id.clone(),
            object: self.object.clone(),
            created: self.created,
            model: self.model.clone(),
            provider: self.provider.clone(),
            choices: tail.choices.unwrap_or_default(),
            usage: tail.usage.flatten(),
            error: tail.error.flatten(),
            system_fingerprint: self.system_fingerprint.clone(),
        })
    }
}

/// The fields of a chunk that follow its head. A head field in it (under any spelling of
/// its key) or any field twice is an error here: a whole parse of such an event says what it
/// says (a duplicate field is an error there), so the caller parses it whole.
#[derive(Default)]
struct Tail {
    choices: Option<Vec<ChunkChoice>>,
    usage: Option<Option<Usage>>,
    error: Option<Option<Value>>,
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
