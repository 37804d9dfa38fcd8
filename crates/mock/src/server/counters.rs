//! What a [`MockServer`](super::MockServer) counts, for tests and benches to assert on.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use llm_layers_core::sync::lock;
use tokio::sync::Notify;

/// Live counters of a [`MockServer`](super::MockServer), for tests to assert on.
#[derive(Default)]
pub struct Counters {
    pub(super) accepted: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) open_streams: AtomicU64,
    pub(super) max_open_streams: AtomicU64,
    pub(super) cancelled_streams: AtomicU64,
    pub(super) completed_streams: AtomicU64,
    pub(super) catalog_requests: AtomicU64,
    /// What the mock billed, in nano-dollars.
    pub(super) billed: AtomicU64,
    pub(super) outcomes: Mutex<HashMap<(String, String), u64>>,
    pub(super) bodies: Mutex<std::collections::VecDeque<Bytes>>,
    pub(super) keys: Mutex<HashMap<String, u64>>,
    /// Requests per (last user message, provider slug) that served them.
    pub(super) routed: Mutex<HashMap<(String, String), u64>>,
    pub(super) changed: Notify,
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters")
            .field("accepted", &self.accepted_connections())
            .field("requests", &self.requests())
            .field("open_streams", &self.open_streams())
            .field("cancelled_streams", &self.cancelled_streams())
            .finish_non_exhaustive()
    }
}

impl Counters {
    /// TCP connections accepted.
    pub fn accepted_connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Chat completion requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    /// Answers being written now (streams and delayed JSON answers).
    pub fn open_streams(&self) -> u64 {
        self.open_streams.load(Ordering::SeqCst)
    }
    /// The most answers open at once.
    pub fn max_open_streams(&self) -> u64 {
        self.max_open_streams.load(Ordering::SeqCst)
    }
    /// Answers the client went away from before they finished.
    pub fn cancelled_streams(&self) -> u64 {
        self.cancelled_streams.load(Ordering::SeqCst)
    }
    /// Answers written to their end.
    pub fn completed_streams(&self) -> u64 {
        self.completed_streams.load(Ordering::SeqCst)
    }
    /// `GET`/`HEAD` requests to `/models` and `/providers`.
    pub fn catalog_requests(&self) -> u64 {
        self.catalog_requests.load(Ordering::SeqCst)
    }
    /// Requests by (provider slug, outcome label); the provider is `""` when none was chosen.
    pub fn outcomes(&self) -> HashMap<(String, String), u64> {
        lock(&self.outcomes).clone()
    }
    /// Requests served by provider `slug` (any outcome).
    pub fn requests_to(&self, slug: &str) -> u64 {
        self.outcomes()
            .iter()
            .filter(|((p, _), _)| p == slug)
            .map(|(_, n)| n)
            .sum()
    }
    /// Waits until `pred` holds, up to `timeout`; returns whether it did. Wakes on every
    /// counter change, so it costs no polling loop.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Counters) -> bool) -> bool {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if pred(self) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The bodies of the last 1,024 chat requests, oldest first.
    pub fn bodies(&self) -> Vec<Bytes> {
        lock(&self.bodies).iter().cloned().collect()
    }

    /// Chat requests per (the text of the request's last user message, the provider slug
    /// drawn for it; `""` when none was): whether a call reached one provider twice.
    pub fn requests_by_prompt(&self) -> HashMap<(String, String), u64> {
        lock(&self.routed).clone()
    }

    /// Chat requests per API key (the bearer token as sent).
    pub fn requests_by_key(&self) -> HashMap<String, u64> {
        lock(&self.keys).clone()
    }

    pub(super) fn record(&self, provider: &str, outcome: &str) {
        *lock(&self.outcomes)
            .entry((provider.to_owned(), outcome.to_owned()))
            .or_default() += 1;
        self.changed.notify_waiters();
    }

    pub(super) fn open(&self) {
        let n = self.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_open_streams.fetch_max(n, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// What the mock billed for every answer it began, USD: as OpenRouter bills, the prompt
    /// of every request a provider took (a stream cancelled before its first token
    /// included) and each output token sent, at the serving provider's price
    /// ([`crate::PRICE`] unless the scenario says otherwise); nothing for an error.
    pub fn billed_usd(&self) -> f64 {
        llm_layers_core::ledger::nanos_to_usd(
            i64::try_from(self.billed.load(Ordering::SeqCst)).unwrap_or(i64::MAX),
        )
    }

    /// Bills one answer: `prompt` tokens read and `completion` tokens sent.
    pub(crate) fn bill(&self, price: &llm_layers_core::price::Price, prompt: u64, completion: u64) {
        let usd = price.of_tokens(prompt, completion);
        let nanos = u64::try_from(llm_layers_core::ledger::usd_to_nanos(usd)).unwrap_or(0);
        self.billed.fetch_add(nanos, Ordering::SeqCst);
    }

    pub(crate) fn close(&self, cancelled: bool) {
        if cancelled {
            self.cancelled_streams.fetch_add(1, Ordering::SeqCst);
        } else {
            self.completed_streams.fetch_add(1, Ordering::SeqCst);
        }
        self.open_streams.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}
