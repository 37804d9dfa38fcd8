//! [`LatencySync`]: latency profiles per (model, provider) pushed as mergeable summaries and
//! merged on read, so a fleet learns once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use llm_layers_latency::{LatencyStore, Summary};
use redis::Script;

use crate::{Redis, StoreError};

/// KEYS[1]: the index of models (a sorted set: a model's hash -> when it was last pushed,
/// ms); KEYS[2..]: one hash per model, `provider\31instance` -> `at_ms|summary`. ARGV: this
/// instance, how long a summary counts (ms), then for each model hash in KEYS' order: how
/// many summaries of ours, and as many (provider, summary) pairs. Entries older than the
/// window are dropped; returns every other instance's `{model index, field, summary}` for
/// the models asked, never the whole fleet's.
const SYNC: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, window = ARGV[1], tonumber(ARGV[2])
local a = 3
local out = {}
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('HSET', KEYS[k], ARGV[a] .. '\31' .. me, now .. '|' .. ARGV[a + 1])
    a = a + 2
  end
  if n > 0 then
    redis.call('ZADD', KEYS[1], now, KEYS[k])
    redis.call('PEXPIRE', KEYS[k], window * 2)
  end
  local all = redis.call('HGETALL', KEYS[k])
  for j = 1, #all, 2 do
    local field, v = all[j], all[j + 1]
    local bar = string.find(v, '|', 1, true)
    local at = tonumber(string.sub(v, 1, bar - 1))
    if at + window < now then
      redis.call('HDEL', KEYS[k], field)
    elseif string.sub(field, -#me - 1) ~= '\31' .. me then
      table.insert(out, {k - 1, field, string.sub(v, bar + 1)})
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window * 2)
redis.call('PEXPIRE', KEYS[1], window * 2)
return out
";

/// Models of the fleet read per round besides our own, in turn (so a replica learns, in
/// time, models it has not served yet without reading the whole fleet every round).
const OTHERS_PER_ROUND: isize = 16;

const SEP: char = '\u{1f}';

/// Shares one [`LatencyStore`]'s measurements with every replica syncing to the same Redis
/// (and prefix): each [`sync`](LatencySync::sync) pushes this process's own windows per
/// (model, provider) as [`Summary`]s and merges the other processes' into the store (read
/// with local samples, never pushed back). A replica that starts, or restarts, has the
/// fleet's profile after its first sync: call it once before serving. Summaries older than
/// the window (default 60 s, the store's) are dropped, in Redis and here.
///
/// Each summary is one key's HDR histograms (2 significant digits: a quantile of the merged
/// fleet is within 1 % of the exact one over the same samples) as value:count pairs, a few
/// hundred bytes to a few KiB. Summaries live in one hash per model, so a round reads the
/// models this replica pushes and a few others in turn, never the whole fleet's: what one
/// round moves grows with what this replica serves, not with the fleet. [`sync`] (the
/// round to call before serving) reads every model the fleet knows.
///
/// [`sync`]: LatencySync::sync
#[derive(Debug, Clone)]
pub struct LatencySync {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    store: LatencyStore,
    every: Duration,
    window: Duration,
    /// This process (a replica restarted under the same name is another instance: its old
    /// self's summaries are merged, not taken for its own).
    instance: String,
    script: Script,
    /// Where the next round's turn through the fleet's other models starts.
    cursor: std::sync::atomic::AtomicIsize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySync")
            .field("instance", &self.instance)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl LatencySync {
    /// Shares `store` through `redis`, pushing and merging every `every` (default a few
    /// seconds is plenty: profiles move over a window).
    pub fn new(redis: &Redis, store: &LatencyStore, every: Duration) -> LatencySync {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        LatencySync {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                store: store.clone(),
                every: every.max(Duration::from_millis(10)),
                window: Duration::from_secs(60),
                instance: format!("{}.{nonce:x}", redis.replica()),
                script: Script::new(SYNC),
                cursor: std::sync::atomic::AtomicIsize::new(0),
            }),
        }
    }

    /// How long a summary counts (default 60 s). Set it before cloning or spawning.
    #[must_use]
    pub fn window(mut self, d: Duration) -> LatencySync {
        if let Some(i) = Arc::get_mut(&mut self.inner) {
            i.window = d.max(Duration::from_millis(1));
        }
        self
    }

    /// A whole round: pushes ours and merges everyone else's for every model the fleet
    /// knows (call it once before serving). Returns how many (model, provider) keys the
    /// fleet had for us.
    ///
    /// # Errors
    ///
    /// The store gave no answer (counted in `llm_store_fallback_total{op="latency"}`); the
    /// store goes on with its own samples and what it merged last.
    pub async fn sync(&self) -> Result<usize, StoreError> {
        self.round(None).await
    }

    /// One periodic round, as [`spawn`](LatencySync::spawn) runs them: pushes ours and
    /// merges everyone else's for the models this replica pushes and, in turn, a few of the
    /// fleet's others. Returns how many (model, provider) keys the fleet had for us.
    ///
    /// # Errors
    ///
    /// As [`sync`](LatencySync::sync).
    pub async fn step(&self) -> Result<usize, StoreError> {
        self.round(Some(OTHERS_PER_ROUND)).await
    }

    /// One round: `others` of the fleet's other models (from the cursor; `None`: all).
    async fn round(&self, others: Option<isize>) -> Result<usize, StoreError> {
        let i = &self.inner;
        let window_ms = u64::try_from(i.window.as_millis()).unwrap_or(u64::MAX);
        let index = i.redis.key(format_args!("{{lat}}:models"));
        let hash_of = |model: &str| i.redis.key(format_args!("{{lat}}:m:{model}"));
        let mut ours: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (model, provider, s) in i.store.export() {
            ours.entry(model)
                .or_default()
                .push((provider.unwrap_or_default(), s.encode()));
        }
        // The fleet's other models to read this round.
        let (start, stop) = match others {
            None => (0, -1),
            Some(n) => {
                let at = i.cursor.load(std::sync::atomic::Ordering::Relaxed);
                (at, at + n - 1)
            }
        };
        let listed = {
            let index = index.clone();
            i.redis
                .run(|mut con| async move {
                    redis::cmd("ZRANGE")
                        .arg(index)
                        .arg(start)
                        .arg(stop)
                        .query_async::<Vec<String>>(&mut con)
                        .await
                })
                .await
                .inspect_err(|_| i.redis.fell_back("latency"))?
        };
        if others.is_some() {
            let next = if listed.is_empty() { 0 } else { stop + 1 };
            i.cursor.store(next, std::sync::atomic::Ordering::Relaxed);
        }
        let prefix = hash_of("");
        let mut models: Vec<String> = ours.keys().cloned().collect();
        for key in listed {
            if let Some(m) = key.strip_prefix(&prefix) {
                if !ours.contains_key(m) {
                    models.push(m.to_owned());
                }
            }
        }
        let mut keys = vec![index];
        let mut args = vec![i.instance.clone(), window_ms.to_string()];
        for m in &models {
            keys.push(hash_of(m));
            let mine = ours.get(m.as_str()).map_or(&[][..], Vec::as_slice);
            args.push(mine.len().to_string());
            for (provider, summary) in mine {
                args.push(provider.clone());
                args.push(summary.clone());
            }
        }
        let script = &i.script;
        let rows = i
            .redis
            .run(|mut con| async move {
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke_async::<Vec<(usize, String, String)>>(&mut con)
                    .await
            })
            .await
            .inspect_err(|_| i.redis.fell_back("latency"))?;
        let mut by_key: HashMap<(usize, String), Vec<Summary>> = HashMap::new();
        for (model, field, text) in rows {
            let Some(provider) = field.split(SEP).next() else {
                continue;
            };
            if let Some(s) = Summary::decode(&text) {
                by_key
                    .entry((model, provider.to_owned()))
                    .or_default()
                    .push(s);
            }
        }
        let n = by_key.len();
        for ((m, provider), summaries) in by_key {
            let Some(model) = models.get(m.wrapping_sub(1)) else {
                continue;
            };
            let p = (!provider.is_empty()).then_some(provider.as_str());
            i.store.merge_fleet(model, p, &summaries, i.window);
        }
        Ok(n)
    }

    /// Syncs every interval on a task of its own until the returned handle is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        crate::every(self.inner.every, move || {
            let s = self.clone();
            async move {
                let _ = s.step().await;
            }
        })
    }
}
