//! Learned provider order: per model, the provider a Thompson draw finds fastest first,
//! the others by measured TTFT.
//!
//! # The estimator
//!
//! Per (model, provider) the latency store keeps HDR sketches over a sliding window (60 s by
//! default: a sample counts for between half and all of it, so a change shows within one
//! window and an old one is forgotten after one). A provider's *belief* is the log of its
//! TTFT quantile (`quantile`, 0.9 by default) from that window, blended with a published
//! [`Prior`](llm_layers_latency::Prior) worth a few calls, and an uncertainty
//! `1.7·σ/√n_eff`, where `σ` is its log-spread (from its p50 and p90) and `n_eff` its samples
//! plus the prior's weight: the standard error of a log-quantile of a lognormal.
//!
//! Per call one draw per provider from that belief (Thompson sampling) picks who goes
//! first: a provider measured clearly slower than the best is almost never drawn, one whose
//! samples left the window (stale) or that has few is drawn in proportion to the chance it
//! is the fastest. Providers within the stickiness margin of the best are equals: calls
//! spread over them. A draw that puts a provider clearly worse than the best first
//! **explores**, and the call carries a [`ProviderPlan`] asking the hedge to race the best
//! one after that one's own p75: exploring costs at most the best provider's typical TTFT.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use llm_layers_core::sync::{read, write};
use llm_layers_core::{ChatRequest, ProviderPlan, default_slug};
use llm_layers_latency::{LatencyStore, PriorFeed, Stats};
use tokio::time::Instant;

use crate::OrderDecision;
use crate::config::LearnedOrderConfig;
use crate::tier::Share;

/// The most models whose belief is cached; past it the cache starts over.
const MAX_MODELS: usize = 1024;
/// The standard error of a lognormal's log-quantile near p90, in units of σ/√n.
const QUANTILE_SE: f64 = 1.7;
/// The z-score of the 90th percentile.
const Z90: f64 = 1.281_551_566;
/// The quantile of the best provider after which an exploring call is raced.
const RACE_QUANTILE: f64 = 0.75;

/// What the router believes about one provider of a model.
#[derive(Debug, Clone)]
pub(crate) struct Arm {
    /// Display name, as the store and streams name it.
    pub(crate) name: Arc<str>,
    /// Routing slug.
    pub(crate) slug: Arc<str>,
    /// ln of the TTFT quantile, in seconds.
    mu: f64,
    /// Uncertainty of `mu`.
    se: f64,
    /// Local samples and prior weight.
    pub(crate) samples: u64,
    pub(crate) prior: f64,
    /// The quantile the order ranks by, and the p75 an exploring call is raced after.
    pub(crate) ttft_q: Duration,
    race_after: Duration,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Learned {
    at: Option<Instant>,
    /// Every usable provider, best first.
    pub(crate) arms: Arc<[Arm]>,
    /// Slugs of `arms`, in order.
    pub(crate) order: Arc<[String]>,
}

#[derive(Debug)]
pub(crate) struct LearnedOrder {
    cfg: LearnedOrderConfig,
    slugs: HashMap<String, String>,
    cache: RwLock<llm_layers_core::hash::HashMap<Arc<str>, Learned>>,
    explore: Share,
    draws: AtomicU64,
    seed: u64,
    priors: Option<PriorFeed>,
}

/// splitmix64: a well-mixed 64-bit value from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The log-spread σ of a lognormal through a key's p50 and p90.
fn spread(s: &Stats) -> f64 {
    (s.ttft_p90.as_secs_f64().max(1e-6) / s.ttft_p50.as_secs_f64().max(1e-6)).ln() / Z90
}

impl LearnedOrder {
    pub(crate) fn new(
        cfg: LearnedOrderConfig,
        slugs: HashMap<String, String>,
        seed: u64,
        priors: Option<PriorFeed>,
    ) -> Self {
        LearnedOrder {
            explore: Share::new(cfg.explore),
            cfg,
            slugs,
            cache: RwLock::new(Default::default()),
            draws: AtomicU64::new(0),
            seed,
            priors,
        }
    }

    /// A standard normal draw (Box–Muller on two counter-hashed uniforms): deterministic
    /// for a seed and a call order, no lock.
    fn normal(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let r = mix(self.seed ^ mix(n));
        let u1 = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = ((mix(r) >> 11) as f64) / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn slug(&self, model: &str, display: &str) -> String {
        if let Some(s) = self.slugs.get(display) {
            return s.clone();
        }
        self.priors
            .as_ref()
            .and_then(|p| p.slug(model, display))
            .unwrap_or_else(|| default_slug(display))
    }

    /// The belief about `model` as of `now`, from the cache or the store.
    pub(crate) fn learned(&self, store: &LatencyStore, model: &str, now: Instant) -> Learned {
        let (cached, previous) = {
            let cache = read(&self.cache);
            match cache.get(model) {
                Some(l)
                    if l.at.is_some_and(|at| {
                        now.saturating_duration_since(at) < store.refresh() && !l.arms.is_empty()
                    }) =>
                {
                    return l.clone();
                }
                Some(l) => (true, l.order.first().cloned()),
                None => (false, None),
            }
        };
        let learned = self.compute(store, model, previous.as_deref(), now);
        if learned.arms.is_empty() {
            // An empty belief is never cached (the first measurement or prior counts on the
            // next call), so a model nothing is known of costs no write lock per call.
            if cached {
                write(&self.cache).remove(model);
            }
            return learned;
        }
        let mut cache = write(&self.cache);
        if cache.len() >= MAX_MODELS && !cache.contains_key(model) {
            cache.clear();
        }
        cache.insert(Arc::from(model), learned.clone());
        learned
    }

    fn arm(
        &self,
        store: &LatencyStore,
        (model, name): (&str, &str),
        s: &Stats,
        pooled: f64,
    ) -> Option<Arm> {
        if s.ttft_samples == 0 && s.prior_weight <= 0.0 {
            return None;
        }
        let q = s.ttft_quantile(self.cfg.quantile);
        // A spread read from a handful of samples is itself unreliable: until there are
        // `min_samples`, the model's (pooled over its providers) if wider.
        let own = spread(s);
        let sigma = if s.ttft_samples >= store.min_samples().max(1) || s.prior_weight > 0.0 {
            own
        } else {
            own.max(pooled)
        }
        .clamp(0.1, 2.0);
        let prior = if s.prior_weight > 0.0 {
            store.prior_weight()
        } else {
            0.0
        };
        let n_eff = (s.ttft_samples as f64 + prior).max(1.0);
        Some(Arm {
            name: Arc::from(name),
            slug: Arc::from(self.slug(model, name)),
            mu: q.as_secs_f64().max(1e-6).ln(),
            se: QUANTILE_SE * sigma / n_eff.sqrt(),
            samples: s.ttft_samples,
            prior,
            ttft_q: q,
            race_after: s.ttft_quantile(RACE_QUANTILE),
        })
    }

    fn compute(
        &self,
        store: &LatencyStore,
        model: &str,
        leader: Option<&str>,
        now: Instant,
    ) -> Learned {
        let min = store.min_samples().max(1);
        let max = self.cfg.max_error_rate;
        // Left out while failing: measured so (enough calls over the bound, or most of a
        // few), or published so (uptime under the bound) until enough calls say otherwise.
        let failing = |p: &str, s: &Stats| {
            let few = s.calls < min;
            let published = store
                .prior(model, p)
                .and_then(|pr| pr.uptime_5m)
                .is_some_and(|u| u < 100.0 * (1.0 - max));
            (!few && s.error_rate > max)
                || (few && s.calls >= 3 && s.error_rate > 0.5)
                || (few && published)
        };
        let pooled = store.stats(model, None).map_or(1.0, |s| spread(&s));
        let mut arms: Vec<Arm> = store
            .providers(model)
            .iter()
            .filter(|(p, s)| !failing(p, s))
            .filter_map(|(p, s)| self.arm(store, (model, p), s, pooled))
            .collect();
        if arms.is_empty() {
            return Learned::default();
        }
        arms.sort_by(|a, b| a.mu.total_cmp(&b.mu).then_with(|| a.slug.cmp(&b.slug)));
        // Stickiness: the leader keeps first place unless beaten by a clear margin.
        if let Some(pos) = leader.and_then(|l| arms.iter().position(|a| &*a.slug == l)) {
            if pos > 0 && arms[0].ttft_q.mul_f64(1.0 + self.cfg.stickiness) >= arms[pos].ttft_q {
                let l = arms.remove(pos);
                arms.insert(0, l);
            }
        }
        Learned {
            at: Some(now),
            order: arms.iter().map(|a| a.slug.to_string()).collect(),
            arms: arms.into(),
        }
    }

    /// The learned order of `model` now (slugs, fastest first); empty when learning is off
    /// or nothing is known yet.
    pub(crate) fn current(&self, store: &LatencyStore, model: &str, now: Instant) -> Learned {
        if !self.cfg.enabled {
            return Learned::default();
        }
        self.learned(store, model, now)
    }

    /// Sets `provider.order` on `req` (unless the caller routes it itself), and a
    /// [`ProviderPlan`] for the hedge; says what it did.
    pub(crate) fn apply(
        &self,
        store: &LatencyStore,
        req: &mut ChatRequest,
        now: Instant,
    ) -> OrderDecision {
        if !self.cfg.enabled {
            return OrderDecision::Unchanged;
        }
        if let Some(p) = &self.priors {
            p.touch(req.model());
        }
        if let Some(p) = &req.body().provider {
            if p.order.as_ref().is_some_and(|o| !o.is_empty()) || p.sort.is_some() {
                return OrderDecision::Caller;
            }
        }
        let learned = self.learned(store, req.model(), now);
        let allows = |slug: &str| req.body().provider.as_ref().is_none_or(|p| p.allows(slug));
        let arms: Vec<&Arm> = learned.arms.iter().filter(|a| allows(&a.slug)).collect();
        let Some(best) = arms.first().copied() else {
            return OrderDecision::Unchanged;
        };
        // The order by belief, best first: built only for a call that explores.
        let exploit = || -> Arc<[String]> { arms.iter().map(|a| a.slug.to_string()).collect() };
        if self.explore.tick().is_some() {
            // Left to the upstream's own routing (a provider nobody published shows up),
            // raced against the best known after its p75.
            req.extensions_mut().insert(
                ProviderPlan::new(None)
                    .hedge_order(exploit())
                    .race_after(best.race_after),
            );
            return OrderDecision::Explore;
        }
        // One draw per provider; the lowest goes first.
        let drawn = arms
            .iter()
            .map(|a| (a.mu + a.se * self.normal(), *a))
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .map_or(best, |(_, a)| a);
        // Equals: well measured, and not told apart from the best by more than the margin
        // and their noise. Anything else the draw put first is explored, and raced.
        let noise = 2.0 * (drawn.se * drawn.se + best.se * best.se).sqrt();
        let equal = drawn.slug == best.slug
            || (drawn.samples >= store.min_samples().max(1)
                && drawn.mu - best.mu <= (1.0 + self.cfg.stickiness).ln() + noise);
        let mut order = Vec::with_capacity(arms.len());
        order.push(drawn.slug.to_string());
        order.extend(
            arms.iter()
                .filter(|a| a.slug != drawn.slug)
                .map(|a| a.slug.to_string()),
        );
        req.body_mut().provider_mut().order = Some(order);
        let plan = ProviderPlan::new(Some(drawn.name.clone()));
        if equal {
            req.extensions_mut().insert(plan);
            OrderDecision::Learned
        } else {
            req.extensions_mut()
                .insert(plan.hedge_order(exploit()).race_after(best.race_after));
            OrderDecision::Explore
        }
    }
}
