//! [`StreamChunk`]: one event of a stream, the bytes it came as, and its typed reading, built
//! when something reads more than the facts every layer needs.

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::time::Instant;

use super::{ChatChunk, ChunkChoice, ChunkWriter, Usage};

/// The head fields a stream's chunks repeat, shared by its chunks (no copy per chunk).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HeadFields {
    pub(crate) id: String,
    pub(crate) object: std::borrow::Cow<'static, str>,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) provider: Option<String>,
    pub(crate) system_fingerprint: Option<String>,
}

impl HeadFields {
    /// A typed chunk with this head and these choices and usage.
    pub(crate) fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: self.object.clone(),
            created: self.created,
            model: self.model.clone(),
            provider: self.provider.clone(),
            choices,
            usage,
            error: None,
            system_fingerprint: self.system_fingerprint.clone(),
        }
    }
}

/// What the decoder knows of a chunk it did not parse: the stream's head, the choice its
/// learned shape holds, and where the content is in the bytes.
#[derive(Clone, Debug)]
pub(crate) struct Shaped {
    pub(crate) head: Arc<HeadFields>,
    pub(crate) choice: Arc<ChunkChoice>,
    /// The content's bytes in the event's data (a string that needs no unescaping).
    pub(crate) content: Range<u32>,
    /// Whether the chunk carries output: content, or the reasoning or tool calls of the
    /// shape's choice.
    pub(crate) output: bool,
}

/// What the decoder knows of a chunk whose head it did not parse again: the stream's head
/// (shared) and the fields after it, parsed. The typed chunk, which would copy the head's
/// strings into every such chunk, is built only if something reads through [`Deref`].
#[derive(Clone, Debug)]
pub(crate) struct Tailed {
    pub(crate) head: Arc<HeadFields>,
    pub(crate) choices: Vec<ChunkChoice>,
    pub(crate) usage: Option<Usage>,
}

/// What a chunk from the decoder is, short of its typed reading.
#[derive(Clone, Debug, Default)]
enum Known {
    /// Nothing more than the typed chunk (built here, or parsed whole).
    #[default]
    Typed,
    /// Read by the learned shape: not parsed.
    Shaped(Shaped),
    /// Its head is the stream's; what follows was parsed.
    Tailed(Box<Tailed>),
}

/// One event of a chat completion stream: what a [`ChatStream`](crate::ChatStream) yields.
///
/// It reads as a [`ChatChunk`] (it dereferences to one) and keeps the upstream event's JSON
/// as it came, a slice of the read buffer ([`raw`](Self::raw)): a relay writes those bytes
/// and so keeps what no type models, byte for byte (a provider's own fields, a 24-digit
/// integer, `-0.0`, key order).
///
/// **Reading** what every layer needs is free: [`is_token`](Self::is_token),
/// [`has_output`](Self::has_output), [`content`](Self::content),
/// [`finish_reason`](Self::finish_reason), [`usage`](Self::usage), [`id`](Self::id),
/// [`model`](Self::model), [`provider`](Self::provider). Most chunks of an answer (the same
/// bytes around a new token) are not parsed at all by the decoder; the typed `ChatChunk` is
/// built the first time something reads through [`Deref`] (its other fields).
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
/// assert_eq!(chunk.content(), Some("Hi"));
/// assert_eq!(chunk.choices.len(), 1); // reads through to the ChatChunk
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
    /// The typed chunk: set at once for a chunk that was parsed (or built), on first read
    /// through `Deref` for a shaped one.
    parsed: OnceLock<Box<ChatChunk>>,
    /// The upstream event's data, while the chunk is still what it says.
    raw: Option<Bytes>,
    /// What the decoder knows of a chunk whose typed reading it did not build (it has `raw`).
    known: Known,
    /// When its bytes arrived, for the chunks a decoder read.
    received: Option<Instant>,
}

impl StreamChunk {
    /// A chunk with no upstream bytes (built here: written from its fields).
    pub fn new(chunk: ChatChunk) -> StreamChunk {
        StreamChunk {
            parsed: OnceLock::from(Box::new(chunk)),
            raw: None,
            known: Known::Typed,
            received: None,
        }
    }

    /// A chunk read from `raw`, the event data it was parsed from. The caller vouches that
    /// `chunk` is what `raw` says: `raw` is what a relay writes for it.
    pub fn with_raw(chunk: ChatChunk, raw: Bytes) -> StreamChunk {
        StreamChunk {
            parsed: OnceLock::from(Box::new(chunk)),
            raw: Some(raw),
            known: Known::Typed,
            received: None,
        }
    }

    /// A chunk the decoder parsed from `raw`.
    pub(crate) fn parsed(chunk: Box<ChatChunk>, raw: Bytes) -> StreamChunk {
        StreamChunk {
            parsed: OnceLock::from(chunk),
            raw: Some(raw),
            known: Known::Typed,
            received: None,
        }
    }

    /// A chunk the decoder read by its shape: `raw` holds the content at `shaped.content`.
    pub(crate) fn shaped(raw: Bytes, shaped: Shaped) -> StreamChunk {
        StreamChunk {
            parsed: OnceLock::new(),
            raw: Some(raw),
            known: Known::Shaped(shaped),
            received: None,
        }
    }

    /// A chunk the decoder read past the stream's head: `raw` is its event data.
    pub(crate) fn tailed(raw: Bytes, tailed: Box<Tailed>) -> StreamChunk {
        StreamChunk {
            parsed: OnceLock::new(),
            raw: Some(raw),
            known: Known::Tailed(tailed),
            received: None,
        }
    }

    /// The chunk, stamped with when its bytes arrived.
    pub(crate) fn at(mut self, received: Instant) -> StreamChunk {
        self.received = Some(received);
        self
    }

    /// When the chunk's bytes arrived from the upstream (read once per network read by the
    /// decoder, which every layer after it may use instead of reading the clock again:
    /// [`received_or_now`](Self::received_or_now)); `None` for a chunk built here.
    pub fn received(&self) -> Option<Instant> {
        self.received
    }

    /// [`received`](Self::received), or now for a chunk with no stamp: the time a layer takes
    /// as the chunk's arrival.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// use llm_layers_core::{ChatChunk, StreamChunk};
    /// use tokio::time::Instant;
    /// let built = StreamChunk::new(ChatChunk::default());
    /// assert_eq!(built.received(), None);
    /// assert_eq!(built.received_or_now(), Instant::now());
    /// # });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn received_or_now(&self) -> Instant {
        self.received.unwrap_or_else(Instant::now)
    }

    /// The upstream event's JSON, while the chunk is unchanged.
    pub fn raw(&self) -> Option<&Bytes> {
        self.raw.as_ref()
    }

    /// The chunk, to change: the upstream bytes are let go, so the chunk is then written
    /// from its fields.
    pub fn make_mut(&mut self) -> &mut ChatChunk {
        let chunk = self.take_chunk();
        self.raw = None;
        self.known = Known::Typed;
        self.parsed = OnceLock::new();
        let parsed = &mut self.parsed;
        let _ = parsed.set(Box::new(chunk));
        match parsed.get_mut() {
            Some(c) => c,
            // `set` on an empty cell always sets it.
            None => unreachable!("a cell just set"),
        }
    }

    /// The typed chunk (the upstream bytes are let go).
    pub fn into_chunk(mut self) -> ChatChunk {
        self.take_chunk()
    }

    fn take_chunk(&mut self) -> ChatChunk {
        if let Some(c) = self.parsed.take() {
            return *c;
        }
        match std::mem::take(&mut self.known) {
            // Its parts moved, not copied.
            Known::Tailed(t) => {
                let Tailed {
                    head,
                    choices,
                    usage,
                } = *t;
                head.chunk(choices, usage)
            }
            known => {
                self.known = known;
                self.build()
            }
        }
    }

    /// The typed chunk of one the decoder did not type: the stream's head and, for a shaped
    /// one, the shape's choice with this chunk's content, for a tailed one its parsed rest.
    fn build(&self) -> ChatChunk {
        match (&self.known, &self.raw) {
            (Known::Shaped(s), Some(raw)) => {
                let mut choice = ChunkChoice::clone(&s.choice);
                choice.delta.content = Some(self.shaped_content(s, raw).to_owned());
                s.head.chunk(vec![choice], None)
            }
            (Known::Tailed(t), _) => t.head.chunk(t.choices.clone(), t.usage.clone()),
            _ => ChatChunk::default(),
        }
    }

    fn shaped_content<'a>(&self, s: &Shaped, raw: &'a Bytes) -> &'a str {
        let r = s.content.start as usize..s.content.end as usize;
        // The decoder took the range from the event's text at character boundaries.
        raw.get(r)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// Whether this chunk is the commit point (see [`ChatChunk::is_token`]).
    pub fn is_token(&self) -> bool {
        match &self.known {
            Known::Shaped(s) => s.output,
            _ => super::is_token(self.choices()),
        }
    }

    /// A shaped chunk's parts: the stream's head, the shape's choice and this content.
    pub(crate) fn shaped_parts(&self) -> Option<(&HeadFields, &ChunkChoice, &str)> {
        let (Known::Shaped(s), Some(raw)) = (&self.known, self.raw.as_ref()) else {
            return None;
        };
        Some((&s.head, &s.choice, self.shaped_content(s, raw)))
    }

    /// Whether some choice says why it finished.
    pub fn has_finish(&self) -> bool {
        match &self.known {
            Known::Shaped(s) => s.choice.finish_reason.is_some(),
            _ => super::has_finish(self.choices()),
        }
    }

    /// Whether this chunk carries output (see [`ChatChunk::has_output`]).
    pub fn has_output(&self) -> bool {
        match &self.known {
            Known::Shaped(s) => s.output,
            _ => super::has_output(self.choices()),
        }
    }

    /// The content text of choice 0, if any.
    pub fn content(&self) -> Option<&str> {
        match (&self.known, &self.raw) {
            (Known::Shaped(s), Some(raw)) => Some(self.shaped_content(s, raw)),
            _ => self.choices().first()?.delta.content.as_deref(),
        }
    }

    /// The finish reason of choice 0, if any.
    pub fn finish_reason(&self) -> Option<&str> {
        match &self.known {
            Known::Shaped(s) => s.choice.finish_reason.as_deref(),
            _ => self.choices().first()?.finish_reason.as_deref(),
        }
    }

    /// The token usage, on the last chunk.
    pub fn usage(&self) -> Option<&Usage> {
        match &self.known {
            Known::Shaped(_) => None,
            Known::Tailed(t) => t.usage.as_ref(),
            Known::Typed => self.chunk().usage.as_ref(),
        }
    }

    /// Choice 0's fields but its content ([`content`](Self::content) reads that): for a
    /// chunk the decoder read by its shape, the choice the shape holds (its index, role,
    /// reasoning, tool calls, finish reason, log probabilities), without building the typed
    /// chunk; its `delta.content` is the shape's, not this chunk's.
    pub fn choice_fields(&self) -> Option<&ChunkChoice> {
        match &self.known {
            Known::Shaped(s) => Some(&s.choice),
            _ => self.choices().first(),
        }
    }

    /// How many choices the chunk holds (none on a usage-only chunk).
    pub fn choice_count(&self) -> usize {
        match &self.known {
            Known::Shaped(_) => 1,
            _ => self.choices().len(),
        }
    }

    /// The choices of a chunk that is not shaped: a tailed one's, without building it.
    fn choices(&self) -> &[ChunkChoice] {
        match &self.known {
            Known::Tailed(t) => &t.choices,
            _ => &self.chunk().choices,
        }
    }

    /// The stream's head, for a chunk the decoder read past it.
    fn head(&self) -> Option<&HeadFields> {
        match &self.known {
            Known::Shaped(s) => Some(&s.head),
            Known::Tailed(t) => Some(&t.head),
            Known::Typed => None,
        }
    }

    /// The generation id.
    pub fn id(&self) -> &str {
        match self.head() {
            Some(h) => &h.id,
            None => &self.chunk().id,
        }
    }

    /// `chat.completion.chunk`, when sent.
    pub fn object(&self) -> &str {
        match self.head() {
            Some(h) => &h.object,
            None => &self.chunk().object,
        }
    }

    /// Unix seconds, when sent.
    pub fn created(&self) -> u64 {
        match self.head() {
            Some(h) => h.created,
            None => self.chunk().created,
        }
    }

    /// The model that served.
    pub fn model(&self) -> &str {
        match self.head() {
            Some(h) => &h.model,
            None => &self.chunk().model,
        }
    }

    /// The upstream provider's display name.
    pub fn provider(&self) -> Option<&str> {
        match self.head() {
            Some(h) => h.provider.as_deref(),
            None => self.chunk().provider.as_deref(),
        }
    }

    /// The typed chunk, built on first read.
    fn chunk(&self) -> &ChatChunk {
        self.parsed.get_or_init(|| Box::new(self.build()))
    }

    /// Whether the typed chunk was built (for tests of what reading costs).
    #[doc(hidden)]
    pub fn is_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }

    /// About how many bytes this chunk holds: the upstream bytes when it has them, else its
    /// text fields.
    pub fn weight(&self) -> usize {
        if let Some(raw) = &self.raw {
            return std::mem::size_of::<StreamChunk>() + raw.len();
        }
        let c = self.chunk();
        let text: usize = c
            .choices
            .iter()
            .map(|ch| {
                ch.delta.content.as_ref().map_or(0, String::len)
                    + ch.delta.reasoning.as_ref().map_or(0, String::len)
                    + ch.delta.tool_calls.as_ref().map_or(0, |t| {
                        t.iter()
                            .filter_map(|t| t.function.as_ref()?.arguments.as_ref())
                            .map(String::len)
                            .sum()
                    })
            })
            .sum();
        std::mem::size_of::<StreamChunk>()
            + std::mem::size_of::<ChatChunk>()
            + c.id.len()
            + c.model.len()
            + text
    }

    /// Appends the chunk's JSON to `out`: the upstream bytes when it has them, else its
    /// fields as [`ChatChunk::write_json`] writes them.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match &self.raw {
            Some(raw) => out.extend_from_slice(raw),
            None => self.chunk().write_json(out),
        }
    }

    /// [`write_json`](Self::write_json) through a stream's [`ChunkWriter`] (which writes the
    /// head a stream's built chunks repeat once).
    pub fn write_with(&self, writer: &mut ChunkWriter, out: &mut Vec<u8>) {
        match &self.raw {
            Some(raw) => out.extend_from_slice(raw),
            None => writer.write(self.chunk(), out),
        }
    }
}

impl Deref for StreamChunk {
    type Target = ChatChunk;

    fn deref(&self) -> &ChatChunk {
        self.chunk()
    }
}

impl From<ChatChunk> for StreamChunk {
    fn from(chunk: ChatChunk) -> StreamChunk {
        StreamChunk::new(chunk)
    }
}

impl From<StreamChunk> for ChatChunk {
    fn from(chunk: StreamChunk) -> ChatChunk {
        chunk.into_chunk()
    }
}

/// Equal when the typed chunks are: the same answer, whether or not it still has the bytes
/// it came as.
impl PartialEq for StreamChunk {
    fn eq(&self, other: &StreamChunk) -> bool {
        self.chunk() == other.chunk()
    }
}

impl PartialEq<ChatChunk> for StreamChunk {
    fn eq(&self, other: &ChatChunk) -> bool {
        self.chunk() == other
    }
}

impl fmt::Debug for StreamChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamChunk")
            .field("chunk", self.chunk())
            .field("raw", &self.raw.as_ref().map(Bytes::len))
            .finish()
    }
}
