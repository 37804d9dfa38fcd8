//! [`LatencyStore`]: recent latency per (model, provider) and per model, shared and windowed.

use llm_layers_core::ConfigError;
use llm_layers_core::hash::HashMap;
use llm_layers_core::sync::{lock, read, write};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use crate::stats::{Outcome, Prior, Stats};
use tokio::time::Instant;

mod calibration;
mod fleet;
mod window;
pub use fleet::Summary;
use window::{Half, TPS_MAX, TTFT_MAX, TTFT_UNIT_US, Windows, compute_with, median_with_given_up};

/// Samples of a pair that test its own prior.
const FIRST_TEST: u64 = 3;

/// The model key that unknown models fold into once the store is full.
pub const OTHER: &str = "_OTHER";

struct Entry {
    windows: Mutex<Windows>,
    cache: RwLock<(Instant, Stats)>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            windows: Mutex::new(Windows {
                current: Half::new(),
                previous: Half::new(),
                rotated_at: now,
                prior: None,
                fleet: None,
            }),
            cache: RwLock::new((now, Stats::default())),
        }
    }
}

struct ModelEntries {
    all: Arc<Entry>,
    providers: HashMap<Arc<str>, Arc<Entry>>,
}

struct Inner {
    half: Duration,
    prior_weight: f64,
    max_keys: usize,
    min_samples: u64,
    refresh: Duration,
    /// model -> its entry and its providers' entries.
    entries: RwLock<HashMap<Arc<str>, ModelEntries>>,
    /// How far the priors are from what was measured.
    calibration: calibration::Calibration,
}

fn count_keys(map: &HashMap<Arc<str>, ModelEntries>) -> usize {
    map.values().map(|m| 1 + m.providers.len()).sum()
}

/// Recent latency and outcomes per (model, provider) and per model, over a sliding window
/// (two halves: a sample counts for between one half and one whole window), shared by every
/// clone. The hedge reads its delay here, the router and breaker their rankings.
///
/// Recording takes one short lock per key; reading takes a read lock on a cached snapshot
/// that is recomputed at most every 250 ms.
///
/// Memory: about 40 KiB per key (eight HDR histograms of 2 significant digits); keys are
/// capped (default 256). A model gets keys when it is [admitted](LatencyStore::admit) (the
/// router admits its tiers' models) or at its first success: a stream of junk model names
/// that only ever fail takes no room. When full, keys idle for a whole window are evicted
/// first; only then do new models fold into `_OTHER`.
///
/// **Censored samples.** An attempt given up before its first token (a hedge lost, the
/// caller left) says only that its TTFT was at least the time it ran. It is counted once,
/// in [`Stats::censored`], and kept out of the TTFT quantiles, which are of attempts that
/// reached their first token: a lower bound read as a sample would drag a quantile toward
/// the hedge delay that cut it (mixing exact and censored values needs an estimator such
/// as Kaplan–Meier, which wants the at-risk set per value that a two-digit sketch does not
/// keep). Attempts that ran out of time are in the timeout rate; so the tail is seen
/// three ways: quantiles of what committed, the timeout rate, the censored count. How long
/// censored attempts ran is kept too: it is what a [`Prior`] answers to (a censored attempt
/// counts against the prior's weight like a sample, and with no sample the median time
/// censored attempts ran stands in for the measurement), so a provider published as fast
/// whose attempts keep losing races loses its published rank in a few calls.
///
/// ```
/// use std::time::Duration;
/// use llm_layers_latency::{LatencyStore, Outcome};
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
/// let store = LatencyStore::builder().min_samples(3).build()?;
/// for ms in [100, 200, 300, 400] {
///     store.record(("m", Some("Alpha")), Some(Duration::from_millis(ms)), None, Outcome::Ok);
/// }
/// let p50 = store.ttft_quantile("m", None, 0.5).ok_or("no p50")?;
/// assert!(p50 >= Duration::from_millis(195) && p50 <= Duration::from_millis(205));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LatencyStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LatencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyStore")
            .field("window", &(self.inner.half * 2))
            .field("keys", &self.keys())
            .finish()
    }
}

impl Default for LatencyStore {
    fn default() -> Self {
        LatencyStore::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

/// Builds a [`LatencyStore`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LatencyStoreBuilder {
    window: Duration,
    max_keys: usize,
    min_samples: u64,
    prior_weight: u32,
    refresh: Duration,
}

impl LatencyStoreBuilder {
    /// How long a computed snapshot of a key's stats is reused (default 250 ms, at most
    /// half the window). Readers that cache what they derive from it (the router's order)
    /// use the same period.
    pub fn refresh(mut self, d: Duration) -> Self {
        self.refresh = d;
        self
    }

    /// How many calls a [`Prior`] is worth (default 5, at most 1000): after that many
    /// local TTFT samples the prior has half the say in a quantile. Published stats are
    /// everyone's traffic over 30 minutes; a few of our own calls should outweigh them.
    pub fn prior_weight(mut self, calls: u32) -> Self {
        self.prior_weight = calls;
        self
    }

    /// The window samples count in (default 60 s, at least 2 ms).
    pub fn window(mut self, w: Duration) -> Self {
        self.window = w;
        self
    }

    /// The most keys (default 256; at least 1).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Fewer TTFT samples than this and quantile reads say `None` (default 20).
    pub fn min_samples(mut self, n: u64) -> Self {
        self.min_samples = n;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: a window under 2 ms, or a quantile or sample count out of range.
    pub fn build(self) -> Result<LatencyStore, ConfigError> {
        if self.window < Duration::from_millis(2) {
            return Err(ConfigError::new("latency window must be at least 2 ms"));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new(
                "latency store needs room for at least one key",
            ));
        }
        if self.prior_weight == 0 || self.prior_weight > 1000 {
            return Err(ConfigError::new(
                "latency prior weight must be 1..=1000 calls",
            ));
        }
        let half = self.window / 2;
        Ok(LatencyStore {
            inner: Arc::new(Inner {
                half,
                prior_weight: f64::from(self.prior_weight),
                max_keys: self.max_keys,
                min_samples: self.min_samples,
                refresh: self.refresh.min(half),
                entries: RwLock::new(HashMap::default()),
                calibration: calibration::Calibration::new(),
            }),
        })
    }
}

impl LatencyStore {
    /// A store with the defaults (60 s window, 256 keys, 20 samples minimum).
    pub fn new() -> LatencyStore {
        LatencyStore::default()
    }

    /// A builder.
    pub fn builder() -> LatencyStoreBuilder {
        LatencyStoreBuilder {
            window: Duration::from_secs(60),
            max_keys: 256,
            min_samples: 20,
            prior_weight: 5,
            refresh: Duration::from_millis(250),
        }
    }

    /// How many keys (models and (model, provider) pairs) it holds.
    pub fn keys(&self) -> usize {
        count_keys(&read(&self.inner.entries))
    }

    fn lookup(
        map: &HashMap<Arc<str>, ModelEntries>,
        model: &str,
        provider: Option<&str>,
    ) -> Option<Arc<Entry>> {
        let m = map.get(model)?;
        match provider {
            None => Some(m.all.clone()),
            Some(p) => m.providers.get(p).cloned(),
        }
    }

    fn entry(&self, model: &str, provider: Option<&str>, create: bool) -> Option<Arc<Entry>> {
        {
            let map = read(&self.inner.entries);
            if let Some(e) = Self::lookup(&map, model, provider) {
                return Some(e);
            }
        }
        if !create {
            return None;
        }
        self.create(model, provider)
    }

    /// Makes room for (and creates) the keys of `(model, provider)`.
    fn create(&self, model: &str, provider: Option<&str>) -> Option<Arc<Entry>> {
        let mut map = write(&self.inner.entries);
        if let Some(e) = Self::lookup(&map, model, provider) {
            return Some(e);
        }
        let now = Instant::now();
        let new_keys = if map.contains_key(model) {
            1
        } else {
            1 + usize::from(provider.is_some())
        };
        // Room is kept for the `_OTHER` key itself.
        let room = self.inner.max_keys - usize::from(!map.contains_key(OTHER));
        if count_keys(&map) + new_keys > room {
            self.evict_idle(&mut map, now);
        }
        let full = count_keys(&map) + new_keys > room;
        let (model, provider) = if full {
            (OTHER, None)
        } else {
            (model, provider)
        };
        let m = map.entry(Arc::from(model)).or_insert_with(|| ModelEntries {
            all: Arc::new(Entry::new(now)),
            providers: HashMap::default(),
        });
        Some(match provider {
            None => m.all.clone(),
            Some(p) => m
                .providers
                .entry(Arc::from(p))
                .or_insert_with(|| Arc::new(Entry::new(now)))
                .clone(),
        })
    }

    /// Drops keys whose both halves are empty and were not touched for a whole window.
    fn evict_idle(&self, map: &mut HashMap<Arc<str>, ModelEntries>, now: Instant) {
        let window = self.inner.half * 2;
        let idle = |e: &Arc<Entry>| {
            Arc::strong_count(e) == 1
                && e.windows.try_lock().is_ok_and(|w| {
                    now.saturating_duration_since(w.rotated_at) >= window
                        || (w.current.is_empty() && w.previous.is_empty())
                })
        };
        map.retain(|m, me| {
            if &**m == OTHER {
                return true;
            }
            me.providers.retain(|_, e| !idle(e));
            !(me.providers.is_empty() && idle(&me.all))
        });
    }

    /// Makes room for `models` now, so they are measured from their first call, failures
    /// included (otherwise a model gets keys at its first success). The router admits its
    /// tiers' models; a gateway can admit its catalog.
    pub fn admit<'a>(&self, models: impl IntoIterator<Item = &'a str>) {
        for m in models {
            let _ = self.entry(m, None, true);
        }
    }

    /// Records one call for `(model, provider)` and for the model as a whole: its TTFT (if
    /// it committed), its output tokens per second (if known), and its outcome. A model not
    /// yet admitted gets keys only with an [`Outcome::Ok`] or [`Outcome::Cancelled`] (a
    /// stream that committed).
    pub fn record(
        &self,
        (model, provider): (&str, Option<&str>),
        ttft: Option<Duration>,
        tokens_per_sec: Option<f64>,
        outcome: Outcome,
    ) {
        let now = Instant::now();
        let keys: [Option<&str>; 2] = [provider, None];
        let n = if provider.is_some() { 2 } else { 1 };
        // Unknown models are admitted by a success (a stream that committed, read to its end
        // or not), never by a failure.
        let known = matches!(outcome, Outcome::Ok | Outcome::Cancelled)
            || self.entry(model, None, false).is_some();
        for p in &keys[2 - n..] {
            let Some(entry) = self.entry(model, *p, known) else {
                continue;
            };
            let mut w = lock(&entry.windows);
            self.rotate(&mut w, now);
            // A censored sample is a lower bound, not a TTFT: counted apart, kept out of
            // the quantiles.
            if let Some(t) = ttft {
                let v = ((t.as_secs_f64() * 1e6 / TTFT_UNIT_US) as u64).clamp(1, TTFT_MAX);
                if outcome == Outcome::Censored {
                    w.current.cens.saturating_record(v);
                } else {
                    w.current.ttft.saturating_record(v);
                }
            }
            if let Some(tps) = tokens_per_sec.filter(|x| x.is_finite() && *x > 0.0) {
                w.current
                    .tps
                    .saturating_record(((tps * 100.0) as u64).clamp(1, TPS_MAX));
            }
            match outcome {
                Outcome::Ok => w.current.ok += 1,
                Outcome::Error => w.current.errors += 1,
                Outcome::Timeout => {
                    w.current.errors += 1;
                    w.current.timeouts += 1;
                }
                Outcome::Censored => w.current.censored += 1,
                Outcome::Cancelled | Outcome::NotCounted => {}
            }
        }
    }

    /// Records the longest gap between two output chunks of one stream that ended cleanly,
    /// for `(model, provider)` and the model (keys are not created here).
    pub fn record_max_gap(&self, (model, provider): (&str, Option<&str>), gap: Duration) {
        let now = Instant::now();
        let v = ((gap.as_secs_f64() * 1e6 / TTFT_UNIT_US) as u64).clamp(1, TTFT_MAX);
        let keys: [Option<&str>; 2] = [provider, None];
        let n = if provider.is_some() { 2 } else { 1 };
        for p in &keys[2 - n..] {
            let Some(entry) = self.entry(model, *p, false) else {
                continue;
            };
            let mut w = lock(&entry.windows);
            self.rotate(&mut w, now);
            w.current.gap.saturating_record(v);
        }
    }

    /// The `q` quantile of the longest gap per stream of `(model, provider)` (or of the
    /// model with `None`), when at least `min_samples` streams were seen in the window.
    ///
    /// The p99 (what an adaptive idle limit reads on every call) comes from the cached
    /// snapshot [`stats`](LatencyStore::stats) keeps, at most [`refresh`](LatencyStore::refresh)
    /// old; any other quantile is computed from the window's sketches now.
    pub fn max_gap_quantile(
        &self,
        model: &str,
        provider: Option<&str>,
        q: f64,
    ) -> Option<Duration> {
        if q == 0.99 {
            let s = self.stats(model, provider)?;
            return (s.gap_samples >= self.inner.min_samples.max(1)).then_some(s.max_gap_p99);
        }
        let entry = self.entry(model, provider, false)?;
        let mut w = lock(&entry.windows);
        self.rotate(&mut w, Instant::now());
        let mut gap = w.previous.gap.clone();
        let _ = gap.add(&w.current.gap);
        (gap.len() >= self.inner.min_samples.max(1)).then(|| {
            Duration::from_secs_f64(
                gap.value_at_quantile(q.clamp(0.0, 1.0)) as f64 * TTFT_UNIT_US / 1e6,
            )
        })
    }

    fn rotate(&self, w: &mut Windows, now: Instant) {
        let half = self.inner.half;
        let mut turns = 0;
        while now.saturating_duration_since(w.rotated_at) >= half {
            std::mem::swap(&mut w.previous, &mut w.current);
            w.current.reset();
            w.rotated_at += half;
            turns += 1;
            if turns == 2 {
                // Idle for a whole window or more: both halves are empty now.
                w.rotated_at = now;
                break;
            }
        }
    }

    /// The stats of `(model, provider)`, or of the model as a whole with `provider: None`;
    /// `None` when the store never saw it.
    pub fn stats(&self, model: &str, provider: Option<&str>) -> Option<Stats> {
        let entry = self.entry(model, provider, false)?;
        let now = Instant::now();
        {
            let c = read(&entry.cache);
            if now.saturating_duration_since(c.0) < self.ttl_of(&c.1)
                && (c.1.calls + c.1.ttft_samples + c.1.censored > 0 || c.1.prior_weight > 0.0)
            {
                return Some(c.1);
            }
        }
        let mut w = lock(&entry.windows);
        self.rotate(&mut w, now);
        if let Some(p) = provider {
            self.calibrate(model, p, &w);
        }
        let stats = self.compute(&w);
        *write(&entry.cache) = (now, stats);
        Some(stats)
    }

    /// How long a snapshot is reused: [`refresh`](Self::refresh), or a tenth of it while it
    /// rests on fewer than `min_samples` samples (young beliefs change with every sample,
    /// and a cold start decides on them).
    fn ttl_of(&self, s: &Stats) -> Duration {
        if s.ttft_samples < self.inner.min_samples {
            self.inner.refresh / 10
        } else {
            self.inner.refresh
        }
    }

    /// The stats of `w` with its prior as calibrated (unit and trust).
    fn compute(&self, w: &Windows) -> Stats {
        let c = &self.inner.calibration;
        let prior = w.prior.map(|p| p.scaled(c.scale()));
        // Its own test too: a prior that this pair's first samples already contradict
        // (their median, given-up attempts counted at the time they ran, off by ×2 or more)
        // loses its say here at once, before enough pairs are measured to calibrate.
        let own = prior.map_or(1.0, |p| {
            let (median, samples) = median_with_given_up(w);
            if samples < FIRST_TEST {
                return 1.0;
            }
            let err = (median.as_secs_f64().max(1e-6) / p.ttft_p50.as_secs_f64().max(1e-6)).ln();
            calibration::trust_of(err * err)
        });
        compute_with(w, prior, self.inner.prior_weight * c.trust() * own)
    }

    /// Tells the calibration how far the prior of `(model, provider)` is from what was
    /// measured, once there are a few samples (3, or `min_samples` when fewer): a median of
    /// three, given-up attempts counted, already tells ×4 from ×1.
    fn calibrate(&self, model: &str, provider: &str, w: &Windows) {
        let error = w.prior.and_then(|prior| {
            let (median, samples) = median_with_given_up(w);
            (samples >= self.inner.min_samples.clamp(1, FIRST_TEST)).then(|| {
                (median.as_secs_f64().max(1e-6) / prior.ttft_p50.as_secs_f64().max(1e-6)).ln()
            })
        });
        let key = format!("{model}\u{0}{provider}");
        self.inner.calibration.observe(&key, error);
    }

    /// How the published priors are read now, from how far they were from what was
    /// measured (see [`Prior`]): the factor their times are multiplied by (1, or 1/1000
    /// when they were milliseconds read as seconds) and the share of their weight they
    /// keep (1 with nothing measured; about 0.1 when off by ×4).
    pub fn prior_calibration(&self) -> (f64, f64) {
        let c = &self.inner.calibration;
        (c.scale(), c.trust())
    }

    /// The TTFT quantile `q` of `(model, provider)` (or of the model with `None`), when at
    /// least `min_samples` were seen in the window or a [`Prior`] is blended in.
    pub fn ttft_quantile(&self, model: &str, provider: Option<&str>, q: f64) -> Option<Duration> {
        let s = self.stats(model, provider)?;
        s.is_known(self.inner.min_samples)
            .then(|| s.ttft_quantile(q))
    }

    /// Sets (or with `None` clears) the published first guess for `(model, provider)`,
    /// making room for its keys: the store then knows the provider before any call went
    /// there. Local samples replace it as they come (see [`Prior`]).
    pub fn set_prior(&self, model: &str, provider: &str, prior: Option<Prior>) {
        let Some(entry) = self.entry(model, Some(provider), true) else {
            return;
        };
        let now = Instant::now();
        let mut w = lock(&entry.windows);
        w.prior = prior;
        self.rotate(&mut w, now);
        self.calibrate(model, provider, &w);
        let stats = self.compute(&w);
        *write(&entry.cache) = (now, stats);
    }

    /// The stats of `(model, provider)` from local measurements alone (no prior blended
    /// in), computed now; `None` when the store never saw it.
    pub fn measured(&self, model: &str, provider: Option<&str>) -> Option<Stats> {
        let entry = self.entry(model, provider, false)?;
        let mut w = lock(&entry.windows);
        self.rotate(&mut w, Instant::now());
        Some(compute_with(&w, None, self.inner.prior_weight))
    }

    /// The published first guess for `(model, provider)`, if one was set.
    pub fn prior(&self, model: &str, provider: &str) -> Option<Prior> {
        let entry = self.entry(model, Some(provider), false)?;
        let w = lock(&entry.windows);
        w.prior
    }

    /// Every model the store holds keys for, by name.
    pub fn models(&self) -> Vec<String> {
        let mut m: Vec<String> = read(&self.inner.entries)
            .keys()
            .map(|k| k.to_string())
            .collect();
        m.sort();
        m
    }

    /// Every provider seen for `model`, with its stats, by name (a stable order: what is
    /// decided from it must not depend on a hash map's).
    pub fn providers(&self, model: &str) -> Vec<(String, Stats)> {
        let mut names: Vec<Arc<str>> = read(&self.inner.entries)
            .get(model)
            .map(|m| m.providers.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .filter_map(|p| Some((p.to_string(), self.stats(model, Some(&p))?)))
            .collect()
    }

    /// The minimum sample count for quantile reads.
    pub fn min_samples(&self) -> u64 {
        self.inner.min_samples
    }

    /// How many calls a [`Prior`] is worth now: the configured weight times the trust the
    /// priors earned ([`prior_calibration`](Self::prior_calibration)).
    pub fn prior_weight(&self) -> f64 {
        self.inner.prior_weight * self.inner.calibration.trust()
    }

    /// How long a computed snapshot is reused.
    pub fn refresh(&self) -> Duration {
        self.inner.refresh
    }
}
