use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use llm_layers_core::{ChatChunk, ChatStream, LlmError, TimeoutKind};
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
        }
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
    type Item = Result<ChatChunk, LlmError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *this.inner).poll_next(cx);
        if let Poll::Ready(item) = &polled {
            match item {
                Some(Ok(_)) => {
                    let now = Instant::now();
                    *this.last = now;
                    // A stream that never pauses must still end at its total deadline: the
                    // timer below is only looked at while the upstream is pending.
                    if this.total_at.is_some_and(|t| now > t) {
                        *this.done = true;
                        *this.inner = ChatStream::from_chunks(Vec::new());
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
            let (at, kind) = deadline(*this.last, *this.idle, *this.total_at);
            if Instant::now() >= at {
                *this.done = true;
                // Drop the upstream now: the provider stops generating.
                *this.inner = ChatStream::from_chunks(Vec::new());
                let msg = match kind {
                    TimeoutKind::Idle => "no chunk within the idle limit",
                    _ => "the call's total time ran out",
                };
                return Poll::Ready(Some(Err(LlmError::timeout(kind).with_message(msg))));
            }
            // A chunk came since the timer was armed: move it to the real deadline.
            this.sleep.as_mut().reset(at);
        }
    }
}
