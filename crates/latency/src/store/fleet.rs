//! What other replicas measured: each key's own windows exported as a mergeable
//! [`Summary`], and other replicas' summaries merged in on read.
//!
//! A summary is the key's HDR histograms (2 significant digits: any value read back is within
//! 1 % of one recorded) as (value, count) pairs, and its counters. Histograms merge exactly
//! (counts add per bucket), so a quantile of the fleet's merged summaries has the same 1 %
//! bound as one replica's. A replica's own samples are never merged back into it: a sharer
//! exports [`LatencyStore::export`] (local samples only) and merges everyone else's.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use llm_layers_core::sync::{lock, write};
use tokio::time::Instant;

use super::window::Half;
use super::{LatencyStore, Windows};

/// One key's measurements over its window, in a form that merges exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    ttft: Vec<(u64, u64)>,
    tps: Vec<(u64, u64)>,
    gap: Vec<(u64, u64)>,
    cens: Vec<(u64, u64)>,
    counts: [u64; 4],
}

fn pairs(h: &Histogram<u32>, into: &mut Vec<(u64, u64)>) {
    into.extend(
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), u64::from(v.count_at_value()))),
    );
}

fn record(h: &mut Histogram<u32>, pairs: &[(u64, u64)]) {
    for &(v, c) in pairs {
        h.saturating_record_n(v.clamp(1, h.high()), u32::try_from(c).unwrap_or(u32::MAX));
    }
}

impl Summary {
    fn of(w: &Windows) -> Summary {
        let mut s = Summary::default();
        for half in [&w.previous, &w.current] {
            pairs(&half.ttft, &mut s.ttft);
            pairs(&half.tps, &mut s.tps);
            pairs(&half.gap, &mut s.gap);
            pairs(&half.cens, &mut s.cens);
            for (a, b) in s.counts.iter_mut().zip(half.counts()) {
                *a += b;
            }
        }
        s
    }

    fn add_to(&self, half: &mut Half) {
        record(&mut half.ttft, &self.ttft);
        record(&mut half.tps, &self.tps);
        record(&mut half.gap, &self.gap);
        record(&mut half.cens, &self.cens);
        let [ok, errors, timeouts, censored] = self.counts;
        half.ok += ok;
        half.errors += errors;
        half.timeouts += timeouts;
        half.censored += censored;
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ttft.is_empty() && self.gap.is_empty() && self.counts.iter().all(|c| *c == 0)
    }

    /// TTFT samples in it.
    pub fn ttft_samples(&self) -> u64 {
        self.ttft.iter().map(|(_, c)| c).sum()
    }

    /// A compact text form: `ok errors timeouts censored|ttft|tps|gap|cens`, each histogram
    /// as `value:count` pairs separated by spaces.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64 + 12 * (self.ttft.len() + self.tps.len()));
        let [a, b, c, d] = self.counts;
        let _ = write!(out, "{a} {b} {c} {d}");
        for h in [&self.ttft, &self.tps, &self.gap, &self.cens] {
            out.push('|');
            for (i, (v, n)) in h.iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                let _ = write!(out, "{sep}{v}:{n}");
            }
        }
        out
    }

    /// Reads [`Summary::encode`]'s form; `None` when it is not that.
    pub fn decode(text: &str) -> Option<Summary> {
        let mut parts = text.split('|');
        let mut counts = [0u64; 4];
        let mut head = parts.next()?.split(' ');
        for c in &mut counts {
            *c = head.next()?.parse().ok()?;
        }
        let mut hist = || -> Option<Vec<(u64, u64)>> {
            let p = parts.next()?;
            p.split(' ')
                .filter(|x| !x.is_empty())
                .map(|x| {
                    let (v, n) = x.split_once(':')?;
                    Some((v.parse().ok()?, n.parse().ok()?))
                })
                .collect()
        };
        Some(Summary {
            ttft: hist()?,
            tps: hist()?,
            gap: hist()?,
            cens: hist()?,
            counts,
        })
    }
}

impl LatencyStore {
    /// This replica's own measurements per (model, provider) key (`None`: the model as a
    /// whole) over the window, priors and other replicas' summaries left out; empty keys
    /// are skipped.
    pub fn export(&self) -> Vec<(String, Option<String>, Summary)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for model in self.models() {
            let providers = super::read(&self.inner.entries)
                .get(model.as_str())
                .map(|m| {
                    let mut v: Vec<_> = m
                        .providers
                        .iter()
                        .map(|(p, e)| (Some(p.to_string()), e.clone()))
                        .collect();
                    v.push((None, m.all.clone()));
                    v
                })
                .unwrap_or_default();
            for (provider, entry) in providers {
                let mut w = lock(&entry.windows);
                self.rotate(&mut w, now);
                let s = Summary::of(&w);
                if !s.is_empty() {
                    out.push((model.clone(), provider, s));
                }
            }
        }
        out
    }

    /// Sets what the other replicas measured for `(model, provider)` (their summaries,
    /// merged): read with this replica's own samples until `ttl` passes without a newer
    /// merge. Makes room for the key.
    pub fn merge_fleet(
        &self,
        model: &str,
        provider: Option<&str>,
        summaries: &[Summary],
        ttl: Duration,
    ) {
        let Some(entry) = self.entry(model, provider, true) else {
            return;
        };
        let now = Instant::now();
        let mut fleet = Half::new();
        for s in summaries {
            s.add_to(&mut fleet);
        }
        let mut w = lock(&entry.windows);
        w.fleet = (!fleet.is_empty()).then(|| (Box::new(fleet), now + ttl));
        self.rotate(&mut w, now);
        let stats = self.compute(&w);
        *write(&entry.cache) = (now, stats);
    }
}
