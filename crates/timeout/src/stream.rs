use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use futures_core::Stream;
use llm_layers_core::{ChatBody, ChatStream, LlmError, StreamChunk, TimeoutKind};

use crate::layer::Adaptive;

/// An idle limit set while nothing was measured (the cap), read again every `every` as the
/// stream waits: a cold process's first streams are cut by what the streams beside them
/// measured, not at the cap.
#[derive(Debug)]
pub(crate) struct IdleRecheck {
    pub(crate) adaptive: Arc<Adaptive>,
    pub(crate) body: Arc<ChatBody>,
    pub(crate) provider: Option<String>,
    pub(crate) every: Duration,
}
use tokio::time::{Instant, Sleep, sleep_until};

pin_project_lite::pin_project! {
    /// A committed stream under the idle and total limits.
    ///
    /// The idle timer is not re-armed per chunk: a chunk only notes the time, and when the
    /// timer fires early it is moved to the real deadline. That keeps a chunk's cost to one
    /// clock read.
    pub struct TimeoutStream {
        inner: ChatStream,
        #[pin]
        sleep: Sleep,
        idle: Option<Duration>,
        total_at: Option<Instant>,
        last: Instant,
        done: bool,
        recheck: Option<IdleRecheck>,
        next_check: Option<Instant>,
    }
}

impl std::fmt::Debug for TimeoutStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutStream")
            .field("idle", &self.idle)
            .field("total_at", &self.total_at)
            .finish_non_exhaustive()
    }
}

impl TimeoutStream {
    /// Wraps a committed stream.
    pub fn new(inner: ChatStream, idle: Option<Duration>, total_at: Option<Instant>) -> Self {
        let last = Instant::now();
        let (at, _) = deadline(last, idle, total_at);
        TimeoutStream {
            inner,
            sleep: sleep_until(at),
            idle,
            total_at,
            last,
            done: false,
            recheck: None,
            next_check: None,
        }
    }

    /// Reads the idle limit again every `recheck.every` until something is measured.
    pub(crate) fn recheck_idle(mut self, recheck: Option<IdleRecheck>) -> Self {
        if let Some(r) = recheck {
            let check = self.last + r.every;
            if check < self.sleep.deadline() {
                self.sleep = sleep_until(check);
            }
            self.next_check = Some(check);
            self.recheck = Some(r);
        }
        self
    }
}

/// The next deadline from the last chunk, and which limit it is.
fn deadline(
    last: Instant,
    idle: Option<Duration>,
    total_at: Option<Instant>,
) -> (Instant, TimeoutKind) {
    let idle_at = idle.map(|d| last + d);
    match (idle_at, total_at) {
        (Some(i), Some(t)) if t <= i => (t, TimeoutKind::Total),
        (Some(i), _) => (i, TimeoutKind::Idle),
        (None, Some(t)) => (t, TimeoutKind::Total),
        // Unreachable in practice: the stream is only wrapped when a limit is set.
        (None, None) => (last + Duration::from_secs(86_400 * 365), TimeoutKind::Idle),
    }
}

impl Stream for TimeoutStream {
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *this.inner).poll_next(cx);
        if let Poll::Ready(item) = &polled {
            match item {
                Some(Ok(chunk)) => {
                    // When it arrived, as the decoder read the clock for it.
                    let now = chunk.received_or_now();
                    *this.last = now;
                    // A stream that never pauses must still end at its total deadline: the
                    // timer below is only looked at while the upstream is pending.
                    if this.total_at.is_some_and(|t| now > t) {
                        *this.done = true;
                        *this.inner = ChatStream::empty();
                        return Poll::Ready(Some(Err(LlmError::timeout(TimeoutKind::Total)
                            .with_message("the call's total time ran out"))));
                    }
                }
                _ => *this.done = true,
            }
            return polled;
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if let (Some(check), Some(r)) = (*this.next_check, this.recheck.as_ref()) {
                if check <= now {
                    let model = r.body.model.as_deref().unwrap_or("");
                    match r.adaptive.measured_idle(model, r.provider.as_deref()) {
                        Some(d) => {
                            *this.idle = Some(this.idle.map_or(d, |i| i.min(d)));
                            *this.next_check = None;
                        }
                        None => *this.next_check = Some(now + r.every),
                    }
                }
            }
            let (at, kind) = deadline(*this.last, *this.idle, *this.total_at);
            if now >= at {
                *this.done = true;
                // Drop the upstream now: the provider stops generating.
                *this.inner = ChatStream::empty();
                let msg = match kind {
                    TimeoutKind::Idle => "no chunk within the idle limit",
                    _ => "the call's total time ran out",
                };
                return Poll::Ready(Some(Err(LlmError::timeout(kind).with_message(msg))));
            }
            // A chunk came since the timer was armed (or a look is due): move it.
            this.sleep
                .as_mut()
                .reset(this.next_check.map_or(at, |c| c.min(at)));
        }
    }
}
