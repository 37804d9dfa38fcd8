//! [`StreamChunk`]: one event of a stream, its typed reading and the bytes it came as.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use super::{ChatChunk, ChunkWriter};

/// One event of a chat completion stream: what a [`ChatStream`](crate::ChatStream) yields.
///
/// It reads as a [`ChatChunk`] (it dereferences to one) and keeps the upstream event's JSON
/// as it came, a slice of the read buffer ([`raw`](Self::raw)): a relay writes those bytes
/// and so keeps what no type models, byte for byte (a provider's own fields, a 24-digit
/// integer, `-0.0`, key order).
///
/// **Changing** a chunk goes through [`make_mut`](Self::make_mut), which lets the bytes go:
/// a chunk a layer changed is never written as the bytes it came in.
///
/// ```
/// use bytes::Bytes;
/// use llm_layers_core::{ChatChunk, StreamChunk};
/// let json = Bytes::from_static(br#"{"id":"gen-1","choices":[{"index":0,"delta":{"content":"Hi"}}],"x_odd":1e400}"#);
/// let typed: ChatChunk = serde_json::from_slice(&json)?;
/// let mut chunk = StreamChunk::with_raw(typed, json.clone());
/// assert_eq!(chunk.content(), Some("Hi")); // reads through to the ChatChunk
/// let mut out = Vec::new();
/// chunk.write_json(&mut out);
/// assert_eq!(out, json); // as it came: the field no type models, the number unchanged
///
/// chunk.make_mut().id = "gen-2".into(); // a change: the bytes are gone
/// assert!(chunk.raw().is_none());
/// out.clear();
/// chunk.write_json(&mut out);
/// let written = String::from_utf8(out).expect("JSON");
/// assert!(written.starts_with(r#"{"id":"gen-2","#) && !written.contains("x_odd"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct StreamChunk {
    chunk: ChatChunk,
    /// The upstream event's data, when this chunk is still what it says.
    raw: Option<Bytes>,
}

impl StreamChunk {
    /// A chunk with no upstream bytes (built here: written from its fields).
    pub fn new(chunk: ChatChunk) -> StreamChunk {
        StreamChunk { chunk, raw: None }
    }

    /// A chunk read from `raw`, the event data it was parsed from. The caller vouches that
    /// `chunk` is what `raw` says: `raw` is what a relay writes for it.
    pub fn with_raw(chunk: ChatChunk, raw: Bytes) -> StreamChunk {
        StreamChunk {
            chunk,
            raw: Some(raw),
        }
    }

    /// The upstream event's JSON, while the chunk is unchanged.
    pub fn raw(&self) -> Option<&Bytes> {
        self.raw.as_ref()
    }

    /// The chunk, to change: the upstream bytes are let go, so the chunk is then written
    /// from its fields.
    pub fn make_mut(&mut self) -> &mut ChatChunk {
        self.raw = None;
        &mut self.chunk
    }

    /// The typed chunk (the upstream bytes are let go).
    pub fn into_chunk(self) -> ChatChunk {
        self.chunk
    }

    /// Appends the chunk's JSON to `out`: the upstream bytes when it has them, else its
    /// fields as [`ChatChunk::write_json`] writes them.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.raw {
            Some(raw) => out.extend_from_slice(raw),
            None => self.chunk.write_json(out),
        }
    }

    /// [`write_json`](Self::write_json) through a stream's [`ChunkWriter`] (which writes the
    /// head a stream's built chunks repeat once).
    pub fn write_with(&self, writer: &mut ChunkWriter, out: &mut Vec<u8>) {
        match &self.raw {
            Some(raw) => out.extend_from_slice(raw),
            None => writer.write(&self.chunk, out),
        }
    }
}

impl Deref for StreamChunk {
    type Target = ChatChunk;

    fn deref(&self) -> &ChatChunk {
        &self.chunk
    }
}

impl From<ChatChunk> for StreamChunk {
    fn from(chunk: ChatChunk) -> StreamChunk {
        StreamChunk::new(chunk)
    }
}

impl From<StreamChunk> for ChatChunk {
    fn from(chunk: StreamChunk) -> ChatChunk {
        chunk.chunk
    }
}

/// Equal when the typed chunks are: the same answer, whether or not it still has the bytes
/// it came as.
impl PartialEq for StreamChunk {
    fn eq(&self, other: &StreamChunk) -> bool {
        self.chunk == other.chunk
    }
}

impl PartialEq<ChatChunk> for StreamChunk {
    fn eq(&self, other: &ChatChunk) -> bool {
        &self.chunk == other
    }
}

impl fmt::Debug for StreamChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamChunk")
            .field("chunk", &self.chunk)
            .field("raw", &self.raw.as_ref().map(Bytes::len))
            .finish()
    }
}
