//! Starting, serving and stopping the gateway: the metrics recorder, the state, shutdown
//! (the routes are `routes.rs`).

use std::sync::Arc;
use std::time::Duration;

use llm_layers_core::ConfigError;
use llm_layers_core::heartbeat::Heartbeat;
use llm_layers_mock::{MockServer, Scenario};
use llm_layers_openrouter::OpenRouter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::routes::router;
use crate::stack::{Parts, Stack, build_leaf, build_stack_reusing, endpoint_stats_of};
use crate::{keys, status};
use llm_layers_latency::LatencyStore;

/// Why the gateway could not start or serve.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration names a mock preset that does not exist.
    UnknownPreset(String),
    /// The stack refused its configuration.
    Config(ConfigError),
    /// The metrics recorder could not be installed (there is one per process).
    Metrics(String),
    /// The listener's certificate or key cannot be used (the message names the file, never
    /// its contents).
    Tls(String),
    /// A socket failed: `what` says which (the listen address, the mock upstream, serving).
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl StartError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
        let what = what.into();
        move |source| StartError::Io { what, source }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::UnknownPreset(p) => write!(f, "unknown mock preset {p:?}"),
            StartError::Config(e) => e.fmt(f),
            StartError::Metrics(m) => write!(f, "cannot install the metrics recorder: {m}"),
            StartError::Tls(m) => write!(f, "TLS: {m}"),
            StartError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

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

/// What every handler shares: the configuration in force and what was built from it, behind
/// one `Arc` (axum clones the state for every request, and a clone of the fields themselves
/// would clone the whole boxed stack), swapped whole by a reload. A call takes the one in
/// force when it starts and keeps it to its end.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Live>);

pub(crate) struct Live {
    current: std::sync::RwLock<Arc<AppInner>>,
    /// The gateway keys in force, read by `KeyAuth` on every request.
    keys: keys::SharedKeys,
    /// Beaten by every call, so that the layers' timers do not each wake the timer driver.
    heartbeat: Heartbeat,
}

impl AppState {
    fn new(inner: AppInner) -> AppState {
        let keys = keys::SharedKeys::new(inner.config.keys.clone());
        AppState(Arc::new(Live {
            current: std::sync::RwLock::new(Arc::new(inner)),
            keys,
            heartbeat: Heartbeat::spawn(Heartbeat::DEFAULT_PERIOD),
        }))
    }

    /// The gateway keys in force (kept across reloads).
    pub(crate) fn keys(&self) -> &keys::SharedKeys {
        &self.0.keys
    }

    /// A call starts (see [`Heartbeat`]).
    pub(crate) fn beat(&self) {
        self.0.heartbeat.beat();
    }

    /// The configuration in force and its stack.
    pub(crate) fn load(&self) -> Arc<AppInner> {
        llm_layers_core::sync::read(&self.0.current).clone()
    }

    fn replace(&self, inner: AppInner) {
        self.0.keys.store(inner.config.keys.clone());
        *llm_layers_core::sync::write(&self.0.current) = Arc::new(inner);
    }
}

pub(crate) struct AppInner {
    pub(crate) stack: Stack,
    pub(crate) leaf: OpenRouter,
    /// Every upstream's leaf by name, for the health of their API keys.
    pub(crate) upstreams: Vec<(String, OpenRouter)>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) config: Arc<Config>,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) parts: Parts,
    pub(crate) started: tokio::time::Instant,
    pub(crate) counters: Arc<status::Counters>,
    /// The access log, when `--log-format json`.
    pub(crate) access: Option<Arc<crate::access::AccessLog>>,
    /// The upstream's prices: what each call cost.
    pub(crate) prices: Arc<crate::prices::PriceBook>,
    /// What budgeted tenants spent (kept across reloads).
    pub(crate) spend: Arc<crate::budget::Spend>,
}

/// Installs the process-wide Prometheus recorder, with the GenAI histograms' buckets, and
/// spawns its upkeep; returns the handle that `GET /metrics` renders. Call it once per
/// process, from inside a Tokio runtime.
pub fn install_metrics() -> Result<PrometheusHandle, StartError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in llm_layers_latency::names::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
            .map_err(|e| StartError::Metrics(e.to_string()))?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    // Shown from the start (the dashboard's spend row reads it before any refusal).
    metrics::counter!("llm_budget_refused_total").absolute(0);
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
pub async fn serve(config: Config) -> Result<(), StartError> {
    serve_reloading(config, None::<fn() -> Result<Config, String>>).await
}

/// [`serve`], and on `SIGHUP` (Unix) reads the configuration again with `reread` (the
/// binary: the same flags, the environment and files as they are now) and takes it for new
/// calls when it is valid; an invalid one is refused and logged, and the old keeps serving.
pub async fn serve_reloading(
    config: Config,
    reread: Option<impl Fn() -> Result<Config, String> + Send + Sync + 'static>,
) -> Result<(), StartError> {
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
    let gateway = Arc::new(gateway);
    #[cfg(unix)]
    let reloader = reread.map(|reread| {
        let gw = gateway.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                let outcome = match reread() {
                    Ok(new) => gw.reload(new).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => println!("SIGHUP: configuration reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: configuration refused, the old one keeps serving");
                        eprintln!("SIGHUP: configuration refused ({e}); the old one keeps serving");
                    }
                }
            }
        })
    });
    #[cfg(not(unix))]
    let _ = reread;
    shutdown_signal().await;
    println!("shutting down: draining in-flight streams");
    #[cfg(unix)]
    if let Some(r) = reloader {
        r.abort();
        let _ = r.await;
    }
    let gateway = Arc::try_unwrap(gateway).map_err(|_| StartError::Io {
        what: "shutting down".into(),
        source: std::io::Error::other("the gateway is still shared"),
    })?;
    gateway.shutdown().await.map_err(StartError::io("serving"))
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
    state: AppState,
    /// The upstream's URL and key when no upstream comes from the config file (the mock's,
    /// when there is no key): a reload without a key keeps the mock it started.
    upstream: (String, String),
    /// The listener's TLS acceptor in force.
    tls: crate::tls::TlsSlot,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addr", &self.addr)
            .field("mock", &self.mock.is_some())
            .finish_non_exhaustive()
    }
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

    /// Takes `config` for every call from now on: keys, limits, timeouts, routing,
    /// upstreams; a call in flight finishes on the configuration it started with. What was
    /// measured (the latency store) carries over; breakers and learned orders start afresh
    /// from it; the listener's certificate and key are read again (the next connection gets
    /// the new ones). The listen address, connection limits and body limits stay as started.
    ///
    /// # Errors
    ///
    /// The new configuration's stack cannot be built (a key's variable is not set, a layer
    /// refuses a value): nothing changes.
    pub async fn reload(&self, config: Config) -> Result<(), StartError> {
        let (base_url, key) = match &config.api_key {
            Some(k) => (config.base_url.clone(), k.clone()),
            None => self.upstream.clone(),
        };
        let old = self.state.load();
        let tls = crate::tls::acceptor(&config)?;
        let built = build(&config, &base_url, &key, Some(old.parts.store.clone())).await?;
        let access = if (&config.log_format, &config.access_log)
            == (&old.config.log_format, &old.config.access_log)
        {
            old.access.clone()
        } else {
            access_log(&config)?
        };
        *llm_layers_core::sync::write(&self.tls) = tls;
        self.state.replace(AppInner {
            stack: built.stack,
            leaf: built.leaf,
            upstreams: built.upstreams,
            metrics: old.metrics.clone(),
            config: Arc::new(config),
            phase: old.phase.clone(),
            parts: built.parts,
            started: old.started,
            counters: old.counters.clone(),
            access,
            prices: built.prices,
            spend: old.spend.clone(),
        });
        tracing::info!(
            "configuration reloaded: new calls use it, calls in flight finish on the old"
        );
        Ok(())
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

/// The access log `config` asks for, if any.
fn access_log(config: &Config) -> Result<Option<Arc<crate::access::AccessLog>>, StartError> {
    match config.log_format {
        crate::LogFormat::Json => crate::access::AccessLog::open(config.access_log.as_deref())
            .map(Some)
            .map_err(StartError::io("cannot open the access log")),
        _ => Ok(None),
    }
}

/// Starts the gateway (and the mock upstream when there is no key). `metrics` is the
/// Prometheus handle to render on `/metrics`, if a recorder was installed.
pub async fn start(
    config: Config,
    metrics: Option<PrometheusHandle>,
) -> Result<Gateway, StartError> {
    let (mock, base_url, key) = match &config.api_key {
        Some(k) => (None, config.base_url.clone(), k.clone()),
        None => {
            let scenario = Scenario::preset(&config.mock_preset)
                .ok_or_else(|| StartError::UnknownPreset(config.mock_preset.clone()))?
                .with_time_scale(config.mock_time_scale);
            let server = MockServer::start(scenario)
                .await
                .map_err(StartError::io("cannot start the mock upstream"))?;
            let url = server.base_url().to_owned();
            (Some(server), url, "sk-or-v1-mock".to_owned())
        }
    };
    let built = build(&config, &base_url, &key, None).await?;
    let access = access_log(&config)?;
    let tls: crate::tls::TlsSlot = Arc::new(std::sync::RwLock::new(crate::tls::acceptor(&config)?));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(StartError::io(format!(
            "cannot listen on {}",
            config.listen
        )))?;
    let addr = listener
        .local_addr()
        .map_err(StartError::io("cannot read the listen address"))?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let grace = config.shutdown_grace;
    let limits = crate::conn::Limits {
        head_timeout: config.header_read_timeout,
        max_connections: config.max_connections,
        max_streams: config.max_streams_per_connection,
    };
    // Budgets' spend: in Redis when replicas share state, else this process's.
    let ledger: Arc<dyn llm_layers_core::ledger::Ledger> = match &built.parts.shared {
        Some(s) => Arc::new(llm_layers_redis::RedisLedger::new(
            &s.redis,
            config.replicas,
        )),
        None => Arc::new(llm_layers_core::ledger::MemoryLedger::default()),
    };
    let state = AppState::new(AppInner {
        stack: built.stack,
        leaf: built.leaf,
        upstreams: built.upstreams,
        metrics,
        config: Arc::new(config),
        phase: phase_rx.clone(),
        parts: built.parts,
        started: tokio::time::Instant::now(),
        counters: Arc::default(),
        access,
        prices: built.prices,
        spend: Arc::new(crate::budget::Spend::new(ledger)),
    });
    let app = router(state.clone());
    let mut draining = phase_rx;
    let serving_tls = tls.clone();
    let server = tokio::spawn(async move {
        crate::conn::serve(listener, app, limits, serving_tls, async move {
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
        state,
        upstream: (base_url, key),
        tls,
    })
}

/// What a configuration builds: the stack, the leaf, every upstream's leaf, the parts the
/// status page reads.
struct Built {
    stack: Stack,
    leaf: OpenRouter,
    upstreams: Vec<(String, OpenRouter)>,
    parts: Parts,
    prices: Arc<crate::prices::PriceBook>,
}

/// Builds the stack of `config` over its upstreams (or the one at `base_url` with `key`),
/// measuring into `store` when given (a reload keeps what was measured).
async fn build(
    config: &Config,
    base_url: &str,
    key: &str,
    store: Option<LatencyStore>,
) -> Result<Built, StartError> {
    // With upstreams from the config file, the first is the primary and the others race it
    // for the models they list; without, one upstream from the environment (or the mock).
    let leaves: Vec<(String, llm_layers_openrouter::OpenRouter, Vec<String>)> = config
        .upstreams
        .iter()
        .map(|u| {
            u.leaf(
                &|k| std::env::var(k).ok(),
                config.connect_timeout,
                config.default_max_tokens,
            )
            .map(|l| (u.name.clone(), l, u.race.clone()))
        })
        .collect::<Result<_, _>>()?;
    let leaf = match leaves.first() {
        Some((_, primary, _)) => primary.clone(),
        None => build_leaf(config, base_url, key)?,
    };
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
    let (stack, parts) = if leaves.is_empty() {
        build_stack_reusing(
            config,
            leaf.clone(),
            catalog,
            Some(endpoint_stats_of(&leaf)),
            store,
        )?
    } else {
        let raced = crate::upstreams::leaf_for(&leaves)?;
        build_stack_reusing(
            config,
            raced,
            catalog,
            Some(endpoint_stats_of(&leaf)),
            store,
        )?
    };
    // A replica joining a fleet starts from what the fleet measured (one round, within
    // the store's budget: a Redis that is down only means starting cold).
    if let Some(sh) = &parts.shared {
        match sh.latency.sync().await {
            Ok(keys) => tracing::info!(keys, "latency profiles merged from the fleet"),
            Err(e) => tracing::warn!(error = %e, "shared store unreachable at start: local state"),
        }
    }
    // `--stack leaf`: no layer at all, for measuring what the layers cost.
    let stack: Stack = if config.leaf_only {
        tracing::warn!("--stack leaf: every call goes straight to the leaf, no layer at all");
        tower::util::BoxCloneSyncService::new(leaf.clone())
    } else {
        stack
    };
    let upstreams = if leaves.is_empty() {
        vec![("openrouter".to_owned(), leaf.clone())]
    } else {
        leaves
            .iter()
            .map(|(n, l, _)| (n.clone(), l.clone()))
            .collect()
    };
    // Prices from the config file, else the first upstream's catalog and its endpoints (a
    // call to another upstream reports its cost, is priced in the config file, or has none).
    let prices = Arc::new(
        crate::prices::PriceBook::over(leaf.clone())
            .with_endpoints(parts.priors.clone())
            .with_configured(config.prices.clone()),
    );
    Ok(Built {
        stack,
        leaf,
        upstreams,
        parts,
        prices,
    })
}
