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

use llm_layers_core::stats::normal_quantile;
use llm_layers_core::sync::{read, write};
use llm_layers_core::{ChatRequest, ProviderPlan, default_slug};
use llm_layers_latency::{LatencyStore, PriorFeed, Stats};
use tokio::time::Instant;

use crate::config::LearnedOrderConfig;
use crate::tier::{Share, Sla};
use crate::{Objective, OrderDecision};
use llm_layers_core::price::Price;

mod priced;
mod trials;
pub(crate) use trials::Trial;
use trials::{MAX_TRIALS, OVERDUE, TrialState, Trials};

/// The most models whose belief is cached; past it the cache starts over.
const MAX_MODELS: usize = 1024;
/// The standard error of a lognormal's log-quantile near p90, in units of σ/√n.
const QUANTILE_SE: f64 = 1.7;
/// The z-score of the 90th percentile.
const Z90: f64 = 1.281_551_566;
/// Samples that test a provider's rank when they agree with its prior.
const FEW_SAMPLES: u64 = 3;

/// Whether the median of our own samples of `(model, provider)` is at most ×2 its
/// published prior's (as calibrated), with few of its attempts given up (a provider whose
/// slow attempts lose their races leaves only its fast ones as samples: their median says
/// little then).
fn agrees_with_prior(store: &LatencyStore, model: &str, provider: &str) -> bool {
    let (Some(m), Some(p)) = (
        store.measured(model, Some(provider)),
        store.prior(model, provider),
    ) else {
        return false;
    };
    if m.censored * 4 > m.ttft_samples {
        return false;
    }
    let published = p.ttft_p50.as_secs_f64() * store.prior_calibration().0;
    // Faster than published is no risk to trust; slower than ×2 is a failed test.
    m.ttft_p50.as_secs_f64() <= 2.0 * published
}

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
    /// Whether our own samples have tested its rank: `min_samples` of them, or a few
    /// ([`FEW_SAMPLES`]) that bear its published prior out (median at most ×2 of it).
    tested: bool,
    /// When a first attempt to it is overdue: the p90 it is believed to have on the word
    /// of its prior (the hypothesis under test), else its quantile.
    overdue_after: Duration,
    /// What its live evidence is weighed with: its spread, committed samples, given-up
    /// attempts and how long those ran (median).
    sigma: f64,
    censored: u64,
    censored_at: Duration,
    /// The quantile the order ranks by, and the p75 an exploring call is raced after.
    pub(crate) ttft_q: Duration,
    race_after: Duration,
    /// What it publishes as its price (none: unpriced, ranked after every priced one).
    pub(crate) price: Option<Price>,
    /// Its share of failed calls in the window.
    error_rate: f64,
}

impl Arm {
    /// Fewer attempts of ours (committed or given up) than `min`: its belief is young, and
    /// answers to in-flight evidence. Given-up attempts count: a provider whose attempts
    /// keep losing races has few samples, but was tried.
    fn young(&self, min: u64) -> bool {
        self.samples + self.censored < min
    }
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
    trials: Trials,
}

/// splitmix64: a well-mixed 64-bit value from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The TTFT quantile `q` of a provider, not below what its given-up attempts imply: when a
/// share `c` of the attempts tried was censored at about time `t` (given up there, or still
/// silent at `t` now), its TTFT exceeds `t` with probability about `c`, so on a lognormal of
/// spread `sigma` its quantile `q` is at least `t · exp(sigma · (z(q) − z(1 − c)))`. The
/// committed samples alone are the fast ones: a provider hedged early, or whose slow first
/// attempts are still running, would look as fast as the one that wins.
fn implied_quantile(
    measured: Duration,
    (committed, censored): (u64, u64),
    censored_at: Duration,
    q: f64,
    sigma: f64,
) -> Duration {
    let tried = committed + censored;
    if censored == 0 || tried < FEW_SAMPLES {
        return measured;
    }
    let c = (censored as f64 / tried as f64).clamp(0.01, 0.99);
    let implied =
        censored_at.as_secs_f64() * (sigma * (normal_quantile(q) - normal_quantile(1.0 - c))).exp();
    measured.max(Duration::from_secs_f64(implied.max(0.0)))
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
            trials: Trials::default(),
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
                        // A belief with an untested provider in it is young: looked at again
                        // ten times as often (a cold start decides on it).
                        let ttl = if l.arms.iter().all(|a| a.tested) {
                            store.refresh()
                        } else {
                            store.refresh() / 10
                        };
                        now.saturating_duration_since(at) < ttl && !l.arms.is_empty()
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
        let sigma_own = spread(s).clamp(0.1, 2.0);
        // A young arm's upper quantile read from a handful of samples is mostly the one
        // slowest sample; its median is steadier. With a prior, a young arm is ranked by its
        // median and the prior's shape (the prior's quantile over its median).
        let young_prior = (s.ttft_samples > 0 && s.ttft_samples < store.min_samples().max(1))
            .then(|| store.prior(model, name))
            .flatten();
        let read = match young_prior {
            Some(p) => {
                let shape =
                    (p.ttft_p90.as_secs_f64().max(1e-6) / p.ttft_p50.as_secs_f64().max(1e-6)).ln()
                        / Z90;
                s.ttft_p50
                    .mul_f64((shape.clamp(0.1, 2.0) * normal_quantile(self.cfg.quantile)).exp())
            }
            None => s.ttft_quantile(self.cfg.quantile),
        };
        let q = implied_quantile(
            read,
            (s.ttft_samples, s.censored),
            s.censored_p50,
            self.cfg.quantile,
            sigma_own,
        );
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
            tested: s.ttft_samples >= store.min_samples().max(1)
                || (s.ttft_samples >= FEW_SAMPLES && agrees_with_prior(store, model, name)),
            overdue_after: store
                .prior(model, name)
                .map_or(q, |p| p.ttft_p90.mul_f64(store.prior_calibration().0)),
            sigma: sigma_own,
            censored: s.censored,
            censored_at: s.censored_p50,
            ttft_q: q,
            race_after: s.ttft_quantile(RACE_QUANTILE),
            price: self.priors.as_ref().and_then(|p| p.price(model, name)),
            error_rate: if s.calls == 0 { 0.0 } else { s.error_rate },
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
    /// [`ProviderPlan`] for the hedge; says what it did, and hands back the [`Trial`] slot
    /// the call holds when it goes first to an untested provider.
    pub(crate) fn apply(
        &self,
        store: &LatencyStore,
        req: &mut ChatRequest,
        now: Instant,
        (objective, sla): (Objective, Option<Sla>),
    ) -> (OrderDecision, Option<Trial>) {
        if !self.cfg.enabled {
            return (OrderDecision::Unchanged, None);
        }
        if let Some(p) = &self.priors {
            p.touch(req.model());
        }
        if let Some(p) = &req.body().provider {
            if p.order.as_ref().is_some_and(|o| !o.is_empty()) || p.sort.is_some() {
                return (OrderDecision::Caller, None);
            }
        }
        let learned = self.learned(store, req.model(), now);
        let allows = |slug: &str| req.body().provider.as_ref().is_none_or(|p| p.allows(slug));
        let arms: Vec<&Arm> = learned.arms.iter().filter(|a| allows(&a.slug)).collect();
        let Some(best) = arms.first().copied() else {
            return (OrderDecision::Unchanged, None);
        };
        if objective != Objective::Fastest && arms.iter().any(|a| a.price.is_some()) {
            self.apply_priced(req, &arms, objective, sla);
            return (OrderDecision::Priced, None);
        }
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
            return (OrderDecision::Explore, None);
        }
        // One draw per provider; the lowest goes first. An untested provider with its
        // trials all in flight sits this call out (unless every one does).
        let model = req.model().to_owned();
        // Young arms (fewer samples of ours than the store's minimum) answer to in-flight
        // evidence: their first attempts still silent count as given up at the time they
        // have run (their first samples are the fast ones: the slow ones are still
        // running), and with OVERDUE of them silent past the p90 the arm's hypothesis
        // promised, it sits calls out. Untested arms take at most MAX_TRIALS at once,
        // unless every one is at that cap. Last resort, the one least discredited.
        let min = store.min_samples().max(1);
        let live: Vec<(&Arm, f64, TrialState)> = arms
            .iter()
            .map(|a| {
                if !a.young(min) {
                    return (*a, a.mu, TrialState::default());
                }
                let t = self.trials.state(&model, &a.slug, a.overdue_after, now);
                let censored = a.censored + t.in_flight as u64;
                let at = if censored == 0 {
                    Duration::ZERO
                } else {
                    (a.censored_at * a.censored as u32 + t.ran * t.in_flight as u32)
                        / censored as u32
                };
                let q = implied_quantile(
                    a.ttft_q,
                    (a.samples, censored),
                    at,
                    self.cfg.quantile,
                    a.sigma,
                );
                (*a, a.mu.max(q.as_secs_f64().max(1e-6).ln()), t)
            })
            .collect();
        // First attempts go to the best, its equals (measured within the stickiness margin)
        // and young arms; a measured arm clearly slower than the best is explored through
        // hedges, which fire anyway (below), not through first attempts that would need a
        // race of their own.
        let margin = (1.0 + self.cfg.stickiness).ln();
        let equal = |a: &Arm| a.slug == best.slug || (a.tested && a.mu - best.mu <= margin);
        let open: Vec<(&Arm, f64)> = live
            .iter()
            .filter(|(a, _, t)| {
                if !a.young(min) {
                    equal(a)
                } else {
                    t.overdue < OVERDUE && (a.tested || t.in_flight < MAX_TRIALS)
                }
            })
            .map(|(a, mu, _)| (*a, *mu))
            .collect();
        let drawn = self
            .draw_from(&open)
            // Every arm young and at its cap or discredited: the least discredited, then
            // the least loaded (the calls spread rather than pile on a hypothesis).
            .or_else(|| live.iter().min_by_key(|(_, _, t)| *t).map(|(a, _, _)| *a))
            .unwrap_or(best);
        let mut order = Vec::with_capacity(arms.len());
        order.push(drawn.slug.to_string());
        order.extend(
            arms.iter()
                .filter(|a| a.slug != drawn.slug)
                .map(|a| a.slug.to_string()),
        );
        req.body_mut().provider_mut().order = Some(order);
        let mut plan = ProviderPlan::new(Some(drawn.name.clone()));
        // Every first attempt to a young arm is tracked (its in-flight evidence).
        let trial = drawn
            .young(min)
            .then(|| self.trials.start(&model, &drawn.slug, now))
            .flatten();
        // The hedge, when it fires, goes where another draw says: a free sample of a
        // provider that could be fastest, or a fresh draw from the same one when that is
        // the draw. A first attempt on a hypothesis (untested) gets a second opinion: the
        // draw is among the others.
        let untested = !drawn.tested;
        let except = untested.then_some(&*drawn.slug);
        if let Some(second) = self.draw(&arms, except).filter(|s| s.slug != drawn.slug) {
            let mut hedge: Vec<String> = Vec::with_capacity(arms.len());
            hedge.push(second.slug.to_string());
            hedge.extend(
                arms.iter()
                    .filter(|a| a.slug != second.slug)
                    .map(|a| a.slug.to_string()),
            );
            plan = plan.hedge_order(hedge.into());
        }
        // Races: an untested first attempt silent past the p90 its hypothesis promised
        // has failed the test, so the second opinion races then, not at a quantile its own
        // first samples may have pushed out; a first attempt that is not the best's equal
        // races the best no later than that one's p75.
        let mut race = untested.then_some(drawn.overdue_after);
        if !equal(drawn) && best.tested {
            race = Some(race.map_or(best.race_after, |r| r.min(best.race_after)));
            if !untested {
                plan.hedge_order = Some(exploit());
            }
        }
        if let Some(r) = race {
            plan = plan.race_after(r);
        }
        req.extensions_mut().insert(plan);
        let decision = if equal(drawn) {
            OrderDecision::Learned
        } else {
            OrderDecision::Explore
        };
        (decision, trial)
    }

    /// One Thompson draw over `arms` (leaving out `except`): the one whose draw is lowest.
    fn draw<'a>(&self, arms: &[&'a Arm], except: Option<&str>) -> Option<&'a Arm> {
        let beliefs: Vec<(&Arm, f64)> = arms
            .iter()
            .filter(|a| except.is_none_or(|e| &*a.slug != e))
            .map(|a| (*a, a.mu))
            .collect();
        self.draw_from(&beliefs)
    }

    /// One Thompson draw over arms with the given means.
    fn draw_from<'a>(&self, arms: &[(&'a Arm, f64)]) -> Option<&'a Arm> {
        arms.iter()
            .map(|(a, mu)| (mu + a.se * self.normal(), *a))
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .map(|(_, a)| a)
    }
}
