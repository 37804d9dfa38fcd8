//! Admission (the limits, in order, waiting as their modes allow, giving back what was taken
//! when a later one refuses) and settlement (a token reservation settled to the real usage,
//! the concurrency permit held until the stream ends).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use llm_layers_core::{ChatRequest, ChatStream, LlmError, Priority, StreamChunk};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::concurrency::{Concurrency, Permit};
use crate::store::{self, BucketKey, LimitId, Pending, Store, Take};
use crate::{Limit, Mode, Shared};

/// Takes `cost` from one limit's bucket, waiting as its mode allows; `pending` is a round
/// trip the fast path already started for it.
async fn take(
    store: &dyn Store,
    key: &BucketKey,
    cost: u64,
    limit: &Limit,
    deadline: Option<Instant>,
    mut pending: Option<Pending>,
) -> Result<(), LlmError> {
    let mut waited = Duration::ZERO;
    loop {
        let decided = match pending.take() {
            Some(p) => p.await,
            None => match store.take(key, cost, &limit.rate, Instant::now()) {
                Take::Ready(r) => r,
                Take::Pending(p) => p.await,
            },
        };
        let now = Instant::now();
        let wait = match decided {
            Ok(()) => return Ok(()),
            Err(w) => w,
        };
        let can_wait = match limit.mode {
            Mode::Reject => false,
            Mode::Wait(max) => waited + wait <= max && deadline.is_none_or(|d| now + wait < d),
        };
        let which = match key.limit {
            LimitId::Tokens => "tokens",
            _ => "requests",
        };
        if !can_wait {
            metrics::counter!("llm_ratelimit_rejected_total", "limit" => which).increment(1);
            return Err(LlmError::rate_limited(wait)
                .with_message(format!("rate limit for {} reached", key.key)));
        }
        // A span event on the call: it waits for its limit.
        tracing::debug!(
            limit = which,
            wait_ms = wait.as_millis() as u64,
            "rate limit: waiting"
        );
        tokio::time::sleep(wait).await;
        waited += wait;
    }
}

/// The request-limit keys a call took a unit from: the first in place (a stack has one
/// request limit, most often), any others in a vector.
#[derive(Default)]
struct TakenKeys {
    first: Option<BucketKey>,
    rest: Vec<BucketKey>,
}

impl TakenKeys {
    fn push(&mut self, key: BucketKey) {
        match self.first {
            None => self.first = Some(key),
            Some(_) => self.rest.push(key),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &BucketKey> {
        self.first.iter().chain(&self.rest)
    }
}

/// What a call was admitted with: the request units taken, the token reservation, the
/// concurrency slot, and how far admission got (`step`: the request limits in order, then
/// the token limit, then the concurrency limit). Dropped before the call was sent, it gives
/// everything back (a refused admission, or one abandoned while it waited, costs nothing);
/// dropped after, the request units stay spent and the token reservation settles to what
/// was delivered; [`finish`] settles it after the call.
pub(crate) struct Admitted {
    shared: Arc<Shared>,
    step: usize,
    request_keys: TakenKeys,
    reservation: Option<Reservation>,
    permit: Option<Permit>,
    called: bool,
}

impl Admitted {
    fn new(shared: &Arc<Shared>) -> Admitted {
        Admitted {
            shared: shared.clone(),
            step: 0,
            request_keys: TakenKeys::default(),
            reservation: None,
            permit: None,
            called: false,
        }
    }

    /// Records `cost` units taken from `key`'s bucket.
    fn took(&mut self, key: BucketKey, cost: u64, req: &ChatRequest) {
        if key.limit != LimitId::Tokens {
            self.request_keys.push(key);
            return;
        }
        self.reservation = Some(Reservation {
            shared: self.shared.clone(),
            key,
            reserved: cost,
            prompt: req.body().approx_prompt_tokens(),
            delivered: 0,
            usage: None,
            settled: false,
        });
    }
}

impl Admitted {
    /// The request is on its way: units are spent when a request is *sent*, so a caller
    /// who leaves before its first token does not get them back (its request already
    /// costs the upstream). Only an admission dropped before this gives back what it took.
    pub(crate) fn sent(&mut self) {
        self.called = true;
    }

    /// Whether admission stopped before the concurrency step (at a bucket).
    pub(crate) fn before_slot(&self) -> bool {
        self.step <= self.shared.requests.len()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.called {
            return;
        }
        let now = Instant::now();
        for k in self.request_keys.iter() {
            if let LimitId::Requests(i) = k.limit {
                if let Some(limit) = self.shared.requests.get(i) {
                    self.shared.store.settle(k, 1, &limit.rate, now);
                }
            }
        }
        // Nothing was sent: the reservation goes back whole.
        if let Some(r) = self.reservation.as_mut() {
            r.finish(Some(0));
        }
    }
}

/// The limit at admission step `step` for `req`.
enum Step<'a> {
    /// Take `cost` from a bucket.
    Bucket(BucketKey, u64, &'a Limit),
    /// Take a concurrency slot.
    Slot(&'a Arc<Concurrency>, Arc<str>),
    /// This limit does not apply to the request.
    Skip,
    /// Admitted.
    Done,
}

fn step<'a>(shared: &'a Shared, req: &ChatRequest, step: usize) -> Step<'a> {
    let n = shared.requests.len();
    if let Some(limit) = shared.requests.get(step) {
        return match limit.key.of(req) {
            Some(key) => Step::Bucket(
                BucketKey {
                    limit: LimitId::Requests(step),
                    name: shared.names[step].clone(),
                    key,
                },
                1,
                limit,
            ),
            None => Step::Skip,
        };
    }
    if step == n {
        let Some((limit, estimator)) = &shared.tokens else {
            return Step::Skip;
        };
        return match limit.key.of(req) {
            // A request larger than the whole burst could never fit: charge the burst.
            Some(key) => Step::Bucket(
                BucketKey {
                    limit: LimitId::Tokens,
                    name: shared.token_name.clone(),
                    key,
                },
                estimator.estimate(req).min(limit.rate.burst),
                limit,
            ),
            None => Step::Skip,
        };
    }
    if step == n + 1 {
        return match &shared.concurrency {
            Some((c, key)) => key.of(req).map_or(Step::Skip, |k| Step::Slot(c, k)),
            None => Step::Skip,
        };
    }
    Step::Done
}

/// How far admission got without waiting.
pub(crate) enum Progress {
    /// Every limit admitted the call.
    Admitted(Admitted),
    /// A limit would wait or refuse, or its store must ask: the slow way goes on from here
    /// (with the round trip started, if any), nothing taken twice.
    Partial(Admitted, Option<Pending>),
}

/// Admits `req` as far as it can without waiting. `reserved` is a slot taken in
/// `poll_ready`.
pub(crate) fn try_admit(
    shared: &Arc<Shared>,
    req: &ChatRequest,
    reserved: &mut Option<Permit>,
) -> Progress {
    let now = Instant::now();
    let mut a = Admitted::new(shared);
    loop {
        match step(shared, req, a.step) {
            Step::Done => return Progress::Admitted(a),
            Step::Skip => {}
            Step::Bucket(key, cost, limit) => match shared.store.take(&key, cost, &limit.rate, now)
            {
                Take::Ready(Ok(())) => a.took(key, cost, req),
                Take::Ready(Err(_)) => return Progress::Partial(a, None),
                Take::Pending(p) => return Progress::Partial(a, Some(p)),
            },
            Step::Slot(c, key) => {
                let permit = match reserved.take() {
                    Some(p) => p,
                    None => match c.try_acquire(&key) {
                        Some(p) => p,
                        None => return Progress::Partial(a, None),
                    },
                };
                a.permit = Some(permit);
            }
        }
        a.step += 1;
    }
}

/// Goes on admitting `req` from where `a` stopped, waiting as the limits' modes allow.
async fn admit(
    mut a: Admitted,
    req: &ChatRequest,
    mut reserved: Option<Permit>,
    mut pending: Option<Pending>,
) -> Result<Admitted, LlmError> {
    let deadline = req.deadline();
    let shared = a.shared.clone();
    // On a refusal, `a` drops and gives back what earlier limits took.
    loop {
        match step(&shared, req, a.step) {
            Step::Done => return Ok(a),
            Step::Skip => {}
            Step::Bucket(key, cost, limit) => {
                take(&*shared.store, &key, cost, limit, deadline, pending.take()).await?;
                a.took(key, cost, req);
            }
            Step::Slot(c, key) => {
                let permit = match reserved.take() {
                    Some(p) => p,
                    None => {
                        let priority = req
                            .extensions()
                            .get::<Priority>()
                            .copied()
                            .unwrap_or_default();
                        c.acquire(key, priority, deadline).await?
                    }
                };
                a.permit = Some(permit);
            }
        }
        a.step += 1;
    }
}

/// The slow way: admission that may wait, then readiness of an inner service that was not
/// ready (a clone: the ready one stays in the service, its slot below not held across the
/// wait), then the call.
pub(crate) async fn admit_then_call<S>(
    (partial, pending): (Admitted, Option<Pending>),
    mut inner: S,
    req: ChatRequest,
    reserved: Option<Permit>,
) -> Result<ChatStream, LlmError>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    let mut admitted = admit(partial, &req, reserved, pending).await?;
    ServiceExt::ready(&mut inner).await?;
    admitted.sent();
    let result = inner.call(req).await;
    finish(admitted, result)
}

/// Settles an admission with the call's outcome: an upstream limit on our own key holds the
/// request buckets; a failed call gives back its reservation; a stream keeps its slot and
/// settles its reservation when it ends.
pub(crate) fn finish(
    mut a: Admitted,
    result: Result<ChatStream, LlmError>,
) -> Result<ChatStream, LlmError> {
    a.called = true;
    match result {
        Err(e) => {
            // Only a limit on our own key holds the whole key: a provider's 429 is the
            // breaker's to hold, for that provider alone.
            if e.is_key_limited() {
                if let Some(after) = e.retry_after() {
                    let until = store::later(Instant::now(), after.min(a.shared.max_hold));
                    for k in a.request_keys.iter() {
                        a.shared.store.hold(k, until);
                    }
                }
            }
            // Nothing was generated: the reservation goes back whole.
            if let Some(r) = a.reservation.as_mut() {
                r.finish(Some(0));
            }
            Err(e)
        }
        Ok(stream) => {
            let reservation = a.reservation.take();
            let permit = a.permit.take();
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
    type Item = Result<StreamChunk, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        let Poll::Ready(item) = &polled else {
            return polled;
        };
        if let Some(r) = self.reservation.as_mut() {
            if let Some(Ok(c)) = &item {
                if c.has_output() {
                    r.delivered += 1;
                }
                if let Some(u) = c.usage() {
                    r.usage = Some(u.prompt_tokens.saturating_add(u.completion_tokens));
                }
            }
            if !matches!(item, Some(Ok(_))) {
                r.finish(None);
            }
        }
        polled
    }
}
