//! [`MockChat`]: a scripted in-process `Service<ChatRequest>` for unit tests of one layer.

use llm_layers_core::sync::lock;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use llm_layers_core::{
    ChatChunk, ChatRequest, ChatStream, ChunkChoice, Commit, Delta, LlmError, ResponseMeta,
    StreamChunk, Usage,
};
use tokio::time::{Instant, Sleep};

/// One step of a [`Script`].
#[derive(Debug, Clone)]
enum Step {
    Wait(Duration),
    Chunk(Box<ChatChunk>),
    Fail(LlmError),
    Hang,
}

/// What one call of a [`MockChat`] does, step by step, on `tokio::time` (so it runs under
/// `tokio::time::pause()` in no wall-clock time).
///
/// The call's future resolves at the first token step (the commit point); a `fail` before
/// it fails the future, a `fail` after it is an `Err` item on the stream. A script that runs
/// out of steps ends the stream cleanly.
///
/// ```
/// use std::time::Duration;
/// use llm_layers_core::{ErrorKind, LlmError};
/// use llm_layers_mock::Script;
/// // 1 s to the first token, then two more 100 ms apart, then a clean end.
/// let ok = Script::new().provider("Alpha").wait(Duration::from_secs(1))
///     .token("a").wait(Duration::from_millis(100)).token("b").finish("stop");
/// // An error before the first token.
/// let err = Script::error(LlmError::status(http::StatusCode::BAD_GATEWAY, None));
/// // Two tokens, then the connection breaks.
/// let cut = Script::new().token("a").token("b").fail(LlmError::truncated());
/// # let _ = (ok, err, cut);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Script {
    steps: Vec<Step>,
    provider: Option<String>,
    model: Option<String>,
}

impl Script {
    /// An empty script: the stream ends at once (an empty answer).
    pub fn new() -> Script {
        Script::default()
    }

    /// A script that fails before any token.
    pub fn error(e: LlmError) -> Script {
        Script::new().fail(e)
    }

    /// A script that answers `n` tokens (`"t0 "`, `"t1 "`, ...) after `ttft`, `gap` apart,
    /// then finishes with `stop`.
    pub fn tokens(ttft: Duration, n: usize, gap: Duration) -> Script {
        let mut s = Script::new().wait(ttft);
        for i in 0..n {
            if i > 0 {
                s = s.wait(gap);
            }
            s = s.token(format!("t{i} "));
        }
        s.finish("stop")
    }

    /// Names the provider that serves (in every chunk's `provider` field).
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.provider = Some(name.into());
        self
    }

    /// Names the model that serves (default: the request's model).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Waits `d` (on tokio time).
    pub fn wait(mut self, d: Duration) -> Self {
        self.steps.push(Step::Wait(d));
        self
    }

    /// Sends a chunk whose delta has `role: assistant` and empty content (not a token).
    pub fn role(self) -> Self {
        self.chunk(ChatChunk {
            choices: vec![ChunkChoice {
                delta: Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                ..ChunkChoice::default()
            }],
            ..ChatChunk::default()
        })
    }

    /// Sends a content token.
    pub fn token(self, text: impl Into<String>) -> Self {
        self.chunk(ChatChunk {
            choices: vec![ChunkChoice {
                delta: Delta {
                    content: Some(text.into()),
                    ..Delta::default()
                },
                ..ChunkChoice::default()
            }],
            ..ChatChunk::default()
        })
    }

    /// Sends a chunk with a finish reason.
    pub fn finish(self, reason: impl Into<String>) -> Self {
        self.chunk(ChatChunk {
            choices: vec![ChunkChoice {
                finish_reason: Some(reason.into()),
                ..ChunkChoice::default()
            }],
            ..ChatChunk::default()
        })
    }

    /// Sends the usage chunk (empty `choices`).
    pub fn usage(self, prompt: u64, completion: u64) -> Self {
        self.chunk(ChatChunk {
            usage: Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt.saturating_add(completion),
                ..Usage::default()
            }),
            ..ChatChunk::default()
        })
    }

    /// Sends any chunk (the provider and model are filled in if empty).
    pub fn chunk(mut self, chunk: ChatChunk) -> Self {
        self.steps.push(Step::Chunk(Box::new(chunk)));
        self
    }

    /// Fails: the future (before the first token) or the stream (after it).
    pub fn fail(mut self, e: LlmError) -> Self {
        self.steps.push(Step::Fail(e));
        self
    }

    /// Never sends anything more.
    pub fn hang(mut self) -> Self {
        self.steps.push(Step::Hang);
        self
    }
}

/// Makes the script of a call from its request (see [`MockChat::from_fn`]).
type Generator = dyn Fn(&ChatRequest) -> Script + Send + Sync;

#[derive(Default)]
struct State {
    queue: Mutex<VecDeque<Script>>,
    generator: Option<Box<Generator>>,
    fallback: Mutex<Option<Script>>,
    requests: Mutex<Vec<ChatRequest>>,
    calls: AtomicUsize,
    open: AtomicUsize,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
    /// The readiness gate: `poll_ready` is `Pending` while closed.
    gate: Mutex<Gate>,
}

#[derive(Default)]
struct Gate {
    closed: bool,
    waiters: Vec<Waker>,
}

/// A scripted chat service. Clones share the script queue and the records.
///
/// Each call takes the next queued [`Script`] (or the default one), records the request,
/// and plays the script. It counts open, completed and cancelled streams, so a test can
/// prove a layer dropped what it should.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
/// use std::time::Duration;
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_mock::{MockChat, Script};
/// use tower::ServiceExt;
/// let mock = MockChat::new();
/// mock.push(Script::tokens(Duration::from_secs(2), 3, Duration::from_millis(10)));
/// let start = tokio::time::Instant::now();
/// let stream = mock.clone().oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
/// assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(2)); // at the first token
/// let done = stream.collect().await?;
/// assert_eq!(done.choices[0].message.content.as_deref(), Some("t0 t1 t2 "));
/// assert_eq!(mock.requests().len(), 1);
/// assert_eq!(mock.completed(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct MockChat {
    state: Arc<State>,
}

impl fmt::Debug for MockChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockChat")
            .field("calls", &self.calls())
            .field("open", &self.open_streams())
            .finish_non_exhaustive()
    }
}

impl MockChat {
    /// A mock with no scripts: calls answer an empty stream until scripts are pushed.
    pub fn new() -> MockChat {
        MockChat::default()
    }

    /// A mock that plays `script` for every call that finds the queue empty.
    pub fn with_default(script: Script) -> MockChat {
        let m = MockChat::new();
        m.set_default(script);
        m
    }

    /// A mock whose every call plays the script `f` makes of its request (when the queue is
    /// empty): see [`MockChat::scenario`] for a mock upstream drawn from a
    /// [`Scenario`](crate::Scenario) with no sockets.
    pub fn from_fn(f: impl Fn(&ChatRequest) -> Script + Send + Sync + 'static) -> MockChat {
        MockChat {
            state: Arc::new(State {
                generator: Some(Box::new(f)),
                ..State::default()
            }),
        }
    }

    /// Queues a script for a future call (first in, first out).
    pub fn push(&self, script: Script) {
        lock(&self.state.queue).push_back(script);
    }

    /// Sets the script played when the queue is empty.
    pub fn set_default(&self, script: Script) {
        *lock(&self.state.fallback) = Some(script);
    }

    /// Every request seen, in call order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many calls were made.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Streams (or pending calls) not yet finished or dropped.
    pub fn open_streams(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Calls or streams dropped before they finished.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Streams that ran to their end (cleanly or with an error step).
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Closes (`false`) or opens (`true`) the readiness gate of every clone: while closed,
    /// `poll_ready` is `Pending`, as a saturated service's would be, and opening it wakes
    /// the callers waiting. For testing what a layer does with an inner service that is not
    /// ready. Open at first.
    ///
    /// ```
    /// use std::task::{Context, Waker};
    /// use llm_layers_mock::MockChat;
    /// use tower::Service;
    /// let mut mock = MockChat::new();
    /// let mut cx = Context::from_waker(Waker::noop());
    /// mock.set_ready(false);
    /// assert!(mock.poll_ready(&mut cx).is_pending());
    /// mock.set_ready(true);
    /// assert!(mock.poll_ready(&mut cx).is_ready());
    /// ```
    pub fn set_ready(&self, ready: bool) {
        let waiters = {
            let mut g = lock(&self.state.gate);
            g.closed = !ready;
            if ready {
                std::mem::take(&mut g.waiters)
            } else {
                Vec::new()
            }
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl tower_service::Service<ChatRequest> for MockChat {
    type Response = ChatStream;
    type Error = LlmError;
    type Future = Commit<ScriptStream>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        let mut g = lock(&self.state.gate);
        if !g.closed {
            return Poll::Ready(Ok(()));
        }
        if !g.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            g.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        let queued = lock(&self.state.queue).pop_front();
        let script = queued
            .or_else(|| self.state.generator.as_ref().map(|f| f(&req)))
            .or_else(|| lock(&self.state.fallback).clone())
            .unwrap_or_default();
        let model = script
            .model
            .clone()
            .unwrap_or_else(|| req.model().to_owned());
        lock(&self.state.requests).push(req);
        self.state.open.fetch_add(1, Ordering::SeqCst);
        let mut meta = ResponseMeta::default();
        meta.attempt = 1;
        meta.attempts = 1;
        meta.timings.started = Some(Instant::now());
        let n = self.state.calls.load(Ordering::SeqCst);
        let stream = ScriptStream {
            steps: script.steps.into(),
            provider: script.provider,
            model,
            id: format!("gen-mock-{n}"),
            sleep: None,
            state: self.state.clone(),
            finished: false,
        };
        ChatStream::commit(stream, meta)
    }
}

/// The stream a [`MockChat`] call plays.
pub struct ScriptStream {
    steps: VecDeque<Step>,
    provider: Option<String>,
    model: String,
    id: String,
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<State>,
    finished: bool,
}

impl fmt::Debug for ScriptStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptStream")
            .field("steps_left", &self.steps.len())
            .finish_non_exhaustive()
    }
}

impl ScriptStream {
    fn end(&mut self) {
        if !self.finished {
            self.finished = true;
            self.state.open.fetch_sub(1, Ordering::SeqCst);
            self.state.completed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for ScriptStream {
    fn drop(&mut self) {
        if !self.finished {
            self.state.open.fetch_sub(1, Ordering::SeqCst);
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Stream for ScriptStream {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(s) = this.sleep.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            match this.steps.pop_front() {
                None => {
                    this.end();
                    return Poll::Ready(None);
                }
                // A zero wait is no wait: a zero sleep would still round up to the timer's
                // next millisecond tick on a real-time runtime.
                Some(Step::Wait(d)) if d.is_zero() => {}
                Some(Step::Wait(d)) => {
                    this.sleep = Some(Box::pin(tokio::time::sleep(d)));
                }
                Some(Step::Chunk(mut c)) => {
                    if c.provider.is_none() {
                        c.provider.clone_from(&this.provider);
                    }
                    if c.model.is_empty() {
                        c.model.clone_from(&this.model);
                    }
                    if c.id.is_empty() {
                        c.id.clone_from(&this.id);
                    }
                    return Poll::Ready(Some(Ok(StreamChunk::new(*c))));
                }
                Some(Step::Fail(e)) => {
                    this.steps.clear();
                    this.end();
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Step::Hang) => {
                    this.steps.push_front(Step::Hang);
                    return Poll::Pending;
                }
            }
        }
    }
}
