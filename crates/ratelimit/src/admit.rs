//! Admission (the limits, in order, waiting as their modes allow, giving back what was taken
//! when a later one refuses) and settlement (a token reservation settled to the real usage,
//! the concurrency permit held until the stream ends).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use llm_layers_core::{ChatChunk, ChatRequest, ChatStream, LlmError, Priority};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::concurrency::Permit;
use crate::store::{self, BucketKey, Store};
use crate::{Limit, Mode, Shared};

/// Takes `cost` from one limit's bucket, waiting as its mode allows.
async fn take(
    store: &dyn Store,
    key: &BucketKey,
    cost: u64,
    limit: &Limit,
    deadline: Option<Instant>,
) -> Result<(), LlmError> {
    let mut waited = Duration::ZERO;
    loop {
        let now = Instant::now();
        let wait = match store.take(key, cost, &limit.rate, now) {
            Ok(()) => return Ok(()),
            Err(w) => w,
        };
        let can_wait = match limit.mode {
            Mode::Reject => false,
            Mode::Wait(max) => waited + wait <= max && deadline.is_none_or(|d| now + wait < d),
        };
        if !can_wait {
            metrics::counter!("llm_ratelimit_rejected_total", "limit" => if key.limit == usize::MAX { "tokens" } else { "requests" }).increment(1);
            return Err(LlmError::rate_limited(wait)
                .with_message(format!("rate limit for {} reached", key.key)));
        }
        tokio::time::sleep(wait).await;
        waited += wait;
    }
}

const TOKENS: usize = usize::MAX;

pub(crate) async fn admit_then_call<S>(
    shared: Arc<Shared>,
    mut inner: S,
    req: ChatRequest,
) -> Result<ChatStream, LlmError>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    let deadline = req.deadline();
    let store = &*shared.store;
    // Units taken so far go back if a later limit refuses: a rejected call costs nothing.
    let mut taken = Taken {
        shared: &shared,
        keys: Vec::with_capacity(shared.requests.len()),
        kept: false,
    };
    for (i, limit) in shared.requests.iter().enumerate() {
        if let Some(k) = limit.key.of(&req) {
            let key = BucketKey { limit: i, key: k };
            take(store, &key, 1, limit, deadline).await?;
            taken.keys.push(key);
        }
    }
    let mut reservation = None;
    if let Some((limit, estimator)) = &shared.tokens {
        if let Some(k) = limit.key.of(&req) {
            let key = BucketKey {
                limit: TOKENS,
                key: k,
            };
            let estimate = estimator.estimate(&req);
            // A request larger than the whole burst could never fit: charge the burst.
            let cost = estimate.min(limit.rate.burst);
            take(store, &key, cost, limit, deadline).await?;
            let prompt = req.body().approx_prompt_tokens();
            reservation = Some(Reservation {
                shared: shared.clone(),
                key,
                reserved: cost,
                prompt,
                delivered: 0,
                usage: None,
                settled: false,
            });
        }
    }
    let permit = match &shared.concurrency {
        Some((c, key)) => match key.of(&req) {
            Some(k) => {
                let priority = req
                    .extensions()
                    .get::<Priority>()
                    .copied()
                    .unwrap_or_default();
                // A refusal here drops the reservation, which settles to zero.
                Some(c.acquire(k, priority, deadline).await?)
            }
            None => None,
        },
        None => None,
    };
    taken.kept = true;
    let request_keys = std::mem::take(&mut taken.keys);
    let result = async {
        ServiceExt::ready(&mut inner).await?;
        inner.call(req).await
    }
    .await;
    match result {
        Err(e) => {
            // Only a limit on our own key holds the whole key: a provider's 429 is the
            // breaker's to hold, for that provider alone.
            if e.is_key_limited() {
                if let Some(after) = e.retry_after() {
                    let until = store::later(Instant::now(), after.min(shared.max_hold));
                    for k in &request_keys {
                        store.hold(k, until);
                    }
                }
            }
            // Nothing was generated: the reservation goes back whole (settle on drop).
            if let Some(mut r) = reservation {
                r.finish(Some(0));
            }
            drop(permit);
            Err(e)
        }
        Ok(stream) => {
            if reservation.is_none() && permit.is_none() {
                return Ok(stream);
            }
            Ok(stream.wrap(|s| Settling {
                inner: s,
                reservation,
                _permit: permit,
            }))
        }
    }
}

/// Request units taken by a call still being admitted: given back on drop unless kept.
struct Taken<'a> {
    shared: &'a Shared,
    keys: Vec<BucketKey>,
    kept: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let now = Instant::now();
        for k in &self.keys {
            if let Some(limit) = self.shared.requests.get(k.limit) {
                self.shared.store.settle(k, 1, &limit.rate, now);
            }
        }
    }
}

/// A token reservation, settled once: to the real usage, or to what was delivered.
struct Reservation {
    shared: Arc<Shared>,
    key: BucketKey,
    reserved: u64,
    prompt: u64,
    delivered: u64,
    usage: Option<u64>,
    settled: bool,
}

impl Reservation {
    /// Settles to `actual` tokens, or to the usage seen, or to prompt + chunks delivered.
    fn finish(&mut self, actual: Option<u64>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        // Usage comes from the upstream: bound it to one whole burst past the reservation,
        // so a wild number cannot put the bucket in debt for years.
        let bound = self.shared.tokens.as_ref().map_or(u64::MAX, |(l, _)| {
            self.reserved.saturating_add(l.rate.burst)
        });
        let actual = actual
            .or(self.usage)
            .unwrap_or(self.prompt.saturating_add(self.delivered))
            .min(bound);
        let units =
            i64::try_from(i128::from(self.reserved) - i128::from(actual)).unwrap_or(i64::MIN);
        if let Some((limit, _)) = &self.shared.tokens {
            self.shared
                .store
                .settle(&self.key, units, &limit.rate, Instant::now());
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// A committed stream holding its concurrency permit and token reservation until its end.
struct Settling {
    inner: ChatStream,
    reservation: Option<Reservation>,
    _permit: Option<Permit>,
}

impl Stream for Settling {
    type Item = Result<ChatChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(i) => i,
        };
        if let Some(r) = self.reservation.as_mut() {
            if let Some(Ok(c)) = &item {
                if c.has_output() {
                    r.delivered += 1;
                }
                if let Some(u) = &c.usage {
                    r.usage = Some(u.prompt_tokens.saturating_add(u.completion_tokens));
                }
            }
            if !matches!(item, Some(Ok(_))) {
                r.finish(None);
            }
        }
        Poll::Ready(item)
    }
}
