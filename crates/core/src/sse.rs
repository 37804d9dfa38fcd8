//! A byte-level, incremental server-sent events parser (WHATWG §9.2.5–9.2.6), bounded.
//!
//! - CR, LF and CRLF line endings, mixed, with a CRLF split across chunks;
//! - one leading byte-order mark is stripped, even when split across chunks;
//! - comment lines (`:`) are ignored; `data` lines are joined with LF;
//! - an event without its final blank line at end of input is discarded;
//! - every input byte is scanned once (no re-scan of a partial line), so a long line cut
//!   into many chunks costs linear time;
//! - an event larger than [`SseParser::with_max_event_size`] (default 4 MiB) yields a typed
//!   error and the rest of that event is skipped without being buffered;
//! - an event whose data is not UTF-8 yields a typed error for that event only.
//!
//! The common case is allocation-free: a one-line event that arrives inside one chunk is a
//! slice of that chunk's [`Bytes`].
//!
//! ```
//! use bytes::Bytes;
//! use llm_layers_core::sse::SseParser;
//! let mut p = SseParser::new();
//! p.push(Bytes::from_static(b": OPENROUTER PROCESSING\n\ndata: {\"a\""));
//! assert!(p.next_event().is_none()); // the comment yields nothing; the event is partial
//! p.push(Bytes::from_static(b":1}\r\n\r\n"));
//! let ev = p.next_event().ok_or("no event")??;
//! assert_eq!(ev.data(), r#"{"a":1}"#);
//! assert!(p.next_event().is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use bytes::{Bytes, BytesMut};

/// The default maximum size of one event: 4 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 4 * 1024 * 1024;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Clone, PartialEq, Eq)]
pub struct SseEvent {
    event: Option<Box<str>>,
    data: Bytes,
}

impl SseEvent {
    /// The event's data: its `data` lines joined with LF (valid UTF-8).
    pub fn data(&self) -> &str {
        // SAFETY: `data` was validated as UTF-8 by the parser before this event was built,
        // and it is never mutated afterwards.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.data)
        }
    }

    /// The event's data as shared bytes.
    pub fn data_bytes(&self) -> &Bytes {
        &self.data
    }

    /// The event's data, taken (a slice of the chunk it came in when it came in one).
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The `event` field; `None` means the default type `message`.
    pub fn event_type(&self) -> Option<&str> {
        self.event.as_deref()
    }
}

impl fmt::Debug for SseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("event", &self.event)
            .field("data", &self.data())
            .finish()
    }
}

/// What went wrong with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseError {
    /// The event grew past the limit; the rest of it was skipped.
    Oversize {
        /// The configured maximum, in bytes.
        limit: usize,
    },
    /// The event's data was not valid UTF-8; the event was dropped.
    InvalidUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::Oversize { limit } => write!(f, "SSE event larger than {limit} bytes"),
            SseError::InvalidUtf8 => f.write_str("SSE event is not valid UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

impl From<SseError> for crate::LlmError {
    fn from(e: SseError) -> Self {
        let kind = match e {
            SseError::Oversize { .. } => crate::ProtocolKind::Oversize,
            SseError::InvalidUtf8 => crate::ProtocolKind::Utf8,
        };
        crate::LlmError::protocol(kind, e.to_string())
    }
}

/// The incremental parser. Feed chunks with [`push`](SseParser::push), take events with
/// [`next_event`](SseParser::next_event) until it returns `None`, then push more.
#[derive(Debug)]
pub struct SseParser {
    max_event_size: usize,
    /// The chunk being parsed, and how far.
    chunk: Bytes,
    pos: usize,
    /// A line cut by a chunk boundary.
    line: BytesMut,
    /// The first `data` line of the event, as a zero-copy slice.
    first_data: Option<Bytes>,
    /// The joined `data` lines, once there are two (`joined`).
    data: BytesMut,
    joined: bool,
    event_type: Option<Box<str>>,
    last_event_id: Option<String>,
    retry: Option<u64>,
    /// Bytes of the event so far, against the limit.
    event_size: usize,
    /// After an oversize error: skip to the end of the event.
    discarding: bool,
    /// The partial line was dropped (oversize): the next line end closes it.
    line_dropped: bool,
    /// The last line ended with CR: an LF right after it belongs to it.
    skip_lf: bool,
    /// How many bytes of a leading BOM matched so far; `None` once decided.
    bom: Option<u8>,
    scanned: u64,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser with the default maximum event size (4 MiB).
    pub fn new() -> SseParser {
        SseParser::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A parser that refuses events larger than `max` bytes (at least 1).
    pub fn with_max_event_size(max: usize) -> SseParser {
        SseParser {
            max_event_size: max.max(1),
            chunk: Bytes::new(),
            pos: 0,
            line: BytesMut::new(),
            first_data: None,
            data: BytesMut::new(),
            joined: false,
            event_type: None,
            last_event_id: None,
            retry: None,
            event_size: 0,
            discarding: false,
            line_dropped: false,
            skip_lf: false,
            bom: Some(0),
            scanned: 0,
        }
    }

    /// Adds a chunk of input. Events are then taken with [`next_event`](Self::next_event);
    /// input not yet parsed when `push` is called again is kept, in order.
    pub fn push(&mut self, chunk: Bytes) {
        if self.pos < self.chunk.len() {
            let mut joined = BytesMut::with_capacity(self.chunk.len() - self.pos + chunk.len());
            joined.extend_from_slice(&self.chunk[self.pos..]);
            joined.extend_from_slice(&chunk);
            self.chunk = joined.freeze();
        } else {
            self.chunk = chunk;
        }
        self.pos = 0;
    }

    /// The next complete event, or `None` when more input is needed.
    pub fn next_event(&mut self) -> Option<Result<SseEvent, SseError>> {
        if self.bom.is_some() && !self.strip_bom() {
            return None;
        }
        loop {
            if self.skip_lf && self.pos < self.chunk.len() {
                self.skip_lf = false;
                if self.chunk[self.pos] == b'\n' {
                    self.pos += 1;
                }
            }
            let rest = &self.chunk[self.pos..];
            if rest.is_empty() {
                self.release_chunk();
                return None;
            }
            let Some(eol) = memchr::memchr2(b'\r', b'\n', rest) else {
                self.scanned += rest.len() as u64;
                return self.buffer_partial_line();
            };
            self.scanned += eol as u64 + 1;
            self.skip_lf = rest[eol] == b'\r';
            let start = self.pos;
            self.pos += eol + 1;
            if self.line_dropped {
                // The tail of a line already dropped as oversize.
                self.line_dropped = false;
                continue;
            }
            let line = if self.line.is_empty() {
                self.chunk.slice(start..start + eol)
            } else {
                self.line.extend_from_slice(&self.chunk[start..start + eol]);
                self.line.split().freeze()
            };
            if let Some(out) = self.process_line(line) {
                return Some(out);
            }
        }
    }

    /// Ends the input. An event without its final blank line is discarded, as the spec
    /// says; returns whether there was one.
    pub fn finish(&mut self) -> bool {
        let partial = !self.line.is_empty()
            || self.pos < self.chunk.len()
            || self.first_data.is_some()
            || self.joined
            || self.event_size > 0
            || self.discarding;
        self.reset_event();
        self.discarding = false;
        self.line_dropped = false;
        self.line.clear();
        self.chunk = Bytes::new();
        self.pos = 0;
        partial
    }

    /// The last event id seen (`id` field); it persists across events.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The reconnection time (`retry` field, in ms), if one was sent.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// How many input bytes were scanned for line ends: each byte at most once.
    pub fn bytes_scanned(&self) -> u64 {
        self.scanned
    }

    /// How many bytes the parser holds for partial lines and events (bounded by the
    /// maximum event size).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len() + self.first_data.as_ref().map_or(0, Bytes::len)
    }

    /// False while the input so far could still be the start of a BOM.
    fn strip_bom(&mut self) -> bool {
        let Some(mut matched) = self.bom else {
            return true;
        };
        while (matched as usize) < BOM.len() {
            let Some(&b) = self.chunk.get(self.pos) else {
                self.bom = Some(matched);
                return false;
            };
            if b != BOM[matched as usize] {
                // Not a BOM after all: the bytes taken so far are content.
                self.line.extend_from_slice(&BOM[..matched as usize]);
                self.bom = None;
                return true;
            }
            matched += 1;
            self.pos += 1;
        }
        self.bom = None;
        true
    }

    fn buffer_partial_line(&mut self) -> Option<Result<SseEvent, SseError>> {
        let rest = self.chunk.len() - self.pos;
        let mut out = None;
        if self.discarding || self.line_dropped {
            self.line_dropped = true;
        } else if self.event_size + self.line.len() + rest > self.max_event_size {
            self.line.clear();
            self.line_dropped = true;
            out = Some(self.start_discarding());
        } else {
            self.line.extend_from_slice(&self.chunk[self.pos..]);
        }
        self.release_chunk();
        out
    }

    /// Lets go of a chunk read to its end. It is a slice of the HTTP client's read buffer:
    /// held while a stream idles, it would keep that buffer from being reused (hyper then
    /// allocates another for the connection's next read).
    fn release_chunk(&mut self) {
        self.chunk = Bytes::new();
        self.pos = 0;
    }

    fn start_discarding(&mut self) -> Result<SseEvent, SseError> {
        self.reset_event();
        self.discarding = true;
        Err(SseError::Oversize {
            limit: self.max_event_size,
        })
    }

    fn reset_event(&mut self) {
        self.first_data = None;
        self.data.clear();
        self.joined = false;
        self.event_type = None;
        self.event_size = 0;
    }

    fn process_line(&mut self, line: Bytes) -> Option<Result<SseEvent, SseError>> {
        if line.is_empty() {
            if self.discarding {
                self.discarding = false;
                self.reset_event();
                return None;
            }
            return self.dispatch();
        }
        if self.discarding || line[0] == b':' {
            return None;
        }
        if self.event_size + line.len() > self.max_event_size {
            return Some(self.start_discarding());
        }
        self.event_size += line.len() + 1;
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(i) => {
                let v = if line.get(i + 1) == Some(&b' ') {
                    i + 2
                } else {
                    i + 1
                };
                (&line[..i], line.slice(v..))
            }
            None => (&line[..], Bytes::new()),
        };
        match field {
            b"data" => {
                if self.joined {
                    self.data.extend_from_slice(b"\n");
                    self.data.extend_from_slice(&value);
                } else if let Some(first) = self.first_data.take() {
                    self.data.extend_from_slice(&first);
                    self.data.extend_from_slice(b"\n");
                    self.data.extend_from_slice(&value);
                    self.joined = true;
                } else {
                    self.first_data = Some(value);
                }
            }
            b"event" => self.event_type = Some(String::from_utf8_lossy(&value).into()),
            b"id" if !value.contains(&0) => {
                self.last_event_id = Some(String::from_utf8_lossy(&value).into_owned());
            }
            // All ASCII digits: parsing fails only on overflow, and then it is ignored.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = String::from_utf8_lossy(&value).parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Result<SseEvent, SseError>> {
        let data = if self.joined {
            self.data.split().freeze()
        } else if let Some(first) = self.first_data.take() {
            first
        } else {
            // No data field: nothing fires (a comment-only or metadata-only block).
            self.reset_event();
            return None;
        };
        let event = self.event_type.take();
        self.reset_event();
        if std::str::from_utf8(&data).is_err() {
            return Some(Err(SseError::InvalidUtf8));
        }
        Some(Ok(SseEvent { event, data }))
    }
}
