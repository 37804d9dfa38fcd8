//! Learned provider order: per model, fastest measured provider first.

use llm_layers_core::sync::{read, write};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use llm_layers_core::{ChatRequest, default_slug};

use crate::OrderDecision;
use llm_layers_latency::LatencyStore;
use tokio::time::Instant;

use crate::config::LearnedOrderConfig;
use crate::tier::Share;

/// How long a computed order is reused before the store is read again.
const REFRESH: Duration = Duration::from_millis(250);
/// The most models whose order is cached; past it the cache starts over.
const MAX_MODELS: usize = 1024;

#[derive(Debug, Clone, Default)]
struct Learned {
    at: Option<Instant>,
    /// Slugs, fastest first, of the providers with enough samples and few failures.
    order: Arc<[String]>,
    /// The provider seen with the fewest TTFT samples, for exploration.
    least_sampled: Option<Arc<str>>,
}

#[derive(Debug)]
pub(crate) struct LearnedOrder {
    cfg: LearnedOrderConfig,
    slugs: HashMap<String, String>,
    cache: RwLock<HashMap<Arc<str>, Learned>>,
    explore: Share,
    explores: AtomicU64,
}

impl LearnedOrder {
    pub(crate) fn new(cfg: LearnedOrderConfig, slugs: HashMap<String, String>) -> Self {
        LearnedOrder {
            explore: Share::new(cfg.explore),
            cfg,
            slugs,
            cache: RwLock::new(HashMap::new()),
            explores: AtomicU64::new(0),
        }
    }

    fn slug(&self, display: &str) -> String {
        self.slugs
            .get(display)
            .cloned()
            .unwrap_or_else(|| default_slug(display))
    }

    /// The order for `model` as of `now`, from the cache or the store.
    fn learned(&self, store: &LatencyStore, model: &str, now: Instant) -> Learned {
        let previous = {
            let cache = read(&self.cache);
            match cache.get(model) {
                Some(l)
                    if l.at
                        .is_some_and(|at| now.saturating_duration_since(at) < REFRESH) =>
                {
                    return l.clone();
                }
                Some(l) => l.order.first().cloned(),
                None => None,
            }
        };
        let learned = self.compute(store, model, previous.as_deref(), now);
        let mut cache = write(&self.cache);
        if cache.len() >= MAX_MODELS && !cache.contains_key(model) {
            cache.clear();
        }
        cache.insert(Arc::from(model), learned.clone());
        learned
    }

    fn compute(
        &self,
        store: &LatencyStore,
        model: &str,
        leader: Option<&str>,
        now: Instant,
    ) -> Learned {
        let min = store.min_samples().max(1);
        let seen = store.providers(model);
        let mut ranked: Vec<(String, Duration)> = seen
            .iter()
            .filter(|(_, s)| s.ttft_samples >= min && s.error_rate <= self.cfg.max_error_rate)
            .map(|(p, s)| (self.slug(p), s.ttft_quantile(self.cfg.quantile)))
            .collect();
        ranked.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        // Exploration re-measures providers that have too few samples or are close to the
        // best; one measured clearly slow (over twice the best) or failing waits until its
        // samples leave the window (OpenRouter's own routing still reaches it meanwhile).
        let best = ranked.first().map(|r| r.1);
        let least_sampled = seen
            .iter()
            .filter(|(_, s)| {
                let measured = s.ttft_samples >= min;
                let slow =
                    measured && best.is_some_and(|b| s.ttft_quantile(self.cfg.quantile) > b * 2);
                let failing = s.calls >= min && s.error_rate > self.cfg.max_error_rate;
                !slow && !failing
            })
            .min_by_key(|(_, s)| s.ttft_samples)
            .map(|(p, _)| Arc::from(self.slug(p)));
        // Stickiness: the leader keeps first place unless beaten by a clear margin.
        if let Some(pos) = leader.and_then(|l| ranked.iter().position(|(s, _)| s == l)) {
            if pos > 0 && ranked[0].1.mul_f64(1.0 + self.cfg.stickiness) >= ranked[pos].1 {
                let l = ranked.remove(pos);
                ranked.insert(0, l);
            }
        }
        Learned {
            at: Some(now),
            order: ranked
                .into_iter()
                .map(|(s, _)| s)
                .collect::<Vec<_>>()
                .into(),
            least_sampled,
        }
    }

    /// The learned order of `model` now (slugs, fastest first); empty when learning is off
    /// or nothing is measured yet.
    pub(crate) fn current(&self, store: &LatencyStore, model: &str, now: Instant) -> Arc<[String]> {
        if !self.cfg.enabled {
            return Arc::from(Vec::new());
        }
        self.learned(store, model, now).order
    }

    /// Sets `provider.order` on `req` (unless the caller routes it itself) and says what
    /// it did.
    pub(crate) fn apply(
        &self,
        store: &LatencyStore,
        req: &mut ChatRequest,
        now: Instant,
    ) -> OrderDecision {
        if !self.cfg.enabled {
            return OrderDecision::Unchanged;
        }
        if let Some(p) = &req.body().provider {
            if p.order.as_ref().is_some_and(|o| !o.is_empty()) || p.sort.is_some() {
                return OrderDecision::Caller;
            }
        }
        let learned = self.learned(store, req.model(), now);
        let allows = |slug: &str| req.body().provider.as_ref().is_none_or(|p| p.allows(slug));
        if self.explore.tick().is_some() {
            // Half the explorations leave routing to OpenRouter (new providers show up),
            // half put the least-sampled known provider first.
            let turn = self.explores.fetch_add(1, Ordering::Relaxed);
            if let Some(first) = learned.least_sampled.filter(|s| turn % 2 == 1 && allows(s)) {
                let mut order = vec![first.to_string()];
                order.extend(
                    learned
                        .order
                        .iter()
                        .filter(|s| s.as_str() != &*first && allows(s))
                        .cloned(),
                );
                req.body_mut().provider_mut().order = Some(order);
            }
            return OrderDecision::Explore;
        }
        let order: Vec<String> = learned
            .order
            .iter()
            .filter(|s| allows(s))
            .cloned()
            .collect();
        if order.is_empty() {
            return OrderDecision::Unchanged;
        }
        req.body_mut().provider_mut().order = Some(order);
        OrderDecision::Learned
    }
}
