//! [`RedisStore`]: the rate limiter's buckets in Redis, exact or leased, with a local
//! fallback of limit ÷ replicas.

mod flight;
mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_layers_core::ConfigError;
use llm_layers_core::sync::lock;
use llm_layers_ratelimit::{BucketKey, LimitId, MemoryStore, Rate, Store, Take};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Redis, StoreError};
use flight::{Flight, Landing};
use scripts::Scripts;

/// How a [`RedisStore`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LimitMode {
    /// One script call per decision: exact across replicas, one round trip per call.
    #[default]
    Exact,
    /// A replica takes about its local rate × the lease period of units in one call (at
    /// least what the call needs; at most the limit's own rate × the lease period and a
    /// sixteenth of its burst, so a low limit is in effect exact), spends them locally and
    /// gives back what it has not spent when the lease ends. Never over-admits: units are
    /// taken in Redis before they are spent; what replicas hold unspent at a moment is
    /// under-admitted until it is spent or given back.
    Lease,
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LimitStoreBuilder {
    redis: Redis,
    mode: LimitMode,
    replicas: u64,
    lease_for: Duration,
    max_keys: usize,
}

impl LimitStoreBuilder {
    pub(crate) fn new(redis: Redis) -> Self {
        LimitStoreBuilder {
            redis,
            mode: LimitMode::Exact,
            replicas: 1,
            lease_for: Duration::from_millis(250),
            max_keys: 100_000,
        }
    }

    /// Exact or leased (default exact).
    pub fn mode(mut self, mode: LimitMode) -> Self {
        self.mode = mode;
        self
    }

    /// How many replicas share the limits (default 1): with the store down each replica
    /// limits to its share, limit ÷ replicas, never to the whole limit.
    pub fn replicas(mut self, n: u64) -> Self {
        self.replicas = n;
        self
    }

    /// How long a lease lasts before its unspent units go back (default 250 ms).
    pub fn lease_for(mut self, d: Duration) -> Self {
        self.lease_for = d;
        self
    }

    /// The most keys held locally (leases, cached refusals, the fallback's buckets;
    /// default 100,000).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Builds it and starts its background task (refunds, holds, lease returns), which
    /// ends when the store and its clones are dropped.
    ///
    /// # Errors
    ///
    /// Zero replicas, keys or lease period, or no Tokio runtime to start the task on.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        if self.replicas == 0 || self.max_keys == 0 || self.lease_for.is_zero() {
            return Err(ConfigError::new(
                "redis limit store: replicas, max_keys and lease_for must be above zero",
            ));
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("redis limit store: build it inside a Tokio runtime"))?;
        let (tx, rx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            redis: self.redis,
            mode: self.mode,
            replicas: self.replicas,
            lease_for: self.lease_for,
            max_keys: self.max_keys,
            local: MemoryStore::new(self.max_keys),
            keys: Mutex::new(HashMap::new()),
            scripts: Scripts::new(),
            ops: tx,
        });
        handle.spawn(background(Arc::downgrade(&shared), rx));
        Ok(RedisStore { shared })
    }
}

/// Rate-limit buckets in Redis (see the [crate docs](crate)); a
/// [`Store`](llm_layers_ratelimit::Store) for `RateLimitLayerBuilder::store`.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("mode", &self.shared.mode)
            .field("replicas", &self.shared.replicas)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    redis: Redis,
    mode: LimitMode,
    replicas: u64,
    lease_for: Duration,
    max_keys: usize,
    /// The buckets used while the store is down (each limit ÷ replicas).
    local: MemoryStore,
    keys: Mutex<HashMap<BucketKey, Local>>,
    scripts: Scripts,
    ops: mpsc::Sender<Op>,
}

/// What this replica knows of a key without asking.
#[derive(Debug, Default)]
struct Local {
    /// Refused until then for this cost or more (Envoy's trick: no round trip meanwhile).
    refused: Option<(Instant, u64)>,
    /// Held (an upstream 429 on our key) until then.
    hold: Option<Instant>,
    /// Leased units not spent yet, when and at what rate they were taken, and how many
    /// were spent since (the local rate, for the next lease's size).
    lease: u64,
    leased_at: Option<Instant>,
    rate: Option<Rate>,
    spent: u64,
    /// A lease request in flight (lease mode): others wait for it.
    flight: Option<Arc<Flight>>,
    /// Units admitted from the local fallback bucket while the store was down, and the
    /// rate they were taken at: charged to the shared bucket once it answers again.
    debt: u64,
    debt_rate: Option<Rate>,
}

impl Local {
    fn idle(&self, now: Instant) -> bool {
        self.lease == 0
            && self.debt == 0
            && self.refused.is_none_or(|(t, _)| t <= now)
            && self.hold.is_none_or(|t| t <= now)
    }
}

enum Op {
    Settle(BucketKey, i64, Rate),
    Hold(BucketKey, Duration),
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Shared {
    fn names(&self, key: &BucketKey) -> (String, String) {
        // The user key is the hash tag: one tenant's request and token buckets share a slot.
        // The limit by its stable name (what it keys by and its rate), never its position:
        // replicas with other flags (a rolling deploy) never share a bucket that means
        // another limit.
        let bucket = self
            .redis
            .key(format_args!("rl:{{{}}}:{}", key.key, key.name));
        let hold = format!("{bucket}:hold");
        (bucket, hold)
    }

    /// This replica's share of a limit, for when the store is down.
    fn share(&self, rate: &Rate) -> Rate {
        Rate {
            amount: (rate.amount / self.replicas).max(1),
            period: rate.period,
            burst: (rate.burst / self.replicas).max(1),
        }
    }

    /// Decides from the local bucket (this replica's share) while the store is down. What
    /// it admits is owed to the shared bucket (`owed`: unless the store may have taken it
    /// already, from a script that ran after its answer came too late): while this replica
    /// is local, the others may still spend from the shared one, which also refills unused
    /// meanwhile; the debt, charged when the store answers again, keeps local plus shared
    /// within the limit.
    fn fallback(
        &self,
        key: &BucketKey,
        cost: u64,
        rate: &Rate,
        owed: bool,
    ) -> Result<(), Duration> {
        self.redis.fell_back("take");
        let decided = self
            .local
            .take_now(key, cost, &self.share(rate), Instant::now());
        if decided.is_ok() && owed {
            let mut keys = lock(&self.keys);
            if keys.len() < self.max_keys || keys.contains_key(key) {
                let l = keys.entry(key.clone()).or_default();
                l.debt = l.debt.saturating_add(cost);
                l.debt_rate = Some(*rate);
            }
        }
        decided
    }

    /// Mirrors an admission of the shared bucket into the local one (never refusing for
    /// it): the local bucket then holds what this replica has been spending, so a fall back
    /// to it starts from this replica's recent rate, not from a fresh burst.
    fn mirror(&self, key: &BucketKey, cost: u64, rate: &Rate, now: Instant) {
        let _ = self.local.take_now(key, cost, &self.share(rate), now);
    }

    /// Asks Redis for between `least` and `want` units.
    async fn ask(
        &self,
        key: &BucketKey,
        least: u64,
        want: u64,
        rate: &Rate,
    ) -> Result<(), Duration> {
        let (bucket, hold) = self.names(key);
        let (interval, tol) = (
            micros(rate.interval()),
            micros(rate.times(rate.burst.max(1))),
        );
        let script = &self.scripts.take;
        let answer = self
            .redis
            .run(|mut con| async move {
                script
                    .key(bucket)
                    .key(hold)
                    .arg(interval)
                    .arg(tol)
                    .arg(want)
                    .arg(least)
                    .invoke_async::<(u64, u64)>(&mut con)
                    .await
            })
            .await;
        let now = Instant::now();
        match answer {
            Ok((granted, 0)) if granted >= least => {
                self.mirror(key, least, rate, now);
                let mut keys = lock(&self.keys);
                let l = keys.entry(key.clone()).or_default();
                l.refused = None;
                if granted > least {
                    l.lease += granted - least;
                    l.leased_at = Some(now);
                    l.rate = Some(*rate);
                }
                Ok(())
            }
            Ok((_, wait_us)) => {
                let wait = Duration::from_micros(wait_us.max(1));
                // Refused until it would fit: asking sooner is a wasted round trip. Not for a
                // token bucket, which refunds (settle-to-usage) can make room in sooner.
                // With leases, not before a lease's worth has come back: under overload a
                // replica asks about once per lease, not once per call.
                if key.limit != LimitId::Tokens {
                    let cached = self.refused_for(wait, rate, want, least);
                    let mut keys = lock(&self.keys);
                    keys.entry(key.clone()).or_default().refused = Some((now + cached, least));
                }
                Err(wait)
            }
            // A late answer may still have been taken in Redis: not owed twice.
            Err(StoreError::Timeout) => self.fallback(key, least, rate, false),
            Err(_) => self.fallback(key, least, rate, true),
        }
    }

    /// How long a refusal is kept without asking again: until it would fit (`wait`); with
    /// leases, not before the lease asked for (`want` beyond `least`) has come back.
    fn refused_for(&self, wait: Duration, rate: &Rate, want: u64, least: u64) -> Duration {
        match self.mode {
            LimitMode::Lease => wait.max(rate.times(want - least)),
            LimitMode::Exact => wait,
        }
    }

    /// Sends an op to the background task, or applies it locally when its queue is full.
    fn send(&self, op: Op) {
        if let Err(mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op)) =
            self.ops.try_send(op)
        {
            self.apply_locally(&op);
        }
    }

    fn apply_locally(&self, op: &Op) {
        match op {
            Op::Settle(key, units, rate) => {
                self.redis.fell_back("settle");
                self.local
                    .settle(key, *units, &self.share(rate), Instant::now());
            }
            Op::Hold(key, d) => {
                self.redis.fell_back("hold");
                self.local.hold(key, Instant::now() + *d);
            }
        }
    }

    async fn run_op(&self, op: Op) {
        let done = match &op {
            Op::Settle(key, units, rate) => {
                let (bucket, _) = self.names(key);
                let (interval, units) = (micros(rate.interval()), *units);
                let script = &self.scripts.settle;
                self.redis
                    .run(|mut con| async move {
                        script
                            .key(bucket)
                            .arg(interval)
                            .arg(units)
                            .invoke_async::<i64>(&mut con)
                            .await
                    })
                    .await
            }
            Op::Hold(key, d) => {
                let (_, hold) = self.names(key);
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
                let script = &self.scripts.hold;
                self.redis
                    .run(|mut con| async move {
                        script.key(hold).arg(ms).invoke_async::<i64>(&mut con).await
                    })
                    .await
            }
        };
        if done.is_err() {
            self.apply_locally(&op);
        }
    }

    /// Gives back leases past their period; charges what was admitted locally to the shared
    /// buckets once the store answers; forgets keys that hold nothing.
    fn sweep(&self, now: Instant) -> Vec<Op> {
        let mut back = Vec::new();
        let healthy = self.redis.is_healthy();
        let mut keys = lock(&self.keys);
        for (k, l) in keys.iter_mut() {
            if healthy && l.debt > 0 {
                if let Some(rate) = l.debt_rate {
                    // At most this replica's share of one burst (the fleet's debts then
                    // come to one burst at most): the shared bucket refills one burst at
                    // most while unused, which is all the others could have spent on top;
                    // and a long outage must not lock the key out for as long afterwards.
                    let owed = l.debt.min(self.share(&rate).burst);
                    back.push(Op::Settle(
                        k.clone(),
                        -i64::try_from(owed).unwrap_or(i64::MAX),
                        rate,
                    ));
                }
                l.debt = 0;
            }
            let expired = l
                .leased_at
                .is_some_and(|at| now.saturating_duration_since(at) >= self.lease_for);
            if l.lease > 0 && expired {
                if let Some(rate) = l.rate {
                    back.push(Op::Settle(
                        k.clone(),
                        i64::try_from(l.lease).unwrap_or(i64::MAX),
                        rate,
                    ));
                }
                l.lease = 0;
            }
        }
        if keys.len() > self.max_keys / 2 {
            keys.retain(|_, l| !l.idle(now));
        }
        back
    }
}

impl Shared {
    fn take(self: &Arc<Self>, key: &BucketKey, cost: u64, rate: &Rate, now: Instant) -> Take {
        let s = self;
        let (want, landing) = {
            let mut keys = lock(&s.keys);
            if keys.len() >= s.max_keys && !keys.contains_key(key) {
                drop(keys);
                return Take::Ready(s.fallback(key, cost, rate, false));
            }
            let l = keys.entry(key.clone()).or_default();
            if let Some(h) = l.hold.filter(|h| *h > now) {
                return Take::Ready(Err(h - now));
            }
            if s.mode == LimitMode::Lease && l.lease >= cost {
                l.lease -= cost;
                l.spent += cost;
                drop(keys);
                s.mirror(key, cost, rate, now);
                return Take::Ready(Ok(()));
            }
            if let Some((t, _)) = l.refused.filter(|(t, c)| *t > now && cost >= *c) {
                return Take::Ready(Err(t - now));
            }
            if !s.redis.inner.health.probe_due() {
                drop(keys);
                return Take::Ready(s.fallback(key, cost, rate, true));
            }
            match s.mode {
                LimitMode::Exact => (cost, None),
                LimitMode::Lease => {
                    if let Some(f) = l.flight.clone() {
                        // A lease is on its way: wait for it, then decide again.
                        let (s, key, rate) = (s.clone(), key.clone(), *rate);
                        return Take::Pending(Box::pin(async move {
                            f.wait(s.redis.inner.budget).await;
                            match Shared::take(&s, &key, cost, &rate, Instant::now()) {
                                Take::Ready(r) => r,
                                Take::Pending(p) => p.await,
                            }
                        }));
                    }
                    let flight = Arc::new(Flight::default());
                    l.flight = Some(flight.clone());
                    let landing = Landing {
                        shared: s.clone(),
                        key: key.clone(),
                        flight,
                    };
                    (cost + s.lease_size(l, cost, rate, now), Some(landing))
                }
            }
        };
        let (s, key, rate) = (s.clone(), key.clone(), *rate);
        Take::Pending(Box::pin(async move {
            let r = s.ask(&key, cost, want, &rate).await;
            drop(landing);
            r
        }))
    }

    /// How many units to lease beyond `cost`: about the local rate × the lease period,
    /// from what was spent since the last lease; never more than the limit itself allows in
    /// a lease period, nor a sixteenth of its burst (a low limit leases nothing ahead: exact,
    /// in effect; what replicas hold unspent stays a small share of the limit).
    fn lease_size(&self, l: &mut Local, cost: u64, rate: &Rate, now: Instant) -> u64 {
        let local = match l.leased_at {
            Some(at) => {
                let el = now
                    .saturating_duration_since(at)
                    .max(Duration::from_millis(1));
                (l.spent as f64 * self.lease_for.as_secs_f64() / el.as_secs_f64()) as u64
            }
            None => 1,
        };
        l.spent = cost;
        let cap = (rate.amount as f64 * self.lease_for.as_secs_f64()
            / rate.period.as_secs_f64().max(1e-9)) as u64;
        match cap.min(rate.burst / 16) {
            // Under one unit per lease period (or a burst under 16): no unit is held ahead.
            0 => 0,
            most => local.clamp(1, most),
        }
    }
}

/// Runs refunds and holds off the call path, and returns expired leases.
async fn background(shared: std::sync::Weak<Shared>, mut rx: mpsc::Receiver<Op>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            _ = tick.tick() => None,
        };
        let Some(s) = shared.upgrade() else { return };
        // Each op on a task of its own: they are independent, and a refund that waits behind
        // others is room a token limit does not have meanwhile.
        let ops = match op {
            Some(op) => vec![op],
            None => s.sweep(Instant::now()),
        };
        for op in ops {
            let s = s.clone();
            tokio::spawn(async move { s.run_op(op).await });
        }
    }
}

impl Store for RedisStore {
    fn take(&self, key: &BucketKey, cost: u64, rate: &Rate, now: Instant) -> Take {
        Shared::take(&self.shared, key, cost, rate, now)
    }

    fn settle(&self, key: &BucketKey, units: i64, rate: &Rate, _now: Instant) {
        if units != 0 {
            self.shared.send(Op::Settle(key.clone(), units, *rate));
        }
    }

    fn hold(&self, key: &BucketKey, until: Instant) {
        let s = &self.shared;
        let now = Instant::now();
        {
            let mut keys = lock(&s.keys);
            let l = keys.entry(key.clone()).or_default();
            l.hold = Some(l.hold.map_or(until, |h| h.max(until)));
        }
        s.send(Op::Hold(key.clone(), until.saturating_duration_since(now)));
    }

    fn len(&self) -> usize {
        lock(&self.shared.keys).len()
    }
}

#[cfg(test)]
mod tests;
