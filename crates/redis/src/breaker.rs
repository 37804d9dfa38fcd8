//! [`BreakerSync`]: breaker trips, closes and holds shared by replicas, half-open probes
//! claimed so that one replica probes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_layers_breaker::{BreakerLayer, Change};
use llm_layers_core::sync::lock;
use redis::Script;

use crate::{Redis, StoreError};

/// One round trip per sync. KEYS: open hash, hold hash, probe-claim prefix (all under one
/// hash tag). ARGV: this replica, the sync interval (ms), how long a probe may take (ms),
/// then our changes as (kind, field, ms) triples: `o` opened for ms, `c` closed, `h` held
/// for ms. Opens and holds are absolute deadlines in Redis time that only a later deadline
/// replaces; a close, or a new open (a failed probe), ends the probe claim. Returns every
/// open entry as (field, ms left, prober) and every hold as (field, ms left, '').
const SYNC: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, every, probe = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
while i + 2 <= #ARGV do
  local kind, field, ms = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if kind == 'h' then
    if now + ms > tonumber(redis.call('HGET', KEYS[2], field) or '0') then
      redis.call('HSET', KEYS[2], field, now + ms)
    end
  else
    redis.call('DEL', KEYS[3] .. field)
    if kind == 'c' then
      redis.call('HDEL', KEYS[1], field)
    elseif now + ms > tonumber(redis.call('HGET', KEYS[1], field) or '0') then
      redis.call('HSET', KEYS[1], field, now + ms)
    end
  end
  i = i + 3
end
local out = {}
local open = redis.call('HGETALL', KEYS[1])
for j = 1, #open, 2 do
  local field, untl = open[j], tonumber(open[j + 1])
  local claim = KEYS[3] .. field
  if untl + probe < now and redis.call('EXISTS', claim) == 0 then
    redis.call('HDEL', KEYS[1], field)
  else
    local prober = ''
    if untl <= now + every then
      local left = math.max(untl - now, 0)
      redis.call('SET', claim, me, 'NX', 'PX', left + probe)
      prober = redis.call('GET', claim) or ''
    end
    table.insert(out, {field, untl - now, prober})
  end
end
local holds = redis.call('HGETALL', KEYS[2])
for j = 1, #holds, 2 do
  local field, untl = holds[j], tonumber(holds[j + 1])
  if untl <= now then
    redis.call('HDEL', KEYS[2], field)
  else
    table.insert(out, {field, untl - now, 'hold'})
  end
end
return out
";

const SEP: char = '\u{1f}';

fn field(model: &str, provider: Option<&str>) -> String {
    format!("{model}{SEP}{}", provider.unwrap_or(""))
}

fn parse(field: &str) -> Option<(Arc<str>, Option<Arc<str>>)> {
    let (m, p) = field.split_once(SEP)?;
    Some((Arc::from(m), (!p.is_empty()).then(|| Arc::from(p))))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Shares one [`BreakerLayer`]'s trips, closes and holds with every replica syncing to the
/// same Redis (and prefix), by polling: each [`sync`](BreakerSync::sync) publishes what
/// changed here and applies what changed anywhere, in one script call. A trip on one
/// replica keeps the provider out of every replica's calls from their next sync (one sync
/// interval). When an open breaker is due to half-open, the first replica to sync claims the
/// probe (`SET NX PX`); the others keep the provider out until that probe is decided (its
/// success closes it everywhere, its failure re-opens it everywhere for longer) or the claim
/// lapses (`probe_timeout`, 30 s by default: a prober that died). Another replica's trip
/// never makes a call fail fast on its own (see [`BreakerLayer::apply`]).
#[derive(Debug, Clone)]
pub struct BreakerSync {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: Redis,
    layer: BreakerLayer,
    every: Duration,
    probe_timeout: Duration,
    script: ScriptDebug,
    /// Fields opened here from Redis last time: a field gone from Redis is closed here.
    remote: Mutex<HashSet<String>>,
    /// Our changes a round could not publish, said again at the next.
    unsent: Mutex<Vec<Change>>,
}

struct ScriptDebug(Script);

impl std::fmt::Debug for ScriptDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script")
    }
}

impl BreakerSync {
    /// Shares `layer` through `redis`, syncing every `every` (the time a trip takes to reach
    /// the other replicas).
    pub fn new(redis: &Redis, layer: &BreakerLayer, every: Duration) -> BreakerSync {
        // From now on the layer keeps its changes for us.
        let _ = layer.changes();
        BreakerSync {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                layer: layer.clone(),
                every: every.max(Duration::from_millis(10)),
                probe_timeout: Duration::from_secs(30),
                script: ScriptDebug(Script::new(SYNC)),
                remote: Mutex::new(HashSet::new()),
                unsent: Mutex::new(Vec::new()),
            }),
        }
    }

    /// How long a claimed probe keeps the other replicas out before another may claim it
    /// (default 30 s). Set it before cloning or spawning (a shared sync keeps its own).
    #[must_use]
    pub fn probe_timeout(mut self, d: Duration) -> BreakerSync {
        if let Some(i) = Arc::get_mut(&mut self.inner) {
            i.probe_timeout = d;
        }
        self
    }

    /// One round: publishes our changes, applies everyone's. With the store down, our
    /// changes are kept for the next round that reaches it (local state goes on alone).
    ///
    /// # Errors
    ///
    /// The store gave no answer (counted in `llm_store_fallback_total{op="breaker"}`).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let i = &self.inner;
        let mut changes = std::mem::take(&mut *lock(&i.unsent));
        changes.extend(i.layer.changes());
        let mut args: Vec<String> = vec![
            i.redis.inner.replica.to_string(),
            ms(i.every).to_string(),
            ms(i.probe_timeout).to_string(),
        ];
        for c in &changes {
            let (m, p) = c.key();
            let (kind, d) = match c {
                Change::Opened { open_for, .. } => ("o", *open_for),
                Change::Closed { .. } => ("c", Duration::ZERO),
                Change::Held { held_for, .. } => ("h", *held_for),
                _ => continue,
            };
            args.extend([kind.to_owned(), field(m, p), ms(d).to_string()]);
        }
        let keys = [
            i.redis.key(format_args!("{{brk}}:open")),
            i.redis.key(format_args!("{{brk}}:hold")),
            i.redis.key(format_args!("{{brk}}:probe:")),
        ];
        let script = &i.script.0;
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
                inv.invoke_async::<Vec<(String, i64, String)>>(&mut con)
                    .await
            })
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                i.redis.fell_back("breaker");
                // Not lost: said again at the next round that reaches the store.
                let mut unsent = lock(&i.unsent);
                let room = 4096usize.saturating_sub(unsent.len());
                unsent.extend(changes.into_iter().take(room));
                return Err(e);
            }
        };
        let me = i.redis.replica();
        let mut seen = HashSet::new();
        for (f, left_ms, prober) in rows {
            let Some((model, provider)) = parse(&f) else {
                continue;
            };
            let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
            if prober == "hold" {
                if let Some(provider) = provider {
                    i.layer.apply(&Change::held(model, provider, left));
                }
                continue;
            }
            // Someone else probes: keep it out here until that is decided. Nobody yet: keep
            // it out one interval past its end, so the probe is claimed (at a sync within
            // an interval of the end) before this replica would half-open on its own.
            let open_for = if prober == me {
                left
            } else if prober.is_empty() {
                left + i.every
            } else {
                left.max(i.every * 2)
            };
            i.layer.apply(&Change::opened(model, provider, open_for));
            seen.insert(f);
        }
        let mut remote = lock(&i.remote);
        for gone in remote.difference(&seen) {
            if let Some((model, provider)) = parse(gone) {
                i.layer.apply(&Change::closed(model, provider));
            }
        }
        *remote = seen;
        Ok(())
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
