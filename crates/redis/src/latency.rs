//! [`LatencySync`]: latency profiles per (model, provider) pushed as mergeable summaries and
//! merged on read, so a fleet learns once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use llm_layers_latency::{LatencyStore, Summary};
use redis::Script;

use crate::{Redis, StoreError};

/// KEYS: the summaries hash. ARGV: this instance, how long a summary counts (ms), then
/// (field, summary) pairs of ours. Each value is stored as `at_ms|summary`; entries older
/// than the window are dropped; returns every other instance's (field, summary).
const SYNC: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, window = ARGV[1], tonumber(ARGV[2])
local i = 3
while i + 1 <= #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i] .. '\31' .. me, now .. '|' .. ARGV[i + 1])
  i = i + 2
end
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local field, v = all[j], all[j + 1]
  local bar = string.find(v, '|', 1, true)
  local at = tonumber(string.sub(v, 1, bar - 1))
  if at + window < now then
    redis.call('HDEL', KEYS[1], field)
  elseif string.sub(field, -#me - 1) ~= '\31' .. me then
    table.insert(out, {field, string.sub(v, bar + 1)})
  end
end
redis.call('PEXPIRE', KEYS[1], window * 2)
return out
";

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
/// hundred bytes to a few KiB; one round trip per sync carries ours and reads all.
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

    /// One round: pushes ours, merges everyone else's. Returns how many (model, provider)
    /// keys the fleet had for us.
    ///
    /// # Errors
    ///
    /// The store gave no answer (counted in `llm_store_fallback_total{op="latency"}`); the
    /// store goes on with its own samples and what it merged last.
    pub async fn sync(&self) -> Result<usize, StoreError> {
        let i = &self.inner;
        let window_ms = u64::try_from(i.window.as_millis()).unwrap_or(u64::MAX);
        let mut args = vec![i.instance.clone(), window_ms.to_string()];
        for (model, provider, s) in i.store.export() {
            args.push(format!("{model}{SEP}{}", provider.unwrap_or_default()));
            args.push(s.encode());
        }
        let key = i.redis.key(format_args!("{{lat}}:summaries"));
        let script = &i.script;
        let rows = i
            .redis
            .run(|mut con| async move {
                let mut inv = script.key(key);
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke_async::<Vec<(String, String)>>(&mut con).await
            })
            .await
            .inspect_err(|_| i.redis.fell_back("latency"))?;
        let mut by_key: HashMap<(String, String), Vec<Summary>> = HashMap::new();
        for (field, text) in rows {
            let mut parts = field.split(SEP);
            let (Some(model), Some(provider)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Some(s) = Summary::decode(&text) {
                by_key
                    .entry((model.to_owned(), provider.to_owned()))
                    .or_default()
                    .push(s);
            }
        }
        let n = by_key.len();
        for ((model, provider), summaries) in by_key {
            let p = (!provider.is_empty()).then_some(provider.as_str());
            i.store.merge_fleet(&model, p, &summaries, i.window);
        }
        Ok(n)
    }

    /// Syncs every interval on a task of its own until the returned handle is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        crate::every(self.inner.every, move || {
            let s = self.clone();
            async move {
                let _ = s.sync().await;
            }
        })
    }
}
