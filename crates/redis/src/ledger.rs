//! [`RedisLedger`]: budgets' spend shared by every replica.

use std::sync::Arc;

use llm_layers_core::ledger::{Held, Ledger, LedgerFuture, MemoryLedger, Refused, Window};
use redis::Script;

use crate::{Redis, StoreError};

/// Reserves ARGV[1] under the limit ARGV[2] in KEYS[1], kept ARGV[3] seconds (to its
/// window's end and a day longer, for late settles): `{1, total}` or `{0, total}`.
const RESERVE: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if v + amount > tonumber(ARGV[2]) then return {0, v} end
local n = redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, n}
";

/// Adds ARGV[1] to KEYS[1], never below zero (a settle after the key expired starts it
/// again at what was spent).
const SETTLE: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') n = 0 end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], 172800) end
return n
";

/// A [`Ledger`] in Redis: every replica reserves from and settles to one counter per tenant
/// and window (`{prefix}:spend:{tenant}:{window}:{index}`, nano-dollars, one atomic script
/// per reservation), so N replicas keep one budget, not N.
///
/// Redis down or late is not an outage: a replica then reserves from its own
/// [`MemoryLedger`] against its share of the limit (limit ÷ replicas), as the rate limits do,
/// and settles those reservations there; `llm_store_fallback_total{op="budget"}` counts it.
#[derive(Clone, Debug)]
pub struct RedisLedger {
    redis: Redis,
    local: MemoryLedger,
    replicas: i64,
    scripts: Arc<(Script, Script)>,
}

impl RedisLedger {
    /// A ledger on `redis`, shared by `replicas` replicas (at least 1).
    pub fn new(redis: &Redis, replicas: u64) -> RedisLedger {
        RedisLedger {
            redis: redis.clone(),
            local: MemoryLedger::default(),
            replicas: i64::try_from(replicas.max(1)).unwrap_or(i64::MAX),
            scripts: Arc::new((Script::new(RESERVE), Script::new(SETTLE))),
        }
    }

    fn name(&self, key: &str, window: Window, index: i64) -> String {
        self.redis
            .key(format_args!("spend:{key}:{}:{index}", window.name()))
    }
}

impl Ledger for RedisLedger {
    fn reserve(
        &self,
        key: &str,
        window: Window,
        amount: i64,
        limit: i64,
        now: u64,
    ) -> LedgerFuture<'_, Result<Held, Refused>> {
        let period = window.at(now);
        let name = self.name(key, window, period.index);
        let key = key.to_owned();
        let ttl = period.ends.saturating_sub(now) + 86_400;
        Box::pin(async move {
            let script = &self.scripts.0;
            let answer = self
                .redis
                .run(|mut con| async move {
                    script
                        .key(name)
                        .arg(amount)
                        .arg(limit)
                        .arg(ttl)
                        .invoke_async::<(i64, i64)>(&mut con)
                        .await
                })
                .await;
            match answer {
                Ok((1, _)) => Ok(Held {
                    period,
                    amount,
                    local: false,
                }),
                Ok((_, spent)) => Err(Refused { period, spent }),
                Err(e) => {
                    // A late answer may have been taken in Redis too: the budget is then
                    // held twice until it settles, on the safe side.
                    if !matches!(e, StoreError::Down) {
                        tracing::debug!(error = %e, "budget from local state");
                    }
                    self.redis.fell_back("budget");
                    let share = limit / self.replicas;
                    self.local
                        .reserve_now(&key, window, amount, share, now)
                        .map(|h| Held { local: true, ..h })
                }
            }
        })
    }

    fn settle(&self, key: &str, held: Held, delta: i64) -> LedgerFuture<'static, ()> {
        if held.local {
            self.local.settle_now(key, held, delta);
            return Box::pin(std::future::ready(()));
        }
        let name = self.name(key, held.period.window, held.period.index);
        let this = self.clone();
        Box::pin(async move {
            let script = &this.scripts.1;
            let done = this
                .redis
                .run(|mut con| async move {
                    script
                        .key(name)
                        .arg(delta)
                        .invoke_async::<i64>(&mut con)
                        .await
                })
                .await;
            if done.is_err() {
                // The shared counter keeps the reservation (too much, never too little).
                this.redis.fell_back("budget_settle");
            }
        })
    }

    fn spent(&self, key: &str, window: Window, now: u64) -> LedgerFuture<'_, i64> {
        let period = window.at(now);
        let name = self.name(key, window, period.index);
        let key = key.to_owned();
        Box::pin(async move {
            let got = self
                .redis
                .run(|mut con| async move {
                    redis::cmd("GET")
                        .arg(name)
                        .query_async::<Option<i64>>(&mut con)
                        .await
                })
                .await;
            match got {
                Ok(v) => v.unwrap_or(0),
                Err(_) => self.local.spent_now(&key, window, now),
            }
        })
    }
}
