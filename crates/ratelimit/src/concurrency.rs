//! A keyed concurrency limit with priority: when full, high priority waits (highest first,
//! then first come), low priority is shed at once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use llm_layers_core::{ErrorKind, LlmError, Priority};
use tokio::sync::oneshot;
use tokio::time::Instant;

#[derive(Default)]
struct Slot {
    in_flight: usize,
    waiters: BTreeMap<(Reverse<u8>, u64), oneshot::Sender<()>>,
}

pub(crate) struct Concurrency {
    max: usize,
    shed_below: Priority,
    /// The most calls waiting per key; past it, calls are refused at once.
    max_waiters: usize,
    /// The longest a call waits for a slot (less when its deadline is nearer).
    max_wait: Duration,
    slots: Mutex<(HashMap<Arc<str>, Slot>, u64)>,
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
            let mut g = self.owner.slots.lock().unwrap_or_else(|e| e.into_inner());
            g.0.get_mut(&self.key)
                .is_some_and(|s| s.waiters.remove(&self.id).is_some())
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
            slots: Mutex::new((HashMap::new(), 0)),
        }
    }

    pub(crate) async fn acquire(
        self: &Arc<Self>,
        key: Arc<str>,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<Permit, LlmError> {
        let mut waiting = {
            let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let (slots, seq) = &mut *g;
            let slot = slots.entry(key.clone()).or_default();
            if slot.in_flight < self.max {
                slot.in_flight += 1;
                return Ok(Permit {
                    owner: self.clone(),
                    key,
                });
            }
            if priority < self.shed_below {
                metrics::counter!("llm_ratelimit_shed_total").increment(1);
                return Err(LlmError::new(ErrorKind::RateLimited).with_message(format!(
                    "concurrency limit of {} reached for {key}: low-priority call shed",
                    self.max
                )));
            }
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
        let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = g.0.get_mut(key) else { return };
        // Hand the slot to the highest-priority, oldest waiter still waiting.
        while let Some((_, tx)) = slot.waiters.pop_first() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        slot.in_flight = slot.in_flight.saturating_sub(1);
        if slot.in_flight == 0 {
            g.0.remove(key);
        }
    }

    pub(crate) fn keys(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }
}
