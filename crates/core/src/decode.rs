//! [`SseChatDecoder`]: an HTTP body of server-sent events in, [`ChatChunk`]s out.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use http_body::Body;
use tokio::time::Instant;

use crate::chunk::{ChatChunk, StreamChunk};
use crate::collect::choice_error;
use crate::error::{ApiError, BoxError, ErrorKind, LlmError, ProtocolKind};
use crate::sse::SseParser;

mod head;
mod shape;
use head::{Decoded, HeadCache};

pin_project_lite::pin_project! {
    /// Decodes an OpenRouter (OpenAI-compatible) event stream into chunks.
    ///
    /// - keep-alive comments (`: OPENROUTER PROCESSING`) yield nothing, but mark the first
    ///   byte;
    /// - `data: [DONE]` ends the stream cleanly;
    /// - a `data` event with a top-level `error`, or a choice with `finish_reason: "error"`,
    ///   is an `Err` item ([`ErrorKind::Upstream`]) and ends the stream;
    /// - a body that ends (or breaks) without `[DONE]` yields `Err` ([`ErrorKind::Truncated`]);
    /// - an oversize event, invalid UTF-8 or JSON that is not a chunk is an `Err`
    ///   ([`ErrorKind::Protocol`]) and ends the stream.
    ///
    /// After its first `Err` or its clean end it yields `None` forever.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use llm_layers_core::{ChatStream, ResponseMeta, decode::SseChatDecoder};
    /// let body = Full::new(Bytes::from_static(
    ///     b": OPENROUTER PROCESSING\n\n\
    ///       data: {\"id\":\"gen-1\",\"provider\":\"OpenAI\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
    ///       data: [DONE]\n\n",
    /// ));
    /// let stream = ChatStream::commit(SseChatDecoder::new(body), ResponseMeta::default()).await?;
    /// assert_eq!(stream.meta().provider.as_deref(), Some("OpenAI"));
    /// let done = stream.collect().await?;
    /// assert_eq!(done.choices[0].message.content.as_deref(), Some("Hi"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct SseChatDecoder<B> {
        #[pin]
        body: B,
        parser: SseParser,
        done: bool,
        first_byte: Option<Instant>,
        // When the bytes being parsed arrived: every chunk read from them is stamped with it.
        read_at: Option<Instant>,
        head: HeadCache,
    }
}

impl<B> std::fmt::Debug for SseChatDecoder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseChatDecoder")
            .field("done", &self.done)
            .field("first_byte", &self.first_byte)
            .finish()
    }
}

impl<B> SseChatDecoder<B> {
    /// A decoder with the default maximum event size (4 MiB).
    pub fn new(body: B) -> Self {
        SseChatDecoder::with_parser(body, SseParser::new())
    }

    /// A decoder using `parser` (e.g. with another maximum event size).
    pub fn with_parser(body: B, parser: SseParser) -> Self {
        SseChatDecoder {
            body,
            parser,
            done: false,
            first_byte: None,
            read_at: None,
            head: HeadCache::default(),
        }
    }

    /// When the first body bytes arrived.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }
}

/// Parses the data of one event into a chunk, or the error it carries.
/// `Ok(None)` is the `[DONE]` sentinel.
pub fn decode_event(data: &[u8]) -> Result<Option<ChatChunk>, LlmError> {
    let text = std::str::from_utf8(data).map_err(|e| {
        LlmError::protocol(ProtocolKind::Utf8, "event data is not UTF-8").with_source(e)
    })?;
    decode_event_str(text)
}

/// [`decode_event`] for data already known to be UTF-8 (an [`SseEvent`]'s): the JSON
/// parser then checks no string again, a fifth of the work on a typical chunk.
///
/// [`SseEvent`]: crate::sse::SseEvent
pub fn decode_event_str(text: &str) -> Result<Option<ChatChunk>, LlmError> {
    if text.starts_with("[DONE]") {
        return Ok(None);
    }
    checked(parse_whole(text)?, text).map(Some)
}

pub(crate) fn parse_whole(text: &str) -> Result<ChatChunk, LlmError> {
    serde_json::from_str(text)
        .or_else(|e| match in_range(text) {
            // JSON allows numbers no `f64` holds (`1e400`), which `serde_json::Value` refuses:
            // the typed reading takes them as `null` (the bytes relayed keep them).
            Some(t) => serde_json::from_str(&t).map_err(|_| e),
            None => Err(e),
        })
        .map_err(|e| {
            LlmError::protocol(ProtocolKind::Json, format!("bad chunk JSON: {e}")).with_source(e)
        })
}

/// `text` with every number outside `f64`'s range (outside strings) written as `null`;
/// `None` when there is none.
fn in_range(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &text[start..i];
                if number.parse::<f64>().is_ok_and(f64::is_infinite) {
                    let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    o.push_str(&text[copied..start]);
                    o.push_str("null");
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    let mut o = out?;
    o.push_str(&text[copied..]);
    Some(o)
}

/// The chunk, or the error it is or carries.
pub(crate) fn checked(chunk: ChatChunk, text: &str) -> Result<ChatChunk, LlmError> {
    if passes_as_is(&chunk.choices, chunk.usage.is_some(), chunk.error.is_some()) {
        return Ok(chunk);
    }
    let data = text.as_bytes();
    if chunk.choices.is_empty()
        && chunk.usage.is_none()
        && chunk.error.is_none()
        && memchr::memmem::find(data, b"\"choices\"").is_none()
    {
        return Err(shapeless(data, &chunk));
    }
    if let Some(err) = crate::collect::carried_error(&chunk) {
        return Err(err);
    }
    if let Some(c) = chunk
        .choices
        .iter()
        .find(|c| c.finish_reason.as_deref() == Some("error"))
    {
        return Err(choice_error(c.error.as_ref(), chunk.provider.as_deref()));
    }
    Ok(chunk)
}

/// Whether a chunk with these parts is one [`checked`] passes without a look at its bytes:
/// choices or usage, and no error carried, in the chunk or a choice.
pub(crate) fn passes_as_is(choices: &[crate::ChunkChoice], usage: bool, error: bool) -> bool {
    !error
        && (!choices.is_empty() || usage)
        && !choices
            .iter()
            .any(|c| c.finish_reason.as_deref() == Some("error"))
}

/// The error for an event with neither `choices`, `usage` nor `error`: an
/// OpenAI-compatible server's `{"object":"error", "message": ...}` is an upstream error;
/// anything else that lacks a chunk's shape is a protocol error. `"choices": []` alone (a
/// role-less header chunk, OpenRouter's debug echo) is a chunk, not an error.
fn shapeless(data: &[u8], chunk: &ChatChunk) -> LlmError {
    if chunk.object == "error" {
        let api = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| ApiError::from_value(&v))
            .unwrap_or_default();
        return LlmError::upstream(api);
    }
    LlmError::protocol(
        ProtocolKind::Json,
        "an event with neither choices, usage nor error is not a chat chunk",
    )
}

impl<B> Stream for SseChatDecoder<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            if let Some(ev) = this.parser.next_event() {
                let at = *this.read_at;
                let out = ev.map_err(LlmError::from).and_then(|ev| {
                    Ok(this.head.decode(ev.data())?.map(|d| {
                        let chunk = match d {
                            Decoded::Parsed(c) => StreamChunk::parsed(c, ev.into_data()),
                            Decoded::Shaped(s) => StreamChunk::shaped(ev.into_data(), s),
                            Decoded::Tailed(t) => StreamChunk::tailed(ev.into_data(), t),
                        };
                        match at {
                            Some(at) => chunk.at(at),
                            None => chunk,
                        }
                    }))
                });
                match out {
                    Ok(Some(chunk)) => return Poll::Ready(Some(Ok(chunk))),
                    Ok(None) => {
                        *this.done = true;
                        return Poll::Ready(None);
                    }
                    Err(e) => {
                        *this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            match ready!(this.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // The one clock read per network read: the layers after take it from
                        // the chunks (`StreamChunk::received`).
                        let now = Instant::now();
                        *this.read_at = Some(now);
                        if this.first_byte.is_none() {
                            *this.first_byte = Some(now);
                        }
                        this.parser.push(data);
                    }
                }
                Some(Err(e)) => {
                    *this.done = true;
                    let e = LlmError::new(ErrorKind::Truncated)
                        .with_message("connection broken mid-stream")
                        .with_source(e.into());
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    *this.done = true;
                    this.parser.finish();
                    return Poll::Ready(Some(Err(LlmError::truncated())));
                }
            }
        }
    }
}
