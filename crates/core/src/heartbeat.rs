//! A timer heartbeat: keeps Tokio's timer driver from being woken by every new deadline.
//!
//! The layers arm a timer or two per call (a first-token deadline, a breaker's slow-call
//! watch, a hedge's delay). When a new timer is due sooner than the one the timer driver is
//! asleep to, Tokio wakes the driver (an `eventfd` write, then an extra `epoll_wait` on the
//! thread that held it) so that it sleeps to the new one. With calls one after another that is
//! every timer: about two wake-ups, four system calls, per call, which a bare proxy does not
//! make.
//!
//! A [`Heartbeat`] ticks every `period` (50 ms by default) while calls come, and stops after a
//! second without one. With a tick always due within `period`, the driver is never asleep to
//! anything later, so a deadline further out than `period` (every deadline the layers set in
//! practice) is filed without waking it. The price is one timer firing per `period` while
//! busy (20 a second, whatever the rate of calls) and an atomic add per call; none when idle.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! use llm_layers_core::heartbeat::Heartbeat;
//! let heartbeat = Heartbeat::spawn(Heartbeat::DEFAULT_PERIOD);
//! // At the start of every call, before its layers arm their timers:
//! heartbeat.beat();
//! assert_eq!(heartbeat.beats(), 1);
//! # });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Ticks Tokio's timer driver while calls come (see the [module docs](self)).
///
/// Dropping it stops its task.
#[derive(Debug)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    beats: AtomicU64,
    asleep: AtomicBool,
    closed: AtomicBool,
    wake: Notify,
}

/// Ticks without a call before the heartbeat stops.
const QUIET_TICKS: u32 = 20;

impl Heartbeat {
    /// 50 ms: shorter than any deadline the layers set in practice, 20 firings a second.
    pub const DEFAULT_PERIOD: Duration = Duration::from_millis(50);

    /// Spawns the heartbeat's task on the current Tokio runtime, asleep until the first
    /// [`beat`](Self::beat). The timers it keeps quiet are that runtime's.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, or if `period` is zero.
    pub fn spawn(period: Duration) -> Heartbeat {
        assert!(!period.is_zero(), "a heartbeat needs a period above zero");
        let inner = Arc::new(Inner {
            beats: AtomicU64::new(0),
            asleep: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        tokio::spawn(run(inner.clone(), period));
        Heartbeat { inner }
    }

    /// A call starts: the heartbeat ticks (again) if it had stopped.
    pub fn beat(&self) {
        // SeqCst on both sides: either the task, going to sleep, sees this beat, or this
        // beat sees the task asleep and wakes it.
        self.inner.beats.fetch_add(1, Ordering::SeqCst);
        if self.inner.asleep.load(Ordering::SeqCst)
            && self.inner.asleep.swap(false, Ordering::SeqCst)
        {
            self.inner.wake.notify_one();
        }
    }

    /// How many calls have beaten it.
    pub fn beats(&self) -> u64 {
        self.inner.beats.load(Ordering::Relaxed)
    }

    /// Whether it is ticking now.
    pub fn is_ticking(&self) -> bool {
        !self.inner.asleep.load(Ordering::SeqCst)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }
}

async fn run(inner: Arc<Inner>, period: Duration) {
    loop {
        // Asleep until a call beats (a permit left by a beat before this wait counts).
        inner.wake.notified().await;
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut seen = inner.beats.load(Ordering::SeqCst);
        let mut quiet = 0;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if inner.closed.load(Ordering::SeqCst) {
                return;
            }
            let now = inner.beats.load(Ordering::SeqCst);
            if now != seen {
                seen = now;
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet < QUIET_TICKS {
                continue;
            }
            inner.asleep.store(true, Ordering::SeqCst);
            if inner.beats.load(Ordering::SeqCst) == seen {
                break;
            }
            // A call came as it went to sleep: keep ticking. (If that call's beat saw it
            // asleep, a permit is left and the next sleep ends at once: harmless.)
            inner.asleep.store(false, Ordering::SeqCst);
            seen = inner.beats.load(Ordering::SeqCst);
            quiet = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets the heartbeat's task run (paused time: no wall clock).
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_ticks_while_calls_come_and_stops_a_second_after_the_last() {
        let period = Duration::from_millis(50);
        let hb = Heartbeat::spawn(period);
        settle().await;
        assert!(!hb.is_ticking(), "asleep until the first call");

        hb.beat();
        settle().await;
        assert!(hb.is_ticking());
        // Calls every 200 ms for 3 s keep it ticking.
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            hb.beat();
            settle().await;
            assert!(hb.is_ticking());
        }
        // Quiet: it stops after QUIET_TICKS ticks, not before.
        tokio::time::sleep(period * (QUIET_TICKS - 2)).await;
        settle().await;
        assert!(hb.is_ticking(), "stopped early");
        tokio::time::sleep(period * 4).await;
        settle().await;
        assert!(
            !hb.is_ticking(),
            "still ticking a second after the last call"
        );

        // And a call wakes it again.
        hb.beat();
        settle().await;
        assert!(hb.is_ticking());
        assert_eq!(hb.beats(), 17);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_it_ends_its_task() {
        let hb = Heartbeat::spawn(Duration::from_millis(50));
        hb.beat();
        settle().await;
        let inner = Arc::downgrade(&hb.inner);
        drop(hb);
        tokio::time::sleep(Duration::from_millis(100)).await;
        settle().await;
        assert!(inner.upgrade().is_none(), "the task still holds it");
    }
}
