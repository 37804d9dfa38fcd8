//! A keyed concurrency limit with priority: when full, high priority waits (highest first,
//! then first come), low priority is shed at once.
//!
//! For a [`Key::global`](crate::Key::global) limit it is also a readiness concern, as
//! tower's `ConcurrencyLimit` is: [`Concurrency::poll_reserve`] takes a free slot in
//! `poll_ready`, and is `Pending` while no call could be admitted (every slot taken and the
//! queue full), so `LoadShed` or `Buffer` above see the backpressure.

use llm_layers_core::hash::HashMap;
use llm_layers_core::sync::lock;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use llm_layers_core::{ErrorKind, LlmError, Priority};
use tokio::sync::oneshot;
use tokio::time::Instant;

#[derive(Default)]
struct Slot {
    in_flight: usize,
    waiters: BTreeMap<(Reverse<u8>, u64), oneshot::Sender<()>>,
}

/// The most wakers kept for readiness (see [`Concurrency::poll_reserve`]).
const MAX_READY_WAITERS: usize = 1024;

#[derive(Default)]
struct State {
    slots: HashMap<Arc<str>, Slot>,
    seq: u64,
    /// Services whose `poll_ready` found no room: woken when a slot or a queue place frees.
    ready: Vec<Waker>,
}

impl State {
    fn wake_ready(&mut self) {
        for w in self.ready.drain(..) {
            w.wake();
        }
    }
}

pub(crate) struct Concurrency {
    max: usize,
    shed_below: Priority,
    /// The most calls waiting per key; past it, calls are refused at once.
    max_waiters: usize,
    /// The longest a call waits for a slot (less when its deadline is nearer).
    max_wait: Duration,
    state: Mutex<State>,
}

/// A held slot; dropping it frees the slot for the next waiter.
pub(crate) struct Permit {
    owner: Arc<Concurrency>,
    key: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.owner.release(&self.key);
    }
}

/// Removes a waiter that gave up; gives back a permit that arrived too late to be used.
struct Waiting {
    owner: Arc<Concurrency>,
    key: Arc<str>,
    id: (Reverse<u8>, u64),
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let removed = {
            let mut g = self.owner.lock();
            let removed = g
                .slots
                .get_mut(&self.key)
                .is_some_and(|s| s.waiters.remove(&self.id).is_some());
            if removed {
                // A place in the queue freed.
                g.wake_ready();
            }
            removed
        };
        if !removed && rx.try_recv().is_ok() {
            self.owner.release(&self.key);
        }
    }
}

impl Concurrency {
    pub(crate) fn new(
        max: usize,
        shed_below: Priority,
        max_waiters: usize,
        max_wait: Duration,
    ) -> Concurrency {
        Concurrency {
            max,
            shed_below,
            max_waiters,
            max_wait,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it left counts that are still consistent (every
        // change is one statement): go on with them.
        lock(&self.state)
    }

    /// A slot now, if one is free.
    pub(crate) fn try_acquire(self: &Arc<Self>, key: &Arc<str>) -> Option<Permit> {
        let mut g = self.lock();
        self.take_free(&mut g, key)
    }

    fn take_free(self: &Arc<Self>, g: &mut State, key: &Arc<str>) -> Option<Permit> {
        let in_flight = g.slots.get(key).map_or(0, |s| s.in_flight);
        if in_flight >= self.max {
            return None;
        }
        g.slots.entry(key.clone()).or_default().in_flight += 1;
        Some(Permit {
            owner: self.clone(),
            key: key.clone(),
        })
    }

    /// Readiness for `key`: `Ready(Some(permit))` with a free slot, `Ready(None)` when every
    /// slot is taken but the queue has room (the call queues by priority), `Pending` (and
    /// `cx` woken later) when the queue is full too.
    pub(crate) fn poll_reserve(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        key: &Arc<str>,
    ) -> Poll<Option<Permit>> {
        let mut g = self.lock();
        if let Some(p) = self.take_free(&mut g, key) {
            return Poll::Ready(Some(p));
        }
        if g.slots.get(key).map_or(0, |s| s.waiters.len()) < self.max_waiters {
            return Poll::Ready(None);
        }
        if !g.ready.iter().any(|w| w.will_wake(cx.waker())) {
            // Callers that gave up (a `LoadShed` above) leave their wakers: bound the list
            // by waking them all early, which costs the live ones one more poll.
            if g.ready.len() >= MAX_READY_WAITERS {
                g.wake_ready();
            }
            g.ready.push(cx.waker().clone());
        }
        Poll::Pending
    }

    pub(crate) async fn acquire(
        self: &Arc<Self>,
        key: Arc<str>,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<Permit, LlmError> {
        let mut waiting = {
            let mut g = self.lock();
            if let Some(p) = self.take_free(&mut g, &key) {
                return Ok(p);
            }
            if priority < self.shed_below {
                metrics::counter!("llm_ratelimit_shed_total").increment(1);
                return Err(LlmError::new(ErrorKind::RateLimited).with_message(format!(
                    "concurrency limit of {} reached for {key}: low-priority call shed",
                    self.max
                )));
            }
            let State { slots, seq, .. } = &mut *g;
            let slot = slots.entry(key.clone()).or_default();
            if slot.waiters.len() >= self.max_waiters {
                metrics::counter!("llm_ratelimit_shed_total").increment(1);
                return Err(
                    LlmError::rate_limited(Duration::from_secs(1)).with_message(format!(
                        "concurrency limit of {} reached for {key} and {} calls already wait",
                        self.max, self.max_waiters
                    )),
                );
            }
            *seq += 1;
            let id = (Reverse(priority.0), *seq);
            let (tx, rx) = oneshot::channel();
            slot.waiters.insert(id, tx);
            Waiting {
                owner: self.clone(),
                key: key.clone(),
                id,
                rx: Some(rx),
            }
        };
        let rx = waiting
            .rx
            .as_mut()
            .map(|rx| async move { rx.await.is_ok() });
        let now = Instant::now();
        let wait = deadline.map_or(self.max_wait, |d| {
            self.max_wait.min(d.saturating_duration_since(now))
        });
        let got = match rx {
            Some(f) => match tokio::time::timeout(wait, f).await {
                Ok(got) => got,
                Err(_) => {
                    // `waiting` drops with its receiver: it leaves the queue, or gives back a
                    // slot that arrived at the last instant.
                    metrics::counter!("llm_ratelimit_shed_total").increment(1);
                    return Err(LlmError::rate_limited(Duration::from_secs(1)).with_message(
                        format!(
                            "no concurrency slot for {key} within {:.1}s",
                            wait.as_secs_f64()
                        ),
                    ));
                }
            },
            None => false,
        };
        // The permit was transferred to us: keep the waiter guard from giving it back.
        waiting.rx = None;
        if got {
            Ok(Permit {
                owner: self.clone(),
                key,
            })
        } else {
            Err(LlmError::new(ErrorKind::Cancelled).with_message("concurrency limiter closed"))
        }
    }

    fn release(&self, key: &Arc<str>) {
        let mut g = self.lock();
        let Some(slot) = g.slots.get_mut(key) else {
            return;
        };
        // Hand the slot to the highest-priority, oldest waiter still waiting; else free it.
        let mut handed = false;
        while let Some((_, tx)) = slot.waiters.pop_first() {
            if tx.send(()).is_ok() {
                handed = true;
                break;
            }
        }
        if !handed {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if slot.in_flight == 0 {
                g.slots.remove(key);
            }
        }
        // A slot freed, or a place in the queue when it was handed on.
        g.wake_ready();
    }

    pub(crate) fn keys(&self) -> usize {
        self.lock().slots.len()
    }
}
