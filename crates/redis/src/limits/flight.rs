//! One lease request in flight per key: callers that miss the lease while one is out wait
//! for it (at most the store's budget) instead of each asking Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use llm_layers_core::sync::lock;
use llm_layers_ratelimit::BucketKey;
use tokio::sync::Notify;

use super::Shared;

/// A lease request in flight.
#[derive(Debug, Default)]
pub(super) struct Flight {
    done: AtomicBool,
    notify: Notify,
}

impl Flight {
    /// Waits until it lands (or the budget passes).
    pub(super) async fn wait(&self, budget: std::time::Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.done.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(budget, notified).await;
        }
    }
}

/// Ends a flight however its request ends (answered, failed, or its caller gone): the key
/// forgets it and its waiters wake.
pub(super) struct Landing {
    pub(super) shared: Arc<Shared>,
    pub(super) key: BucketKey,
    pub(super) flight: Arc<Flight>,
}

impl Drop for Landing {
    fn drop(&mut self) {
        if let Some(l) = lock(&self.shared.keys).get_mut(&self.key) {
            if l.flight
                .as_ref()
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                l.flight = None;
            }
        }
        self.flight.done.store(true, Ordering::Release);
        self.flight.notify.notify_waiters();
    }
}
