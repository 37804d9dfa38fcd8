//! An OpenAI-compatible gateway in front of OpenRouter, built on llm-layers.
//!
//! `POST /v1/chat/completions` (streaming and not), `GET /v1/models`, `GET /healthz`,
//! `GET /metrics`. With no `OPENROUTER_API_KEY` it starts the mock OpenRouter in process.
//! Run it with `cargo run -p example-gateway`; see `src/main.rs`.

pub mod config;
pub mod error;
pub mod keys;
mod sse;
pub mod status;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use llm_layers_core::{
    ChatCompletion, ChatRequest, ChatStream, LlmError, Priority, Tenant, WholeAnswer,
};
use llm_layers_mock::{MockServer, Scenario};
use llm_layers_openrouter::OpenRouter;
use std::time::Duration;

use llm_layers_breaker::{BreakerLayer, SlowCall};
use llm_layers_hedge::{HedgeDelay, HedgeLayer};
use llm_layers_latency::{LatencyLayer, LatencyStore, Scope};
use llm_layers_ratelimit::{Key, Limit, Mode, RateLimitLayer};
use llm_layers_retry::{DefaultPolicy, RetryLayer};
use llm_layers_router::{RouterLayer, TIER_PREFIX};
use llm_layers_timeout::{AdaptiveLimit, TimeoutLayer, Timeouts};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Layer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

pub use config::Config;
use error::ApiFailure;

/// The stack behind the gateway, erased once at the boundary.
pub type Stack = BoxCloneSyncService<ChatRequest, ChatStream, LlmError>;

/// Where a shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// No new connections; in-flight streams run on for the grace period.
    Draining,
    /// The grace period is over: streams still open are cut with an error event.
    Cut,
}

#[derive(Clone)]
struct AppState {
    stack: Stack,
    leaf: OpenRouter,
    metrics: Option<PrometheusHandle>,
    config: Arc<Config>,
    phase: watch::Receiver<Phase>,
    parts: Parts,
    started: tokio::time::Instant,
    counters: Arc<status::Counters>,
}

/// The leaf for a configuration (the mock's URL and a placeholder key when there is no key).
pub fn build_leaf(config: &Config, base_url: &str, api_key: &str) -> Result<OpenRouter, LlmError> {
    OpenRouter::builder()
        .api_key(api_key)
        .base_url(base_url)
        .connect_timeout(config.connect_timeout)
        .default_max_tokens(config.default_max_tokens)
        .http2_prior_knowledge(config.upstream_h2c)
        .title("llm-layers gateway")
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
pub fn build_stack<S>(
    config: &Config,
    leaf: S,
    catalog: Option<Vec<String>>,
) -> Result<Stack, LlmError>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = LlmError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    build_stack_with_parts(config, leaf, catalog).map(|(stack, _)| stack)
}

/// What the stack has learned, for the status page: the latency store, the breakers, the
/// router (learned orders).
#[derive(Clone)]
pub struct Parts {
    /// Per (model, provider) latency and outcomes.
    pub store: LatencyStore,
    /// The breakers (states, holds).
    pub breaker: llm_layers_breaker::BreakerLayer,
    /// The router (learned provider orders).
    pub router: RouterLayer,
}

/// [`build_stack`], also returning the [`Parts`] a status page reads.
pub fn build_stack_with_parts<S>(
    config: &Config,
    leaf: S,
    catalog: Option<Vec<String>>,
) -> Result<(Stack, Parts), LlmError>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = LlmError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // Quantiles from 10 samples: a p95 read that early is rough, but a hedge or an order
    // from it beats the cold guess by far (the first ten calls of a model arrive within
    // its first p50).
    let store = LatencyStore::builder().min_samples(10).build()?;
    let mut router = RouterLayer::builder(store.clone()).config(config.router.clone());
    if let Some(models) = catalog {
        router = router.catalog(models);
    }
    let router = router.build()?;
    // A hedge goes to a measured provider other than the one the original was sent to
    // first: the request's order rotated by one per hedge, or (for a call that started
    // before anything was learned) the order learned since.
    let hedge_router = router.clone();
    let hedge_policy = move |original: &ChatRequest, n: u32| {
        let mut r = original.clone();
        let own =
            r.body().provider.as_ref().is_some_and(|p| {
                p.sort.is_some() || p.order.as_ref().is_some_and(|o| !o.is_empty())
            });
        let mut order: Vec<String> = match r.body().provider.as_ref().and_then(|p| p.order.clone())
        {
            Some(o) if !o.is_empty() => o,
            _ if own => return Some(r),
            _ => hedge_router.learned_order(r.model()).to_vec(),
        };
        let allows = |s: &str| r.body().provider.as_ref().is_none_or(|p| p.allows(s));
        order.retain(|s| allows(s));
        if !order.is_empty() {
            let k = n as usize % order.len();
            order.rotate_left(k);
            r.body_mut().provider_mut().order = Some(order);
        }
        Some(r)
    };
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
    let mut retry = RetryLayer::builder();
    if let Some(seed) = config.seed {
        retry = retry.seed(seed);
    }
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
                .policy(hedge_policy)
                .budget(Duration::from_secs(10), 5, config.hedge_budget as f32)
                // A second hedge only replaces one that failed while the original waits.
                .max_attempts(3)
                .build()
        })
        .transpose()?;
    let breaker = BreakerLayer::builder()
        .seed(config.seed.unwrap_or(0))
        .slow_call(SlowCall::P50Multiple {
            store: store.clone(),
            factor: config.slow_call_factor,
            min: Duration::from_millis(500),
        })
        .build()?;
    let mut limits =
        RateLimitLayer::builder().concurrency(config.max_concurrency, Key::global(), Priority(1));
    let minute = Duration::from_secs(60);
    if config.requests_per_minute > 0 {
        let n = config.requests_per_minute;
        limits = limits.requests(
            Limit::new(n, minute)
                .burst(n.div_ceil(6).max(1))
                .key(Key::model()),
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
                .key(by_tenant),
        );
    }
    // Per-key request limits: one bucket per key, keyed by its tenant.
    for k in config.keys.iter().filter(|k| k.requests_per_minute > 0) {
        let n = k.requests_per_minute;
        let tenant = k.tenant.clone();
        limits = limits.requests(Limit::new(n, minute).burst(n.div_ceil(6).max(1)).key(
            Key::from_fn(move |r| {
                r.extensions()
                    .get::<KeyTenant>()
                    .filter(|t| t.0 == tenant)
                    .map(|t| t.0.clone())
            }),
        ));
    }
    if config.tokens_per_minute > 0 {
        let n = config.tokens_per_minute;
        limits = limits.tokens(Limit::new(n, minute).key(Key::model()).mode(Mode::Reject));
    }
    let limits = limits.build()?;
    let per_call = LatencyLayer::builder().scope(Scope::Call).build()?;
    let status_store = store.clone();
    let per_attempt_latency = LatencyLayer::builder()
        .scope(Scope::Attempt)
        .store(store)
        .build()?;
    let status_breaker = breaker.clone();
    let inner = ServiceBuilder::new()
        .layer(breaker)
        .layer(per_attempt_latency)
        .layer(per_attempt)
        .service(leaf);
    // Hedging is optional: erase the inner type once so both shapes fit one stack.
    let inner: Stack = match hedge {
        Some(h) => BoxCloneSyncService::new(h.layer(inner)),
        None => BoxCloneSyncService::new(inner),
    };
    let parts = Parts {
        store: status_store,
        breaker: status_breaker,
        router: router.clone(),
    };
    let stack = ServiceBuilder::new()
        .layer(per_call)
        .layer(router)
        .layer(limits)
        .layer(overall)
        .layer(retry)
        .service(inner);
    Ok((BoxCloneSyncService::new(stack), parts))
}

/// The router, for embedding the gateway in another axum app.
fn router(state: AppState) -> Router {
    let keys = Arc::new(state.config.keys.clone());
    // The API wants a gateway key, the operator's pages an admin key (when keys are on);
    // /healthz and the status page's shell are open.
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route_layer(keys::KeyAuthLayer::new(keys.clone()));
    let admin = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/status.json", get(status_json))
        .route_layer(keys::KeyAuthLayer::admin(keys));
    Router::new()
        .merge(api)
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/status", get(status_page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Installs the process-wide Prometheus recorder, with the GenAI histograms' buckets, and
/// spawns its upkeep; returns the handle that `GET /metrics` renders. Call it once per
/// process, from inside a Tokio runtime.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in llm_layers_latency::names::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
            .map_err(|e| e.to_string())?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Runs the gateway as the `gateway` binary does: installs the metrics recorder, starts,
/// prints its configuration and address (the last line says
/// `llm-layers gateway on http://ADDR`), and on SIGINT or SIGTERM drains and stops.
pub async fn serve(config: Config) -> Result<(), String> {
    let handle = install_metrics()?;
    let described = config.describe();
    let no_key = config.api_key.is_none();
    let preset = config.mock_preset.clone();
    let gateway = start(config, Some(handle)).await?;
    if no_key {
        println!(
            "no OPENROUTER_API_KEY: serving from the built-in mock upstream ({preset} preset) at {}",
            gateway.mock().map_or("?", |m| m.base_url())
        );
    }
    println!("{described}");
    println!(
        "llm-layers gateway on http://{}  (POST /v1/chat/completions, GET /v1/models, /healthz, /metrics, /status)",
        gateway.addr()
    );
    shutdown_signal().await;
    println!("shutting down: draining in-flight streams");
    gateway.shutdown().await.map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A running gateway.
pub struct Gateway {
    addr: std::net::SocketAddr,
    mock: Option<MockServer>,
    phase: watch::Sender<Phase>,
    grace: std::time::Duration,
    server: JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The embedded mock, when it runs on one.
    pub fn mock(&self) -> Option<&MockServer> {
        self.mock.as_ref()
    }

    /// Graceful shutdown: stop accepting, let in-flight streams run for the grace period,
    /// then cut those still open with an error event, and wait for the server to end.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.phase.send(Phase::Draining);
        let server = self.server;
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => return r.unwrap_or(Ok(())),
            _ = tokio::time::sleep(self.grace) => {}
        }
        let _ = self.phase.send(Phase::Cut);
        server.await.unwrap_or(Ok(()))
    }
}

/// Starts the gateway (and the mock upstream when there is no key). `metrics` is the
/// Prometheus handle to render on `/metrics`, if a recorder was installed.
pub async fn start(config: Config, metrics: Option<PrometheusHandle>) -> Result<Gateway, String> {
    let (mock, base_url, key) = match &config.api_key {
        Some(k) => (None, config.base_url.clone(), k.clone()),
        None => {
            let scenario = Scenario::preset(&config.mock_preset)
                .ok_or_else(|| format!("unknown mock preset {:?}", config.mock_preset))?
                .with_time_scale(config.mock_time_scale);
            let server = MockServer::start(scenario)
                .await
                .map_err(|e| format!("cannot start the mock upstream: {e}"))?;
            let url = server.base_url().to_owned();
            (Some(server), url, "sk-or-v1-mock".to_owned())
        }
    };
    let leaf = build_leaf(&config, &base_url, &key).map_err(|e| e.to_string())?;
    // With tiers configured, their models are checked against the upstream's catalog
    // (when it answers within 10 s; otherwise they are taken on trust).
    let catalog = if config.router.tiers.is_empty() {
        None
    } else {
        match tokio::time::timeout(Duration::from_secs(10), leaf.models()).await {
            Ok(Ok(models)) => Some(models.iter().map(|m| m.id.clone()).collect()),
            _ => None,
        }
    };
    let (stack, parts) =
        build_stack_with_parts(&config, leaf.clone(), catalog).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let grace = config.shutdown_grace;
    let state = AppState {
        stack,
        leaf,
        metrics,
        config: Arc::new(config),
        phase: phase_rx.clone(),
        parts,
        started: tokio::time::Instant::now(),
        counters: Arc::default(),
    };
    let app = router(state);
    let mut draining = phase_rx;
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = draining.wait_for(|p| *p >= Phase::Draining).await;
            })
            .await
    });
    Ok(Gateway {
        addr,
        mock,
        phase: phase_tx,
        grace,
        server,
    })
}

async fn read_body(state: &AppState, req: Request) -> Result<bytes::Bytes, ApiFailure> {
    let limit = state.config.max_body_bytes;
    let read = axum::body::to_bytes(req.into_body(), limit);
    match tokio::time::timeout(state.config.body_read_timeout, read).await {
        Err(_) => Err(ApiFailure::invalid(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body was not received in time",
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util_limit::LengthLimitError>());
            if too_large {
                Err(ApiFailure::invalid(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    format!("the request body is larger than {limit} bytes"),
                ))
            } else {
                Err(ApiFailure::invalid(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "the request body could not be read",
                ))
            }
        }
    }
}

mod http_body_util_limit {
    pub(crate) use http_body_util::LengthLimitError;
}

fn parse_request(bytes: &[u8]) -> Result<ChatRequest, ApiFailure> {
    let req: ChatRequest = serde_json::from_slice(bytes).map_err(|e| {
        ApiFailure::invalid(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON body: {e}"),
        )
    })?;
    if req.body().messages.is_empty() {
        return Err(ApiFailure::invalid(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "'messages' is required and must not be empty",
        ));
    }
    Ok(req)
}

/// The tenant of the gateway key a call came with (what per-key limits key on, whatever
/// tenant a trusted key's caller names).
#[derive(Debug, Clone)]
struct KeyTenant(Arc<str>);

/// What a key changes in a request: its model is allowed (else 403), `max_tokens` capped,
/// the routing and spending fields removed unless allowed.
fn apply_key(key: &keys::GatewayKey, req: &mut ChatRequest) -> Result<(), ApiFailure> {
    if !key.allows_model(req.model()) {
        return Err(ApiFailure {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: "model_not_allowed".into(),
            message: format!("this key may not use the model {:?}", req.model()),
            retry_after: None,
        });
    }
    let routing_fields = ["models", "provider", "plugins", "transforms"];
    let strip = !key.routing
        && (req.body().models.is_some()
            || req.body().provider.is_some()
            || routing_fields[2..]
                .iter()
                .any(|f| req.body().extra.contains_key(*f)));
    if strip {
        let body = req.body_mut();
        body.models = None;
        body.provider = None;
        for f in &routing_fields[2..] {
            body.extra.remove(*f);
        }
    }
    if let Some(cap) = key.max_tokens {
        let body = req.body_mut();
        let asked = body.max_output_tokens();
        if asked.is_none_or(|n| n > cap) {
            body.max_tokens = Some(cap);
            body.max_completion_tokens = None;
        }
    }
    Ok(())
}

async fn chat(State(state): State<AppState>, req: Request) -> Response {
    // `KeyAuth` checked the key before the body was read: a caller without one costs nothing.
    let key = req
        .extensions()
        .get::<keys::Caller>()
        .and_then(|c| c.0.clone());
    let trusted = key.as_ref().is_none_or(|k| k.trusted);
    let header_tenant = req
        .headers()
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .map(|t| Tenant(Arc::from(t)));
    let tenant = match &key {
        Some(k) if !trusted => Some(Tenant(k.tenant.clone())),
        Some(k) => header_tenant.or_else(|| Some(Tenant(k.tenant.clone()))),
        None => header_tenant,
    };
    let asked = match req
        .headers()
        .get("x-priority")
        .and_then(|v| v.to_str().ok())
    {
        Some("low") => Some(Priority(0)),
        Some("high") => Some(Priority(2)),
        Some("normal") => Some(Priority(1)),
        _ => None,
    };
    // A key's priority is a ceiling: the header may only lower it, unless the key is trusted.
    let priority = match (&key, asked) {
        (Some(k), Some(p)) if !trusted => p.min(k.priority),
        (Some(k), None) => k.priority,
        (_, Some(p)) => p,
        (None, None) => Priority(1),
    };
    let bytes = match read_body(&state, req).await {
        Ok(b) => b,
        Err(f) => return f.into_response(),
    };
    let mut req = match parse_request(&bytes) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    if let Some(k) = &key {
        if let Err(f) = apply_key(k, &mut req) {
            return f.into_response();
        }
        req.extensions_mut().insert(KeyTenant(k.tenant.clone()));
    }
    req.extensions_mut().insert(priority);
    let counted_tenant = tenant.as_ref().map(|t| t.0.clone());
    if let Some(t) = tenant {
        req.extensions_mut().insert(t);
    }
    let streaming = req.is_stream();
    if !streaming {
        // Nothing reaches this caller before the end: retry may treat the end as the commit.
        req.extensions_mut().insert(WholeAnswer);
    }
    let include_usage = req
        .body()
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let stream = match state.stack.clone().oneshot(req).await {
        Ok(s) => s,
        Err(e) => return ApiFailure::from(&e).into_response(),
    };
    state.counters.note(stream.meta());
    if let Some(t) = &counted_tenant {
        state
            .counters
            .tenant_call(t, tokio::time::Instant::now(), state.started);
    }
    if streaming {
        return sse::response(stream, include_usage, state.phase.clone());
    }
    match stream.collect().await {
        Ok(c) => axum::Json(normalize(c)).into_response(),
        Err(e) => ApiFailure::from(&e).into_response(),
    }
}

/// Fills the fields OpenAI clients rely on when an upstream left them out.
fn normalize(mut c: ChatCompletion) -> ChatCompletion {
    c.object = "chat.completion".into();
    if c.id.is_empty() {
        c.id = format!("chatcmpl-{:x}", now_secs());
    }
    if c.created == 0 {
        c.created = now_secs();
    }
    c
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(state): State<AppState>) -> Response {
    match state.leaf.models().await {
        Ok(models) => {
            let tiers = state.config.router.tiers.iter().map(|t| {
                json!({
                    "id": format!("{TIER_PREFIX}{}", t.name),
                    "object": "model",
                    "created": 0,
                    "owned_by": "llm-layers",
                })
            });
            let data: Vec<_> = models
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id,
                        "object": "model",
                        "created": m.created.unwrap_or(0),
                        "owned_by": m.id.split('/').next().unwrap_or("openrouter"),
                    })
                })
                .chain(tiers)
                .collect();
            axum::Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => ApiFailure::from(&e).into_response(),
    }
}

/// The status page: a static shell with no data in it, open to all; its script polls
/// `/status.json`, which takes an admin key when keys are on (the page asks for it and keeps
/// it in the tab's session storage, never in a URL, where logs would keep it).
async fn status_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        status::PAGE,
    )
        .into_response()
}

async fn status_json(State(state): State<AppState>) -> Response {
    axum::Json(status::snapshot(
        &state.parts,
        &state.config,
        state.started,
        &state.counters,
    ))
    .into_response()
}

/// Open in every mode (load balancers probe it without a key); says whether the gateway
/// is open.
async fn healthz(State(state): State<AppState>) -> Response {
    let auth = if state.config.keys.is_empty() {
        "open: no gateway keys configured, anyone who reaches this gateway can use it"
    } else {
        "gateway keys required"
    };
    axum::Json(json!({"status": "ok", "auth": auth})).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => ApiFailure::invalid(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled",
        )
        .into_response(),
    }
}

async fn not_found(req: Request<Body>) -> Response {
    ApiFailure::invalid(
        StatusCode::NOT_FOUND,
        "unknown_url",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

async fn method_not_allowed(req: Request<Body>) -> Response {
    ApiFailure::invalid(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}
