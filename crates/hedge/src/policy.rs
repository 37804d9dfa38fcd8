//! What a hedge sends, and when.

use std::time::Duration;

use llm_layers_core::{Alternatives, ChatRequest, ProviderPlan, ProviderSort};
use llm_layers_latency::LatencyStore;

/// Builds the request of hedge number `hedge` (1 for the first hedge) from the original.
/// `None` sends no hedge. Implemented for closures.
pub trait HedgePolicy: Send + Sync + 'static {
    /// The request for hedge `hedge`, or `None`.
    fn hedge(&self, original: &ChatRequest, hedge: u32) -> Option<ChatRequest>;
}

impl<F> HedgePolicy for F
where
    F: Fn(&ChatRequest, u32) -> Option<ChatRequest> + Send + Sync + 'static,
{
    fn hedge(&self, original: &ChatRequest, hedge: u32) -> Option<ChatRequest> {
        self(original, hedge)
    }
}

/// Sends the same request again: OpenRouter's load balancing will likely pick another
/// provider or queue. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SameRequest;

impl HedgePolicy for SameRequest {
    fn hedge(&self, original: &ChatRequest, _hedge: u32) -> Option<ChatRequest> {
        Some(original.clone())
    }
}

/// Follows the router's [`ProviderPlan`]: the hedge is sent with the plan's `hedge_order`
/// (the best known provider first, when the original went elsewhere to explore), or as the
/// same request again when the plan has none (the original went to the best known
/// provider: a fresh draw from its pool beats a slower provider). Without a plan, the
/// same request. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct FollowPlan;

impl HedgePolicy for FollowPlan {
    fn hedge(&self, original: &ChatRequest, _hedge: u32) -> Option<ChatRequest> {
        let mut r = original.clone();
        let order = original
            .extensions()
            .get::<ProviderPlan>()
            .and_then(|p| p.hedge_order.as_ref());
        if let Some(order) = order {
            let allowed: Vec<String> = order
                .iter()
                .filter(|s| {
                    original
                        .body()
                        .provider
                        .as_ref()
                        .is_none_or(|p| p.allows(s))
                })
                .cloned()
                .collect();
            if !allowed.is_empty() {
                r.body_mut().provider_mut().order = Some(allowed);
            }
        }
        Some(r)
    }
}

/// The same request with `provider.sort = "latency"` (unless the caller set an order or a
/// sort): OpenRouter routes the hedge to the endpoint it measures fastest.
#[derive(Debug, Clone, Copy, Default)]
pub struct SortByLatency;

impl HedgePolicy for SortByLatency {
    fn hedge(&self, original: &ChatRequest, _hedge: u32) -> Option<ChatRequest> {
        let mut r = original.clone();
        let p = r.body().provider.as_ref();
        if p.is_some_and(|p| p.sort.is_some() || p.order.is_some()) {
            return Some(r);
        }
        r.body_mut().provider_mut().sort = Some(ProviderSort::Simple("latency".into()));
        Some(r)
    }
}

/// Races other models: hedge `n` asks for `models[n - 1]` (a slow, strong model raced by a
/// fast one: the caller takes whichever commits first); past the list, no hedge.
#[derive(Debug, Clone, Default)]
pub struct OtherModels {
    models: Vec<String>,
}

impl OtherModels {
    /// Hedges go to these models, in order.
    pub fn new(models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        OtherModels {
            models: models.into_iter().map(Into::into).collect(),
        }
    }
}

impl HedgePolicy for OtherModels {
    fn hedge(&self, original: &ChatRequest, hedge: u32) -> Option<ChatRequest> {
        let model = self.models.get(hedge.checked_sub(1)? as usize)?;
        let mut r = original.clone();
        r.body_mut().model = Some(model.clone());
        Some(r)
    }
}

/// Races the next candidate of the request's tier: hedge `n` asks for the `n`-th model of
/// the [`Alternatives`] a router set (the tier's other candidates, best first), with the
/// provider order and `models` list of the first model dropped; past the list, or for a
/// request without alternatives, the same request.
#[derive(Debug, Clone, Copy, Default)]
pub struct NextCandidate;

impl HedgePolicy for NextCandidate {
    fn hedge(&self, original: &ChatRequest, hedge: u32) -> Option<ChatRequest> {
        let mut r = original.clone();
        let next = original
            .extensions()
            .get::<Alternatives>()
            .and_then(|a| a.0.get(hedge.checked_sub(1)? as usize));
        if let Some(model) = next {
            let body = r.body_mut();
            body.model = Some(model.clone());
            body.models = None;
            if let Some(p) = body.provider.as_mut() {
                p.order = None;
            }
        }
        Some(r)
    }
}

/// Until a model has this many times the store's minimum of samples, a quantile delay
/// reads the slowest seen (see [`HedgeDelay::Quantile`]).
const WARM_FACTOR: u64 = 4;

/// When to hedge.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// Always after this long without a first token.
    Fixed(Duration),
    /// A quantile of the model's recent TTFT from the store, clamped to `[min, max]`; the
    /// `cold` delay until the store has its minimum of samples, and no earlier than 3× the
    /// median seen until it has four times that (early samples are the fast ones: the slow
    /// attempts are still running, so a high quantile read from them is too low). A call
    /// that started cold looks at the store again as it waits.
    Quantile {
        /// Where TTFTs are recorded (by a per-attempt `LatencyLayer`).
        store: LatencyStore,
        /// The quantile, e.g. 0.9 or 0.95.
        quantile: f64,
        /// The shortest delay.
        min: Duration,
        /// The longest delay.
        max: Duration,
        /// The delay while the store knows too little.
        cold: Duration,
    },
}

impl HedgeDelay {
    /// The delay for a request to `model` with no [`ProviderPlan`].
    pub fn for_model(&self, model: &str) -> Duration {
        self.lookup_plan(model, None).0
    }

    /// The delay for `req`: with a router's [`ProviderPlan`], the quantile of the provider
    /// its first attempt went to (the model's while that provider is unknown), and no later
    /// than the plan's `race_after`.
    pub fn for_request(&self, req: &ChatRequest) -> Duration {
        self.lookup(req).0
    }

    pub(crate) fn lookup(&self, req: &ChatRequest) -> (Duration, bool) {
        self.lookup_plan(req.model(), req.extensions().get::<ProviderPlan>())
    }

    /// The delay, and whether it is the `cold` guess (the store knows too little yet). A
    /// cold call looks again as it waits: the first samples of a new model arrive within
    /// its first p50, long before a cold delay.
    fn lookup_plan(&self, model: &str, plan: Option<&ProviderPlan>) -> (Duration, bool) {
        let (delay, cold) = match self {
            HedgeDelay::Fixed(d) => (*d, false),
            HedgeDelay::Quantile {
                store,
                quantile,
                min,
                max,
                cold,
            } => {
                let floor = store.min_samples().max(1);
                let first = plan.and_then(|p| p.first.as_deref());
                let stats = first
                    .and_then(|p| store.stats(model, Some(p)))
                    .filter(|s| s.is_known(floor))
                    .or_else(|| store.stats(model, None));
                match stats.filter(|s| s.is_known(floor)) {
                    None => (*cold, true),
                    Some(s) => {
                        // The first samples of a key are its fastest (the slow attempts of
                        // the first wave are still running): a high quantile read from them
                        // is biased low and would hedge much of the wave at once, spending
                        // the budget a hung attempt needs. The median is robust once half
                        // the wave is in, so until there are a few times the minimum of
                        // samples (and no published prior), hedge no earlier than 3x the
                        // median seen.
                        let d = if s.ttft_samples < WARM_FACTOR * floor && s.prior_weight == 0.0 {
                            s.ttft_quantile(*quantile).max(s.ttft_p50 * 3)
                        } else {
                            s.ttft_quantile(*quantile)
                        };
                        (d.clamp(*min, *max), false)
                    }
                }
            }
        };
        match plan.and_then(|p| p.race_after) {
            Some(race) => {
                let race = match self {
                    HedgeDelay::Quantile { min, max, .. } => race.clamp(*min, *max),
                    HedgeDelay::Fixed(_) => race,
                };
                (delay.min(race), false)
            }
            None => (delay, cold),
        }
    }
}
