use llm_layers_core::ConfigError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use llm_layers_core::{Alternatives, ChatRequest, LlmError};

use crate::route::Decisions;
use crate::{Route, RouteReason};
use llm_layers_latency::{LatencyStore, PriorFeed};
use tokio::time::Instant;
use tower_layer::Layer;

use crate::Objective;
use crate::config::{CandidateConfig, LearnedOrderConfig, RouterConfig, SlaConfig, TierConfig};
use crate::order::{LearnedOrder, Trial};
use crate::service::Router;
use crate::tier::{Candidate, Knobs, Sla, Tier};

/// The prefix that names a tier in a request's `model` (`tier:fast`).
pub const TIER_PREFIX: &str = "tier:";

/// A request extension naming the tier to route through; wins over the `model` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseTier(pub Arc<str>);

pub(crate) struct Shared {
    store: LatencyStore,
    tiers: HashMap<Arc<str>, Tier>,
    names: Vec<Arc<str>>,
    knobs: Knobs,
    order: LearnedOrder,
    /// The decision counters of calls naming a concrete model.
    concrete: Decisions,
    /// What the orders of concrete models optimise, and the SLA they meet.
    objective: (Objective, Option<Sla>),
}

impl Shared {
    /// Routes `req` in place: the tier's model and provider preferences, the learned
    /// provider order, the `models` fallback list and the [`Alternatives`] extension.
    pub(crate) fn route(
        &self,
        req: &mut ChatRequest,
        now: Instant,
    ) -> Result<(Route, Option<Trial>), LlmError> {
        let named = match req.extensions().get::<UseTier>() {
            Some(t) => Some(t.0.clone()),
            None => req.model().strip_prefix(TIER_PREFIX).map(Arc::from),
        };
        let (tier, reason, decisions, objective) = match named {
            None => (None, RouteReason::Concrete, &self.concrete, self.objective),
            Some(name) => {
                let Some(tier) = self.tiers.get(&name) else {
                    let known: Vec<&str> = self.names.iter().map(|n| &**n).collect();
                    return Err(LlmError::bad_request(if known.is_empty() {
                        format!("unknown tier `{name}`; no tiers are configured")
                    } else {
                        format!("unknown tier `{name}`; known tiers: {}", known.join(", "))
                    }));
                };
                let (i, reason) = tier.choose(&self.store, self.knobs, now);
                let c = &tier.candidates[i];
                let body = req.body_mut();
                body.model = Some(c.model.clone());
                if body.provider.is_none() {
                    body.provider.clone_from(&c.provider);
                }
                if tier.fallback_models && body.models.is_none() && !tier.others[i].is_empty() {
                    let mut models = Vec::with_capacity(tier.candidates.len());
                    models.push(c.model.clone());
                    models.extend(tier.others[i].iter().cloned());
                    body.models = Some(models);
                }
                req.extensions_mut()
                    .insert(Alternatives(tier.others[i].clone()));
                (
                    Some(tier.name.clone()),
                    reason,
                    &tier.decisions,
                    (tier.objective, Some(tier.sla)),
                )
            }
        };
        let objective = match req.extensions().get::<Objective>() {
            Some(o) => (*o, objective.1),
            None => objective,
        };
        let (order, trial) = self.order.apply(&self.store, req, now, objective);
        decisions.count(tier.as_deref(), reason, order);
        Ok((
            Route {
                tier,
                model: req.model().to_owned(),
                reason,
                order,
            },
            trial,
        ))
    }
}

/// Applies [`Router`]. Every service built from one layer (and its clones) shares the tiers'
/// state and the learned orders.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct RouterLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RouterLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterLayer")
            .field("tiers", &self.shared.names)
            .finish_non_exhaustive()
    }
}

impl RouterLayer {
    /// A builder reading measurements from `store` (the one a per-attempt `LatencyLayer`
    /// records into). No tiers, learned provider order on.
    pub fn builder(store: LatencyStore) -> RouterLayerBuilder {
        RouterLayerBuilder {
            store,
            config: RouterConfig::default(),
            catalog: None,
            seed: 0,
            priors: None,
        }
    }

    /// A router from a configuration, validated.
    pub fn from_config(
        config: RouterConfig,
        store: LatencyStore,
    ) -> Result<RouterLayer, ConfigError> {
        RouterLayer::builder(store).config(config).build()
    }

    /// The tier names, in configuration order.
    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.shared.names.iter().map(|n| &**n)
    }

    /// Routes a request as the service would, without calling anything: what it would send.
    pub fn route(&self, req: &mut ChatRequest) -> Result<Route, LlmError> {
        self.shared.route(req, Instant::now()).map(|(r, _)| r)
    }

    /// The provider order learned for `model` as of now (slugs, fastest measured first);
    /// empty while nothing is measured or when learning is off. A hedge policy reads it to
    /// send its hedge to a measured provider even when the original left routing to the
    /// upstream (a call that started before anything was learned).
    ///
    /// ```
    /// use llm_layers_latency::{LatencyStore, PriorFeed};
    /// use llm_layers_router::RouterLayer;
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// let router = RouterLayer::builder(LatencyStore::new()).build()?;
    /// assert!(router.learned_order("openai/gpt-4o").is_empty(), "nothing measured yet");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn learned_order(&self, model: &str) -> Arc<[String]> {
        self.shared
            .order
            .current(&self.shared.store, model, Instant::now())
            .order
    }

    /// What the router believes about `model`'s providers now, best first: each one's
    /// ranking quantile, local samples and the weight of its published prior. A status
    /// page shows it.
    pub fn rankings(&self, model: &str) -> Vec<ProviderRank> {
        self.shared
            .order
            .current(&self.shared.store, model, Instant::now())
            .arms
            .iter()
            .map(|a| ProviderRank {
                provider: a.name.to_string(),
                slug: a.slug.to_string(),
                ttft_quantile: a.ttft_q,
                samples: a.samples,
                prior_weight: a.prior,
            })
            .collect()
    }
}

/// One provider as the router ranks it ([`RouterLayer::rankings`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProviderRank {
    /// Display name.
    pub provider: String,
    /// Routing slug.
    pub slug: String,
    /// The TTFT quantile it is ranked by (prior and samples blended).
    pub ttft_quantile: Duration,
    /// Local TTFT samples in the store's window.
    pub samples: u64,
    /// How many calls its published prior is worth (0: no prior).
    pub prior_weight: f64,
}

impl<S> Layer<S> for RouterLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router::new(inner, self.shared.clone())
    }
}

/// Builds a [`RouterLayer`], validating every value.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RouterLayerBuilder {
    store: LatencyStore,
    config: RouterConfig,
    catalog: Option<HashSet<String>>,
    seed: u64,
    priors: Option<PriorFeed>,
}

fn in_0_1(x: f64) -> bool {
    x.is_finite() && (0.0..=1.0).contains(&x)
}

fn open_0_1(x: f64) -> bool {
    x.is_finite() && x > 0.0 && x < 1.0
}

/// An SLA, validated; `what` names whose it is in the error.
fn sla(what: &str, s: SlaConfig) -> Result<Sla, ConfigError> {
    if !open_0_1(s.ttft_quantile) {
        return Err(ConfigError::new(format!(
            "{what}: SLA quantile must be in 0..1"
        )));
    }
    if s.ttft_ms == 0 {
        return Err(ConfigError::new(format!(
            "{what}: SLA ttft_ms must be above zero"
        )));
    }
    if !in_0_1(s.min_success_rate) {
        return Err(ConfigError::new(format!(
            "{what}: min_success_rate must be in 0..=1"
        )));
    }
    Ok(Sla {
        quantile: s.ttft_quantile,
        ttft: Duration::from_millis(s.ttft_ms),
        min_success: s.min_success_rate,
    })
}

impl RouterLayerBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: RouterConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a tier.
    pub fn tier(mut self, tier: TierConfig) -> Self {
        self.config.tiers.push(tier);
        self
    }

    /// The share of a tier's calls that explores (0 to 0.5; default 0.05).
    pub fn explore(mut self, share: f64) -> Self {
        self.config.explore = share;
        self
    }

    /// How long a candidate that broke its SLA is skipped (default 60 s).
    pub fn cooldown(mut self, d: Duration) -> Self {
        self.config.cooldown_secs = d.as_secs_f64();
        self
    }

    /// The recovery bound as a share of the SLA bound (default 0.9).
    pub fn recover_ratio(mut self, r: f64) -> Self {
        self.config.recover_ratio = r;
        self
    }

    /// How provider order is learned (on by default).
    pub fn learned_order(mut self, cfg: LearnedOrderConfig) -> Self {
        self.config.learned_order = cfg;
        self
    }

    /// Seeds the draws that pick a provider (default 0): the same seed and call order make
    /// the same choices.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Published endpoint stats as priors: every routed model is
    /// [touched](PriorFeed::touch) (fetched in the background when missing or stale), and
    /// providers take the slugs the stats publish. The feed must write into the router's
    /// store.
    pub fn priors(mut self, feed: PriorFeed) -> Self {
        self.priors = Some(feed);
        self
    }

    /// The model ids the upstream serves (its catalog): a candidate outside it is a
    /// configuration error.
    pub fn catalog(mut self, models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.catalog = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: a share or quantile out of range, or a tier that is empty, defined twice, or names a model twice.
    pub fn build(self) -> Result<RouterLayer, ConfigError> {
        let c = self.config;
        if !(c.explore.is_finite() && (0.0..=0.5).contains(&c.explore)) {
            return Err(ConfigError::new("router explore share must be in 0..=0.5"));
        }
        if !(c.cooldown_secs.is_finite() && c.cooldown_secs > 0.0 && c.cooldown_secs <= 86_400.0) {
            return Err(ConfigError::new(
                "router cooldown must be above 0 and at most a day",
            ));
        }
        if !(c.recover_ratio > 0.0 && c.recover_ratio <= 1.0) {
            return Err(ConfigError::new("router recover_ratio must be in (0, 1]"));
        }
        let lo = &c.learned_order;
        if !open_0_1(lo.quantile) {
            return Err(ConfigError::new("learned order quantile must be in 0..1"));
        }
        if !in_0_1(lo.max_error_rate) || !in_0_1(lo.stickiness) {
            return Err(ConfigError::new(
                "learned order max_error_rate and stickiness must be in 0..=1",
            ));
        }
        if !(lo.explore.is_finite() && (0.0..=0.5).contains(&lo.explore)) {
            return Err(ConfigError::new(
                "learned order explore share must be in 0..=0.5",
            ));
        }
        let order_sla = match lo.sla {
            Some(s) => Some(sla("learned order", s)?),
            None => None,
        };
        let objective = (lo.objective, order_sla);
        let mut tiers = HashMap::new();
        let mut names = Vec::new();
        for t in &c.tiers {
            let name = t.name.as_str();
            if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch == ':') {
                return Err(ConfigError::new(format!(
                    "tier name `{name}` must be non-empty, without spaces or `:`"
                )));
            }
            if t.models.is_empty() {
                return Err(ConfigError::new(format!("tier `{name}` has no models")));
            }
            let sla = sla(&format!("tier `{name}`"), t.sla)?;
            // Measured from their first call, failures included: a tier model that only
            // hangs must read as bad, not as unmeasured.
            self.store.admit(t.models.iter().map(|m| m.model()));
            let mut seen = HashSet::new();
            for m in &t.models {
                let model = m.model();
                if model.is_empty() || model.starts_with(TIER_PREFIX) {
                    return Err(ConfigError::new(format!(
                        "tier `{name}`: `{model}` is not a model id"
                    )));
                }
                if !seen.insert(model) {
                    return Err(ConfigError::new(format!(
                        "tier `{name}` lists `{model}` twice"
                    )));
                }
                if let Some(cat) = &self.catalog {
                    if !cat.contains(model) {
                        return Err(ConfigError::new(format!(
                            "tier `{name}`: unknown model `{model}` (not in the catalog)"
                        )));
                    }
                }
            }
            let candidates = t
                .models
                .iter()
                .map(|m| match m {
                    CandidateConfig::Model(model) => Candidate {
                        model: model.clone(),
                        provider: None,
                    },
                    CandidateConfig::WithProvider { model, provider } => Candidate {
                        model: model.clone(),
                        provider: Some((**provider).clone()),
                    },
                })
                .collect();
            let tier = Tier::new(
                name,
                candidates,
                sla,
                t.fallback_models,
                (c.explore, t.objective),
            );
            if tiers.insert(tier.name.clone(), tier).is_some() {
                return Err(ConfigError::new(format!("tier `{name}` is defined twice")));
            }
            names.push(Arc::from(name));
        }
        Ok(RouterLayer {
            shared: Arc::new(Shared {
                store: self.store,
                tiers,
                names,
                knobs: Knobs {
                    cooldown: Duration::from_secs_f64(c.cooldown_secs),
                    recover_ratio: c.recover_ratio,
                },
                order: LearnedOrder::new(c.learned_order, c.slugs, self.seed, self.priors),
                concrete: Decisions::default(),
                objective,
            }),
        })
    }
}
