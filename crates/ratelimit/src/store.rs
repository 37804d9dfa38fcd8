//! Bucket state: the [`Store`] trait and the in-process [`MemoryStore`].

use llm_layers_core::hash::HashMap;
use llm_layers_core::sync::lock;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A rate: `amount` units per `period`, with room for a burst of `burst` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Units per period (sustained).
    pub amount: u64,
    /// The period.
    pub period: Duration,
    /// Units that may be taken at once from a full bucket.
    pub burst: u64,
}

impl Rate {
    /// Time that one unit stands for, computed in nanoseconds as `u128` (no truncation of
    /// the amount, however large; `Limit::validate` refuses a zero interval).
    pub fn interval(&self) -> Duration {
        nanos(self.period.as_nanos() / u128::from(self.amount.max(1)))
    }

    /// `n` intervals, saturating.
    pub fn times(&self, n: u64) -> Duration {
        nanos(self.interval().as_nanos().saturating_mul(u128::from(n)))
    }
}

/// A duration of `n` nanoseconds, saturating at about 584 years.
fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// `at + d`, or a year ahead when that would overflow the clock.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    at.checked_add(d.min(YEAR)).unwrap_or(at)
}

/// A decision a store could only make with a round trip (a shared store): it resolves to
/// what [`Take::Ready`] would have said. It must do nothing until polled, and taking units is
/// its only effect (dropped after it resolved, the units stay taken: safe, never over-admits).
pub type Pending = Pin<Box<dyn Future<Output = Result<(), Duration>> + Send>>;

/// What [`Store::take`] decided.
#[must_use = "a take that is not looked at may have taken units"]
pub enum Take {
    /// Decided from state at hand: taken, or how long until the units would fit.
    Ready(Result<(), Duration>),
    /// Only a round trip can tell (admission then awaits it, off the fast path).
    Pending(Pending),
}

impl fmt::Debug for Take {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Take::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Take::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// Where bucket state lives. The in-process [`MemoryStore`] is the default; a shared store
/// (`llm-layers-redis`: a GCRA script in Redis, with leases) implements the same calls.
///
/// Buckets are GCRA: a bucket is its theoretical arrival time (TAT); taking `cost` units moves
/// it by `cost` intervals, and is allowed while it stays within the burst of now.
pub trait Store: Send + Sync + 'static {
    /// Takes `cost` units from `key`'s bucket, or says how long until they would fit; a
    /// shared store that cannot tell from what it holds answers [`Take::Pending`].
    fn take(&self, key: &BucketKey, cost: u64, rate: &Rate, now: Instant) -> Take;

    /// Gives `units` back (a reservation that was too large), or takes more (negative:
    /// usage above the reservation). Never fails: a debit may push the bucket into debt.
    fn settle(&self, key: &BucketKey, units: i64, rate: &Rate, now: Instant);

    /// Refuses everything for `key` until `until` (an upstream 429 with Retry-After).
    fn hold(&self, key: &BucketKey, until: Instant);

    /// How many keys it holds (for bounds and tests).
    fn len(&self) -> usize;

    /// Whether it holds no key.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which of a layer's limits a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitId {
    /// The request limit at this index, in the order they were added to the builder.
    Requests(usize),
    /// The LLM-token limit.
    Tokens,
}

/// A bucket's key: which limit, and the user key the limit's key function gave.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// Which limit.
    pub limit: LimitId,
    /// The limit's stable name (what it keys by, or the name given, and its rate:
    /// `requests:tenant:60/60000ms:10`): what a store shared by replicas calls it, so
    /// the same bucket means the same limit on every replica whatever order limits were
    /// added in.
    pub name: Arc<str>,
    /// The user key (tenant, model, ...); `_OTHER` once the store is full.
    pub key: Arc<str>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tat: Instant,
    hold_until: Option<Instant>,
}

/// The in-process store: a map sharded by key hash over 16 mutexes, each held for well under
/// a microsecond per decision, never across an await. Bounded: at `max_keys` (split evenly
/// over the shards), buckets that owe nothing (their TAT is past, no hold) are evicted; if
/// none can go, new keys share one `_OTHER` bucket.
///
/// Memory: about 100 bytes per key plus the key's text.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    max_per_shard: usize,
}

type Shard = (HashMap<BucketKey, Bucket>, Option<Instant>);

const SHARDS: usize = 16;

/// The shard `key`'s bucket lives in.
fn shard_of(key: &BucketKey) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(key, &mut h);
    std::hash::Hasher::finish(&h) as usize % SHARDS
}

impl MemoryStore {
    /// A store of at most `max_keys` buckets (at least 1).
    pub fn new(max_keys: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new((HashMap::default(), None)))
                .collect(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    fn with<R>(&self, key: &BucketKey, now: Instant, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let mut guard = lock(&self.shards[shard_of(key)]);
        let (map, next_sweep) = &mut *guard;
        if let Some(b) = map.get_mut(key) {
            return f(b);
        }
        let mut k = key.clone();
        if map.len() >= self.max_per_shard {
            // Sweep out buckets that owe nothing, at most every 100 ms: a flood of new keys
            // must not make every decision scan the whole map.
            if next_sweep.is_none_or(|t| now >= t) {
                map.retain(|_, b| b.tat > now || b.hold_until.is_some_and(|h| h > now));
                *next_sweep = Some(now + Duration::from_millis(100));
            }
            if map.len() >= self.max_per_shard {
                k.key = Arc::from(crate::OTHER);
            }
        }
        let b = map.entry(k).or_insert(Bucket {
            tat: now,
            hold_until: None,
        });
        f(b)
    }
}

impl Store for MemoryStore {
    fn take(&self, key: &BucketKey, cost: u64, rate: &Rate, now: Instant) -> Take {
        Take::Ready(self.take_now(key, cost, rate, now))
    }

    fn settle(&self, key: &BucketKey, units: i64, rate: &Rate, now: Instant) {
        self.with(key, now, |b| {
            let shift = rate.times(units.unsigned_abs());
            if units >= 0 {
                // A refund never takes the bucket below full.
                b.tat = b.tat.checked_sub(shift).unwrap_or(now).max(now.min(b.tat));
            } else {
                b.tat = later(b.tat.max(now), shift);
            }
        });
    }

    fn hold(&self, key: &BucketKey, until: Instant) {
        self.with(key, Instant::now(), |b| {
            b.hold_until = Some(b.hold_until.map_or(until, |h| h.max(until)));
        });
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).0.len()).sum()
    }
}

impl MemoryStore {
    /// The GCRA decision, from the bucket in this process.
    pub fn take_now(
        &self,
        key: &BucketKey,
        cost: u64,
        rate: &Rate,
        now: Instant,
    ) -> Result<(), Duration> {
        let tolerance = rate.times(rate.burst.max(1));
        self.with(key, now, |b| {
            if let Some(h) = b.hold_until {
                if h > now {
                    return Err(h - now);
                }
                b.hold_until = None;
            }
            let new_tat = later(b.tat.max(now), rate.times(cost));
            let ahead = new_tat.saturating_duration_since(now);
            if ahead > tolerance {
                Err(ahead - tolerance)
            } else {
                b.tat = new_tat;
                Ok(())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_instant_is_capped_at_a_year_and_a_near_one_is_exact() {
        let now = Instant::now();
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(
            later(now, Duration::from_secs(3600)),
            now + Duration::from_secs(3600)
        );
        assert_eq!(later(now, year * 2), now + year);
        assert_eq!(
            later(now, year - Duration::from_secs(1)),
            now + year - Duration::from_secs(1)
        );
    }

    #[test]
    fn a_store_is_empty_until_it_holds_a_bucket() {
        let store = MemoryStore::new(16);
        assert!(Store::is_empty(&store));
        let key = BucketKey {
            limit: LimitId::Tokens,
            name: Arc::from("tokens"),
            key: Arc::from("k"),
        };
        let rate = Rate {
            amount: 10,
            period: Duration::from_secs(1),
            burst: 10,
        };
        assert!(store.take_now(&key, 1, &rate, Instant::now()).is_ok());
        assert!(!Store::is_empty(&store));
        assert_eq!(Store::len(&store), 1);
    }

    /// A flood of new keys sweeps out only the buckets that owe nothing: a key at its limit,
    /// or held, keeps its state (evicting it would reset its limit).
    #[test]
    fn a_flood_of_new_keys_never_resets_a_bucket_that_owes_or_is_held() {
        let store = MemoryStore::new(SHARDS * 4);
        let rate = Rate {
            amount: 1,
            period: Duration::from_secs(60),
            burst: 2,
        };
        let key = |k: &str| BucketKey {
            limit: LimitId::Tokens,
            name: Arc::from("tokens"),
            key: Arc::from(k),
        };
        let now = Instant::now();
        assert!(store.take_now(&key("spent"), 2, &rate, now).is_ok());
        store.hold(&key("held"), now + Duration::from_secs(3600));
        // Keys of a fast limit: each owes nothing a millisecond later, so neither they nor
        // the overflow bucket can be what refuses the two below.
        let fast = Rate {
            amount: 1000,
            period: Duration::from_secs(1),
            burst: 1,
        };
        for i in 0..200 {
            let at = now + Duration::from_millis(150 * i);
            assert!(
                store
                    .take_now(&key(&format!("flood {i}")), 1, &fast, at)
                    .is_ok()
            );
        }
        let at = now + Duration::from_secs(31);
        assert!(
            store.take_now(&key("spent"), 1, &rate, at).is_err(),
            "still spent"
        );
        assert!(
            store.take_now(&key("held"), 1, &rate, at).is_err(),
            "still held"
        );
        // Later, the swept room is used again: two new keys of one full shard each get a
        // bucket of their own, not the shared overflow bucket.
        let shard = shard_of(&key("flood 0"));
        let mut fresh = (0..)
            .map(|i| format!("new {i}"))
            .filter(|k| shard_of(&key(k)) == shard);
        let (a, b) = (fresh.next().unwrap(), fresh.next().unwrap());
        let later = at + Duration::from_secs(1);
        assert!(store.take_now(&key(&a), 2, &rate, later).is_ok());
        assert!(
            store.take_now(&key(&b), 2, &rate, later).is_ok(),
            "a bucket of its own"
        );
    }

    /// Keys spread over the shards: a store of 64 holds 8 keys apart (its shards hold 4
    /// each, so keys all in one shard would share an overflow bucket past the fourth).
    #[test]
    fn keys_spread_over_the_shards() {
        let store = MemoryStore::new(SHARDS * 4);
        let rate = Rate {
            amount: 10,
            period: Duration::from_secs(1),
            burst: 10,
        };
        let now = Instant::now();
        for i in 0..8 {
            let key = BucketKey {
                limit: LimitId::Tokens,
                name: Arc::from("tokens"),
                key: Arc::from(format!("k{i}")),
            };
            assert!(store.take_now(&key, 1, &rate, now).is_ok());
        }
        assert_eq!(Store::len(&store), 8);
    }
}
