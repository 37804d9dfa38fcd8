//! The stack behind the gateway: what each layer is and why it stands where it does.

use std::sync::Arc;
use std::time::Duration;

use llm_layers_breaker::{BreakerLayer, SlowCall};
use llm_layers_core::{ChatRequest, ChatStream, ConfigError, LlmError, Priority, Tenant};
use llm_layers_hedge::{FollowPlan, HedgeDelay, HedgeLayer};
use llm_layers_latency::{FetchEndpoints, LatencyLayer, LatencyStore, PriorFeed, Scope};
use llm_layers_openrouter::OpenRouter;
use llm_layers_ratelimit::{Key, Limit, Mode, RateLimitLayer};
use llm_layers_resume::ResumeLayer;
use llm_layers_retry::{DefaultPolicy, RetryLayer};
use llm_layers_router::RouterLayer;
use llm_layers_timeout::{AdaptiveLimit, TimeoutLayer, Timeouts};
use tower::ServiceBuilder;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneSyncService;

use crate::config::Config;
use crate::handlers::KeyTenant;

/// The stack behind the gateway, erased once at the boundary.
pub type Stack = BoxCloneSyncService<ChatRequest, ChatStream, LlmError>;

/// The leaf for a configuration (the mock's URL and a placeholder key when there is no key).
pub fn build_leaf(
    config: &Config,
    base_url: &str,
    api_key: &str,
) -> Result<OpenRouter, ConfigError> {
    OpenRouter::builder()
        .api_key(api_key)
        .base_url(base_url)
        .connect_timeout(config.connect_timeout)
        .default_max_tokens(config.default_max_tokens)
        .http2_prior_knowledge(config.upstream_h2c)
        .title("llm-layers gateway")
        .request_headers(crate::trace::upstream_headers())
        .build()
}

/// The full stack over `leaf`, outermost first: latency per call → router (tiers, learned
/// provider order) → rate limits (concurrency with priority, requests per tenant, requests
/// and tokens per model as routed, so `tier:NAME` shares its model's bucket) → total timeout (sets the deadline) → retry → hedge (at a quantile of recent TTFT) →
/// breaker (open and throttled providers go into `provider.ignore`; a first token slower
/// than 3× the model's median counts as a failure) → latency per attempt (feeds the store
/// the hedge and breaker read) → per-attempt first-token and idle timeouts → the leaf.
///
/// The attempt latency stands *above* the per-attempt timeouts so it sees a timeout as a
/// timeout (below them it would only see its future dropped), and a hedge loser or an
/// abandoned attempt as a censored sample: the store is never blind to the tail.
///
/// `catalog` is the upstream's model ids when known: tiers naming other models are refused.
///
/// `leaf` is the OpenRouter leaf in the gateway; any chat service fits, so the same stack
/// runs over `llm_layers_mock::MockChat` in tests and benchmarks.
pub fn build_stack<S: ChatService>(
    config: &Config,
    leaf: S,
    catalog: Option<Vec<String>>,
) -> Result<Stack, ConfigError> {
    build_stack_with_parts(config, leaf, catalog).map(|(stack, _)| stack)
}

/// What [`build_stack`] can wrap: any chat service that can be cloned and shared between
/// tasks (the OpenRouter leaf, `MockChat`, a stack of your own).
pub trait ChatService:
    tower::Service<ChatRequest, Response = ChatStream, Error = LlmError, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> ChatService for S where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = LlmError, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// `LoadShed`'s refusal as the 429 a full queue deserves; anything else as it was.
fn shed_error(e: tower::BoxError) -> LlmError {
    if e.is::<tower::load_shed::error::Overloaded>() {
        return LlmError::rate_limited(Duration::from_secs(1))
            .with_message("every concurrency slot is taken and the queue is full");
    }
    LlmError::from(e)
}

/// What the stack has learned, for the status page: the latency store, the breakers, the
/// router (learned orders).
#[derive(Clone, Debug)]
pub struct Parts {
    /// Per (model, provider) latency and outcomes.
    pub store: LatencyStore,
    /// The breakers (states, holds).
    pub breaker: llm_layers_breaker::BreakerLayer,
    /// The router (learned provider orders).
    pub router: RouterLayer,
    /// The published endpoint stats it was seeded with, when priors are on.
    pub priors: Option<PriorFeed>,
    /// The state shared with other replicas, when `--redis-url` is set.
    pub shared: Option<Shared>,
}

/// The state shared with other replicas through Redis: the connection (its health and
/// fallbacks for the status page) and the latency sync (one round before serving, so a
/// new replica starts from the fleet's profile). Breaker and latency syncs run on tasks of
/// their own, which end with the runtime.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The connection.
    pub redis: llm_layers_redis::Redis,
    /// The latency profiles' sync.
    pub latency: llm_layers_redis::LatencySync,
}

/// Connects the shared state (lazily: a Redis that is down is local state, never an error
/// at start) and starts its syncs: breaker trips every second, latency every 2 s.
fn share(
    config: &Config,
    store: &LatencyStore,
    breaker: &BreakerLayer,
) -> Result<Option<Shared>, ConfigError> {
    let Some(url) = &config.redis_url else {
        return Ok(None);
    };
    let redis = llm_layers_redis::Redis::builder(url.as_str()).build()?;
    let _breaker =
        llm_layers_redis::BreakerSync::new(&redis, breaker, Duration::from_secs(1)).spawn();
    let latency = llm_layers_redis::LatencySync::new(&redis, store, Duration::from_secs(2));
    let _latency = latency.clone().spawn();
    Ok(Some(Shared { redis, latency }))
}

/// [`build_stack`], also returning the [`Parts`] a status page reads.
pub fn build_stack_with_parts<S: ChatService>(
    config: &Config,
    leaf: S,
    catalog: Option<Vec<String>>,
) -> Result<(Stack, Parts), ConfigError> {
    build_stack_with_priors(config, leaf, catalog, None)
}

/// What fetches an OpenRouter leaf's published endpoint stats, for
/// [`build_stack_with_priors`].
pub fn endpoint_stats_of(leaf: &OpenRouter) -> FetchEndpoints {
    let leaf = leaf.clone();
    Arc::new(move |model: String| {
        let leaf = leaf.clone();
        Box::pin(async move { leaf.endpoint_stats(&model).await })
    })
}

/// [`build_stack_with_parts`] with published endpoint stats as priors (when
/// `config.priors` and `fetch_priors` is given: see [`endpoint_stats_of`]).
pub fn build_stack_with_priors<S: ChatService>(
    config: &Config,
    leaf: S,
    catalog: Option<Vec<String>>,
    fetch_priors: Option<FetchEndpoints>,
) -> Result<(Stack, Parts), ConfigError> {
    build_stack_reusing(config, leaf, catalog, fetch_priors, None)
}

/// [`build_stack_with_priors`] measuring into `store` when given (a reload keeps what was
/// measured), else into a new one.
pub fn build_stack_reusing<S: ChatService>(
    config: &Config,
    leaf: S,
    catalog: Option<Vec<String>>,
    fetch_priors: Option<FetchEndpoints>,
    store: Option<LatencyStore>,
) -> Result<(Stack, Parts), ConfigError> {
    // Quantiles from 10 samples: a p95 read that early is rough, but a hedge or an order
    // from it beats the cold guess by far (the first ten calls of a model arrive within
    // its first p50).
    let store = match store {
        Some(s) => s,
        None => LatencyStore::builder().min_samples(10).build()?,
    };
    let breaker = BreakerLayer::builder()
        .seed(config.seed.unwrap_or(0))
        .slow_call(SlowCall::P50Multiple {
            store: store.clone(),
            factor: config.slow_call_factor,
            min: Duration::from_millis(500),
        })
        .build()?;
    let mut router = RouterLayer::builder(store.clone())
        .config(config.router.clone())
        .seed(config.seed.unwrap_or(0));
    // Published per-endpoint stats: priors for the order and the hedge delay; an endpoint
    // published below 90 % uptime over 5 minutes starts half-open in the breaker.
    let priors = match fetch_priors.filter(|_| config.priors) {
        Some(fetch) => {
            let suspects = breaker.clone();
            let feed = PriorFeed::builder(store.clone(), fetch)
                .on_endpoints(Arc::new(move |model, endpoints| {
                    suspects.suspect_low_uptime(model, endpoints, 90.0);
                }))
                .build()?;
            router = router.priors(feed.clone());
            Some(feed)
        }
        None => None,
    };
    if let Some(models) = catalog {
        router = router.catalog(models);
    }
    let router = router.build()?;
    let overall = TimeoutLayer::builder()
        .limits(Timeouts {
            total: config.total_timeout,
            ..Timeouts::default()
        })
        .build()?;
    let mut per_attempt = TimeoutLayer::builder().limits(Timeouts {
        first_token: config.first_token_timeout,
        idle: config.idle_timeout,
        total: None,
    });
    // No attempt rides a static first-token timeout: cut at 3x the p99 first token of the
    // provider it is aimed at (the model's while that one is not measured), 2 s at least,
    // the configured limit at most (read again every 2 s while nothing is measured, so a
    // cold process's first attempts do not ride it), and retried within the call's deadline. A whole answer
    // is streamed from upstream, so its first token is its first chunk: cut the same way.
    if let Some(first) = config
        .first_token_timeout
        .filter(|_| config.adaptive_first_token)
    {
        per_attempt = per_attempt.first_token_adaptive(
            store.clone(),
            AdaptiveLimit {
                quantile: 0.99,
                factor: 3.0,
                min: Duration::from_secs(2).min(first),
                max: first,
            },
        );
    }
    if let Some(idle) = config.idle_timeout.filter(|_| config.adaptive_idle) {
        per_attempt = per_attempt.idle_adaptive(
            store.clone(),
            AdaptiveLimit {
                quantile: 0.99,
                factor: 20.0,
                min: Duration::from_secs(2).min(idle),
                max: idle,
            },
        );
    }
    let per_attempt = per_attempt.build()?;
    // One budget for retries and continuations: both are extra upstream requests.
    let budget: Arc<dyn Budget + Send + Sync> =
        Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    let mut retry = RetryLayer::builder().budget(budget.clone());
    if let Some(seed) = config.seed {
        retry = retry.seed(seed);
    }
    let resume = ResumeLayer::builder()
        .on_by_default(config.resume)
        // A continuation can break too: up to three, from the same budget (over the wire on
        // chaos faults, two left about 3 calls in 1,000 with every continuation spent).
        .max_resumes(3)
        .budget(budget)
        .build()?;
    let retry = retry
        .policy(
            // `--max-retries 0` turns every retry off, throttles included.
            DefaultPolicy::new(config.max_retries).max_throttled(if config.max_retries == 0 {
                0
            } else {
                8
            }),
        )
        .build()?;
    let hedge = (config.hedge_quantile > 0.0)
        .then(|| {
            HedgeLayer::builder()
                .delay(HedgeDelay::Quantile {
                    store: store.clone(),
                    quantile: config.hedge_quantile,
                    min: Duration::from_millis(100),
                    max: Duration::from_secs(30),
                    // A model not measured yet: about OpenRouter's typical median.
                    cold: Duration::from_secs(1),
                })
                // The router's plan: an exploring call races the best known provider
                // after its p75; otherwise the same request, a fresh draw.
                .policy(FollowPlan)
                // Every extra request for the tail (hedges and exploring races) within
                // `hedge_budget` of calls over 10 s, a hard cap; or 30 per window when that
                // is more (a quiet service, and a cold start: its first few hundred calls,
                // the most uncertain, may spend the share of the window up front; at 20,
                // the first wave sent to a provider that hangs after its headers was not
                // all rescued: the matrix's `outage` row).
                .budget_window(Duration::from_secs(10))
                .budget_floor(3)
                .budget_ratio(config.hedge_budget as f32)
                // A second hedge only replaces one that failed while the original waits.
                .max_attempts(3)
                .build()
        })
        .transpose()?;
    let mut limits =
        RateLimitLayer::builder().concurrency(config.max_concurrency, Key::global(), Priority(1));
    let minute = Duration::from_secs(60);
    if config.requests_per_minute > 0 {
        let n = config.requests_per_minute;
        limits = limits.requests(
            Limit::new(n, minute)
                .burst(n.div_ceil(6).max(1))
                .key(Key::base_model()),
        );
    }
    if config.tenant_requests_per_minute > 0 {
        let n = config.tenant_requests_per_minute;
        let anonymous: Arc<str> = Arc::from("_anonymous");
        let by_tenant = Key::from_fn(move |r| {
            Some(
                r.extensions()
                    .get::<Tenant>()
                    .map_or_else(|| anonymous.clone(), |t| t.0.clone()),
            )
        });
        limits = limits.requests(
            Limit::new(n, minute)
                .burst(n.div_ceil(6).max(1))
                .name("tenant")
                .key(by_tenant),
        );
    }
    // Per-key request limits: one bucket per key, keyed by its tenant.
    for k in config.keys.iter().filter(|k| k.requests_per_minute > 0) {
        let n = k.requests_per_minute;
        let tenant = k.tenant.clone();
        limits = limits.requests(
            Limit::new(n, minute)
                .burst(n.div_ceil(6).max(1))
                .name(format!("key:{}", k.tenant))
                .key(Key::from_fn(move |r| {
                    r.extensions()
                        .get::<KeyTenant>()
                        .filter(|t| t.0 == tenant)
                        .map(|t| t.0.clone())
                })),
        );
    }
    if config.tokens_per_minute > 0 {
        let n = config.tokens_per_minute;
        limits = limits.tokens(
            Limit::new(n, minute)
                .key(Key::base_model())
                .mode(Mode::Reject),
        );
    }
    let shared = share(config, &store, &breaker)?;
    if let Some(sh) = &shared {
        limits = limits.store(
            sh.redis
                .limit_store()
                .mode(config.redis_limits)
                .replicas(config.replicas)
                .build()?,
        );
    }
    let limits = limits.build()?;
    let per_call = LatencyLayer::builder().scope(Scope::Call).build()?;
    let status_store = store.clone();
    let per_attempt_latency = LatencyLayer::builder()
        .scope(Scope::Attempt)
        .store(store)
        .build()?;
    let status_breaker = breaker.clone();
    let parts = Parts {
        store: status_store,
        breaker: status_breaker,
        router: router.clone(),
        priors,
        shared,
    };
    // Coalescing stands outside the router: identical calls are compared as the callers
    // sent them, before each gets its own provider order; a joiner costs no upstream call
    // and so spends no rate-limit quota, which is why only one tenant's calls are ever
    // shared.
    // Calls share only within one tenant and priority (the layer's default) and one resume
    // choice (a resumed and an unresumed answer end differently).
    let coalesce = config.coalesce.then(|| {
        llm_layers_coalesce::CoalesceLayer::new().partition_by(|r| {
            format!(
                "{:?}",
                r.extensions().get::<llm_layers_resume::ResumeChoice>()
            )
        })
    });
    let stack = ServiceBuilder::new()
        .layer(per_call)
        .option_layer(coalesce)
        .layer(router)
        // The concurrency limit is a readiness concern: when every slot is taken and its
        // queue is full, `LoadShed` refuses at once (a 429) instead of waiting for readiness.
        .map_err(shed_error as fn(tower::BoxError) -> LlmError)
        .load_shed()
        .layer(limits)
        .layer(overall)
        .layer(resume)
        .layer(retry)
        .option_layer(hedge)
        .layer(breaker)
        .layer(per_attempt_latency)
        .layer(per_attempt)
        .service(leaf);
    Ok((BoxCloneSyncService::new(stack), parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_layers_core::ErrorKind;

    #[test]
    fn a_shed_call_is_a_429_with_retry_after_and_other_errors_pass_unchanged() {
        let e = shed_error(Box::new(tower::load_shed::error::Overloaded::new()));
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        let ours = LlmError::bad_request("no");
        let back = shed_error(Box::new(ours));
        assert_eq!(back.kind(), ErrorKind::BadRequest);
    }
}
