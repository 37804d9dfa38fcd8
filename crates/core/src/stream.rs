//! [`ChatStream`]: a committed answer (its first token already here) and the rest to come.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use tokio::time::Instant;

use crate::chunk::{
    ChatChunk, ChatCompletion, ChunkChoice, Delta, FunctionDelta, StreamChunk, ToolCallDelta,
};
use crate::collect::{Collector, completion_error};
use crate::error::LlmError;

/// A boxed stream of chunks: what [`ChatStream`] erases its source to.
pub type BoxChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk, LlmError>> + Send>>;

/// What is known about a response besides its chunks: what every layer needs (model,
/// provider, attempts, timings), and [`extensions`](Self::extensions) for what one layer
/// adds.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ResponseMeta {
    /// The model that served (from the first chunk).
    pub model: String,
    /// The provider that served (display name, from the stream's `provider` field).
    pub provider: Option<String>,
    /// The generation id (`X-Generation-Id`, or the chunks' `id`).
    pub generation_id: Option<String>,
    /// Which attempt served, counting from 1 (set by retry and hedge).
    pub attempt: u32,
    /// How many attempts were started in all for this call (retries plus hedges plus 1).
    pub attempts: u32,
    /// When things happened.
    pub timings: Timings,
    /// What one layer says about this response, typed by the layer's own crate, as
    /// `http::Response` carries extensions: the router's `Route`, the hedge's `HedgeWinner`.
    ///
    /// ```
    /// use llm_layers_core::ResponseMeta;
    /// #[derive(Clone, Debug, PartialEq)]
    /// struct CacheHit(bool);
    /// let mut meta = ResponseMeta::default();
    /// meta.extensions.insert(CacheHit(true));
    /// assert_eq!(meta.extensions.get::<CacheHit>(), Some(&CacheHit(true)));
    /// ```
    pub extensions: http::Extensions,
}

/// Instants of one call, from `tokio::time` (so they follow paused time in tests).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Timings {
    /// When the attempt that served was sent.
    pub started: Option<Instant>,
    /// When its first body byte arrived (a keep-alive comment counts).
    pub first_byte: Option<Instant>,
    /// When its first token arrived: the commit point.
    pub first_token: Option<Instant>,
}

impl Timings {
    /// Time to first token, when both ends are known.
    pub fn ttft(&self) -> Option<std::time::Duration> {
        Some(self.first_token?.saturating_duration_since(self.started?))
    }
}

/// A committed chat completion stream.
///
/// A service's response future resolves to a `ChatStream` at the **commit point**, when the
/// first token has arrived. The stream holds that chunk (and any role-only chunks before it)
/// and yields the rest. A failure after the commit point is an `Err` item; the stream ends
/// after it. A truncated upstream is an `Err` item too, never a clean end.
///
/// ```
/// # tokio_test_block_on(async {
/// use llm_layers_core::{ChatChunk, ChatStream, ChunkChoice, Delta};
/// fn chunk(text: &str, finish: Option<&str>) -> ChatChunk {
///     ChatChunk {
///         choices: vec![ChunkChoice {
///             delta: Delta { content: Some(text.into()), ..Default::default() },
///             finish_reason: finish.map(Into::into),
///             ..Default::default()
///         }],
///         ..Default::default()
///     }
/// }
/// let stream = ChatStream::from_chunks(vec![chunk("Hel", None), chunk("lo", Some("stop"))]);
/// let done = stream.collect().await?;
/// assert_eq!(done.choices[0].message.content.as_deref(), Some("Hello"));
/// assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().expect("a runtime").block_on(f)
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ChatStream {
    pending: Pending,
    inner: Option<BoxChunkStream>,
    /// Boxed, so the stream a layer wraps and each layer's future output stay small (they
    /// move through every layer); `None` once a wrapper took it.
    meta: Option<Box<ResponseMeta>>,
}

/// What [`ChatStream::meta`] reads when a stream has none (it was wrapped).
static NO_META: LazyLock<ResponseMeta> = LazyLock::new(ResponseMeta::default);

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("pending", &self.pending.len())
            .field("ended", &self.inner.is_none())
            .field("meta", self.meta())
            .finish()
    }
}

impl ChatStream {
    /// A stream from already-received chunks `pending` and the source of the rest.
    pub fn from_parts<S>(pending: VecDeque<StreamChunk>, rest: S, meta: ResponseMeta) -> ChatStream
    where
        S: Stream<Item = Result<StreamChunk, LlmError>> + Send + 'static,
    {
        ChatStream {
            pending: Pending::from(pending),
            inner: Some(Box::pin(rest)),
            meta: Some(Box::new(meta)),
        }
    }

    /// A finished stream of exactly these chunks (useful in tests and for cached answers):
    /// [`ChatChunk`]s, or [`StreamChunk`]s that keep the bytes they came as.
    pub fn from_chunks<C: Into<StreamChunk>>(chunks: impl IntoIterator<Item = C>) -> ChatStream {
        let chunks: VecDeque<StreamChunk> = chunks.into_iter().map(Into::into).collect();
        let mut meta = ResponseMeta::default();
        if let Some(c) = chunks.front() {
            meta.model.clone_from(&c.model);
            meta.provider.clone_from(&c.provider);
            if !c.id.is_empty() {
                meta.generation_id = Some(c.id.clone());
            }
        }
        ChatStream {
            pending: Pending::from(chunks),
            inner: None,
            meta: Some(Box::new(meta)),
        }
    }

    /// A finished stream with no chunks: an answer that ended before saying anything.
    pub fn empty() -> ChatStream {
        ChatStream::from_chunks(Vec::<StreamChunk>::new())
    }

    /// A stream that replays a whole (non-streamed) completion as chunks: one per choice
    /// with the whole message as its delta, then one with the usage.
    ///
    /// A completion carrying an `error` (a 200 with an error body, or a choice with
    /// `finish_reason: "error"`) is an error, not a stream.
    pub fn from_completion(c: ChatCompletion) -> Result<ChatStream, LlmError> {
        if let Some(err) = completion_error(&c) {
            return Err(err);
        }
        let mut chunks = Vec::with_capacity(c.choices.len() + 1);
        for choice in c.choices {
            let tool_calls = choice.message.tool_calls.map(|calls| {
                calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| ToolCallDelta {
                        index: i as u32,
                        id: Some(t.id),
                        kind: Some(t.kind),
                        function: Some(FunctionDelta {
                            name: Some(t.function.name),
                            arguments: Some(t.function.arguments),
                        }),
                    })
                    .collect()
            });
            chunks.push(ChatChunk {
                id: c.id.clone(),
                object: "chat.completion.chunk".into(),
                created: c.created,
                model: c.model.clone(),
                provider: c.provider.clone(),
                choices: vec![ChunkChoice {
                    index: choice.index,
                    delta: Delta {
                        role: Some(choice.message.role),
                        content: choice.message.content,
                        reasoning: choice.message.reasoning,
                        tool_calls,
                        extra: choice.message.extra,
                    },
                    finish_reason: choice.finish_reason,
                    native_finish_reason: choice.native_finish_reason,
                    logprobs: choice.logprobs,
                    error: None,
                }],
                system_fingerprint: c.system_fingerprint.clone(),
                ..ChatChunk::default()
            });
        }
        if c.usage.is_some() {
            chunks.push(ChatChunk {
                id: c.id.clone(),
                object: "chat.completion.chunk".into(),
                created: c.created,
                model: c.model.clone(),
                provider: c.provider.clone(),
                usage: c.usage,
                ..ChatChunk::default()
            });
        }
        Ok(ChatStream::from_chunks(chunks))
    }

    /// Waits for the commit point of `source`: resolves with a `ChatStream` once the first
    /// token (see [`ChatChunk::is_token`]) has arrived, or with the error that came first.
    /// A source that ends cleanly before any token commits an empty answer.
    pub fn commit<S>(source: S, meta: ResponseMeta) -> Commit<S>
    where
        S: Stream<Item = Result<StreamChunk, LlmError>> + Send + Unpin + 'static,
    {
        Commit {
            source: Some(source),
            pending: VecDeque::new(),
            meta: Some(Box::new(meta)),
            first_byte: None,
        }
    }

    /// What is known about the response.
    pub fn meta(&self) -> &ResponseMeta {
        self.meta.as_deref().unwrap_or(&NO_META)
    }

    /// What is known about the response, mutably (layers fill in attempts and timings).
    pub fn meta_mut(&mut self) -> &mut ResponseMeta {
        self.meta.get_or_insert_with(Box::default)
    }

    /// The chunks already received and not yet yielded (the commit chunk among them).
    pub fn pending(&self) -> impl Iterator<Item = &StreamChunk> {
        self.pending.iter()
    }

    /// Wraps this stream, keeping its meta: `f` gets the stream and returns the new source.
    /// Layers that watch or cut the stream (timeouts, latency) use it.
    #[must_use]
    pub fn wrap<S, F>(mut self, f: F) -> ChatStream
    where
        F: FnOnce(ChatStream) -> S,
        S: Stream<Item = Result<StreamChunk, LlmError>> + Send + 'static,
    {
        let meta = self.meta.take();
        ChatStream {
            pending: Pending::default(),
            inner: Some(Box::pin(f(self))),
            meta,
        }
    }

    /// Reads the whole stream into one [`ChatCompletion`]: content, reasoning and tool-call
    /// arguments concatenated per choice, the finish reason, the usage.
    ///
    /// Any `Err` item fails the whole call, and so does an answer in which some choice has no
    /// `finish_reason` (a [`Truncated`](crate::ErrorKind::Truncated) error): a partial answer
    /// is never returned as complete.
    pub async fn collect(mut self) -> Result<ChatCompletion, LlmError> {
        let mut acc = Collector::default();
        while let Some(item) = std::future::poll_fn(|cx| Pin::new(&mut self).poll_next(cx)).await {
            acc.push_item(item?)?;
        }
        acc.finish(self.meta().provider.as_deref())
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(c) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(c)));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // Returned as polled (no move of the item on the way out).
        let polled = inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Err(_)) | None) = &polled {
            // An error ends the stream; dropping the source cancels the upstream at once.
            self.inner = None;
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.pending.len();
        match &self.inner {
            Some(s) => (n + s.size_hint().0, None),
            None => (n, Some(n)),
        }
    }
}

/// The chunks a stream received and has not yielded yet: only a stream's innermost has any
/// (those read up to its commit), so every wrapper of it holds one pointer, not an empty
/// `VecDeque` (8 bytes, not 32, in each of the half-dozen wrappers of an open stream).
#[derive(Default)]
#[allow(
    clippy::box_collection,
    reason = "the point: one pointer in every wrapper, not an empty 32-byte VecDeque"
)]
struct Pending(Option<Box<VecDeque<StreamChunk>>>);

impl From<VecDeque<StreamChunk>> for Pending {
    fn from(chunks: VecDeque<StreamChunk>) -> Pending {
        Pending((!chunks.is_empty()).then(|| Box::new(chunks)))
    }
}

impl Pending {
    /// The next chunk; once the last is out, the room goes too: a stream that then idles for
    /// minutes should not hold room for four more (≈ 1 KiB).
    fn pop_front(&mut self) -> Option<StreamChunk> {
        let q = self.0.as_mut()?;
        let c = q.pop_front();
        if q.is_empty() {
            self.0 = None;
        }
        c
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn iter(&self) -> impl Iterator<Item = &StreamChunk> {
        self.0.iter().flat_map(|q| q.iter())
    }
}

/// The future of [`ChatStream::commit`]: resolves at the first token.
pub struct Commit<S> {
    source: Option<S>,
    pending: VecDeque<StreamChunk>,
    meta: Option<Box<ResponseMeta>>,
    first_byte: Option<fn(&S) -> Option<Instant>>,
}

impl<S> fmt::Debug for Commit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commit")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<S> Commit<S> {
    /// Reads the first-byte instant from the source at commit (e.g.
    /// [`SseChatDecoder::first_byte`](crate::decode::SseChatDecoder::first_byte)), so that
    /// keep-alive comments before the first token count as first byte, not first token.
    #[must_use]
    pub fn first_byte_from(mut self, f: fn(&S) -> Option<Instant>) -> Self {
        self.first_byte = Some(f);
        self
    }
}

impl<S> Future for Commit<S>
where
    S: Stream<Item = Result<StreamChunk, LlmError>> + Send + Unpin + 'static,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let source = this
            .source
            .as_mut()
            .expect("Commit polled after completion");
        loop {
            match ready!(Pin::new(&mut *source).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    let token = chunk.is_token();
                    if this.pending.is_empty() {
                        note_first_chunk(this.meta.as_deref_mut(), &chunk);
                    }
                    this.pending.push_back(chunk);
                    if token {
                        return Poll::Ready(Ok(this.finish(true)));
                    }
                }
                Some(Err(e)) => {
                    this.source = None;
                    return Poll::Ready(Err(e));
                }
                None => return Poll::Ready(Ok(this.finish(false))),
            }
        }
    }
}

impl<S> Commit<S>
where
    S: Stream<Item = Result<StreamChunk, LlmError>> + Send + Unpin + 'static,
{
    fn finish(&mut self, more: bool) -> ChatStream {
        let now = Instant::now();
        let mut meta = self.meta.take().unwrap_or_default();
        meta.timings.first_token = Some(now);
        let source = self.source.take();
        if let (Some(f), Some(s)) = (self.first_byte, source.as_ref()) {
            meta.timings.first_byte = f(s);
        }
        meta.timings.first_byte.get_or_insert(now);
        ChatStream {
            pending: Pending::from(std::mem::take(&mut self.pending)),
            inner: if more {
                source.map(|s| Box::pin(s) as BoxChunkStream)
            } else {
                None
            },
            meta: Some(meta),
        }
    }
}

fn note_first_chunk(meta: Option<&mut ResponseMeta>, chunk: &StreamChunk) {
    let Some(meta) = meta else { return };
    if meta.model.is_empty() {
        chunk.model().clone_into(&mut meta.model);
    }
    if meta.provider.is_none() {
        meta.provider = chunk.provider().map(str::to_owned);
    }
    if meta.generation_id.is_none() && !chunk.id().is_empty() {
        meta.generation_id = Some(chunk.id().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn chunk_of(t: &str) -> ChatChunk {
        serde_json::from_value(serde_json::json!({
            "choices": [{"index": 0, "delta": {"content": t}}]
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_room_of_chunks_read_before_the_commit_is_freed_once_they_are_out() {
        let pending: VecDeque<StreamChunk> = [chunk_of("a").into(), chunk_of("b").into()].into();
        let rest = futures_util::stream::iter([Ok(chunk_of("c").into())]);
        let mut s = ChatStream::from_parts(pending, rest, ResponseMeta::default());
        assert_eq!(s.pending.len(), 2);
        let a = s.next().await.unwrap().unwrap();
        assert_eq!(a.content(), Some("a"));
        assert!(s.pending.0.is_some(), "one chunk still waits");
        let b = s.next().await.unwrap().unwrap();
        assert_eq!(b.content(), Some("b"));
        assert!(s.pending.0.is_none(), "an idle stream holds no room");
        let c = s.next().await.unwrap().unwrap();
        assert_eq!(c.content(), Some("c"));
        assert!(s.next().await.is_none());
    }

    #[test]
    fn a_wrapper_of_a_stream_holds_one_pointer_for_the_chunks_it_never_has() {
        assert_eq!(std::mem::size_of::<Pending>(), 8);
        let wrapped = ChatStream::from_chunks([chunk_of("a")]).wrap(|s| s);
        assert!(wrapped.pending.0.is_none());
        let rest = futures_util::stream::empty();
        let fresh = ChatStream::from_parts(VecDeque::new(), rest, ResponseMeta::default());
        assert!(fresh.pending.0.is_none());
    }
}
