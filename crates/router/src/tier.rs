//! A tier at run time: its candidates, SLA and downgrade state.

use llm_layers_core::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_layers_core::ProviderPreferences;

use crate::RouteReason;
use crate::route::Decisions;
use llm_layers_latency::LatencyStore;
use tokio::time::Instant;

/// A share of calls, counted exactly: call `n` explores when `floor((n + 1) * share)`
/// passes `floor(n * share)`, so over any `n` calls at most `ceil(n * share)` explore.
#[derive(Debug)]
pub(crate) struct Share {
    share: f64,
    calls: AtomicU64,
}

impl Share {
    pub(crate) fn new(share: f64) -> Share {
        Share {
            share,
            calls: AtomicU64::new(0),
        }
    }

    /// Counts a call; `Some(k)` when it is the `k`-th (from 0) to fall in the share.
    pub(crate) fn tick(&self) -> Option<u64> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) as f64;
        let (before, after) = ((n * self.share).floor(), ((n + 1.0) * self.share).floor());
        (after > before).then_some(before as u64)
    }
}

#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) model: String,
    pub(crate) provider: Option<ProviderPreferences>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sla {
    pub(crate) quantile: f64,
    pub(crate) ttft: Duration,
    pub(crate) min_success: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Skipped until then; after it, on probation until it measures well again.
    skipped_until: Option<Instant>,
}

/// What the store says of one candidate against the SLA.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    /// Too few samples to tell.
    Unknown,
    /// Breaks the SLA (quantile over the bound, or too many failures).
    Breaks(Option<Duration>),
    /// Meets it, at this quantile.
    Meets(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Good,
    Unknown,
    Probation,
    Skipped,
}

#[derive(Debug)]
pub(crate) struct Tier {
    pub(crate) name: Arc<str>,
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) sla: Sla,
    pub(crate) fallback_models: bool,
    /// For each chosen index, the other candidates in order.
    pub(crate) others: Vec<Arc<[String]>>,
    state: Mutex<Vec<State>>,
    explore: Share,
    explore_rr: AtomicU64,
    /// The decision counters of calls to this tier.
    pub(crate) decisions: Decisions,
    /// What its provider orders optimise.
    pub(crate) objective: crate::Objective,
}

/// The tier-wide knobs a choice needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs {
    pub(crate) cooldown: Duration,
    pub(crate) recover_ratio: f64,
}

impl Tier {
    pub(crate) fn new(
        name: &str,
        candidates: Vec<Candidate>,
        sla: Sla,
        fallback_models: bool,
        (explore, objective): (f64, crate::Objective),
    ) -> Tier {
        let others = (0..candidates.len())
            .map(|i| {
                candidates
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, c)| c.model.clone())
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect();
        Tier {
            name: Arc::from(name),
            state: Mutex::new(vec![State::default(); candidates.len()]),
            candidates,
            sla,
            fallback_models,
            others,
            explore: Share::new(explore),
            explore_rr: AtomicU64::new(0),
            decisions: Decisions::default(),
            objective,
        }
    }

    fn measure(&self, store: &LatencyStore, model: &str) -> Measure {
        let Some(s) = store.stats(model, None) else {
            return Measure::Unknown;
        };
        let min = store.min_samples().max(1);
        if s.calls.max(s.ttft_samples) < min {
            return Measure::Unknown;
        }
        let q = (s.ttft_samples >= min).then(|| s.ttft_quantile(self.sla.quantile));
        let success = if s.calls == 0 {
            1.0
        } else {
            1.0 - s.error_rate
        };
        match q {
            _ if success < self.sla.min_success => Measure::Breaks(q),
            Some(q) if q > self.sla.ttft => Measure::Breaks(Some(q)),
            Some(q) => Measure::Meets(q),
            None => Measure::Unknown,
        }
    }

    /// Chooses a candidate: its index and why. Takes one short lock.
    pub(crate) fn choose(
        &self,
        store: &LatencyStore,
        knobs: Knobs,
        now: Instant,
    ) -> (usize, RouteReason) {
        let measures: Vec<Measure> = self
            .candidates
            .iter()
            .map(|c| self.measure(store, &c.model))
            .collect();
        let explore_turn = self.explore.tick().is_some();
        let mut standing = Vec::with_capacity(measures.len());
        {
            let mut state = lock(&self.state);
            for (i, m) in measures.iter().enumerate() {
                let st = &mut state[i];
                let s = match (st.skipped_until, *m) {
                    (Some(until), _) if now < until => Standing::Skipped,
                    (_, Measure::Breaks(_)) => {
                        if st.skipped_until.is_none() {
                            metrics::counter!(
                                "llm_router_downgrades_total",
                                "tier" => self.name.to_string(),
                                "model" => self.candidates[i].model.clone(),
                            )
                            .increment(1);
                        }
                        st.skipped_until = Some(now + knobs.cooldown);
                        Standing::Skipped
                    }
                    (Some(_), Measure::Meets(q))
                        if q.as_secs_f64() <= self.sla.ttft.as_secs_f64() * knobs.recover_ratio =>
                    {
                        st.skipped_until = None;
                        Standing::Good
                    }
                    (Some(_), _) => Standing::Probation,
                    (None, Measure::Meets(_)) => Standing::Good,
                    (None, Measure::Unknown) => Standing::Unknown,
                };
                standing.push(s);
            }
        }
        let primary = standing.iter().position(|s| *s == Standing::Good);
        if explore_turn {
            let explorable: Vec<usize> = (0..standing.len())
                .filter(|&i| {
                    Some(i) != primary
                        && matches!(standing[i], Standing::Unknown | Standing::Probation)
                })
                .collect();
            if !explorable.is_empty() {
                let k = self.explore_rr.fetch_add(1, Ordering::Relaxed) as usize;
                return (explorable[k % explorable.len()], RouteReason::Explore);
            }
        }
        if let Some(i) = primary {
            return (i, RouteReason::Sla);
        }
        // Nothing meets the SLA: a candidate never measured (and not in its cool-down) may,
        // so it is tried before settling for the best that breaks it.
        if let Some(i) = (0..standing.len())
            .find(|&i| standing[i] != Standing::Skipped && measures[i] == Measure::Unknown)
        {
            return (i, RouteReason::Unmeasured);
        }
        let best = measures
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match m {
                Measure::Meets(q) | Measure::Breaks(Some(q)) => Some((i, *q)),
                _ => None,
            })
            .min_by_key(|&(_, q)| q);
        if let Some((i, _)) = best {
            return (i, RouteReason::BestMeasured);
        }
        (0, RouteReason::Unmeasured)
    }
}

#[cfg(test)]
mod tests {
    use super::Share;

    #[test]
    fn share_is_exact() {
        for share in [0.0, 0.01, 0.05, 0.3, 0.5] {
            let s = Share::new(share);
            let hits = (0..10_000).filter(|_| s.tick().is_some()).count();
            assert!(hits as f64 <= (10_000.0 * share).ceil(), "{share}: {hits}");
            assert!(hits as f64 >= (10_000.0 * share).floor(), "{share}: {hits}");
        }
    }
}
