//! Gateway configuration from flags and environment, with defaults printed at start.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

mod cli;
pub(crate) mod file_error;
pub use cli::CliExit;

/// Everything the gateway can be told. Its `Debug` never shows the API key.
#[derive(Clone)]
pub struct Config {
    /// Where to listen (`--listen`, `LISTEN_ADDR`; default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `OPENROUTER_API_KEY`; none starts the built-in mock upstream.
    pub api_key: Option<String>,
    /// `OPENROUTER_BASE_URL` (default `https://openrouter.ai/api/v1`).
    pub base_url: String,
    /// The mock's preset when there is no key (`--mock-preset`, `MOCK_PRESET`; `fat_tail`).
    pub mock_preset: String,
    /// The mock's time scale (`--mock-time-scale`, `MOCK_TIME_SCALE`; 1.0 = real time).
    pub mock_time_scale: f64,
    /// Largest request body (`--max-body-bytes`; 4 MiB): larger gets 413.
    pub max_body_bytes: usize,
    /// Time allowed to read a request body (`--body-read-timeout-ms`; 30 s): then 408.
    pub body_read_timeout: Duration,
    /// Time allowed for a new connection's first bytes and for each HTTP/1.1 request's head
    /// (`--header-read-timeout-ms`; 30 s, hyper's default): then the connection is closed,
    /// so a client that connects and sends nothing, or trickles its headers, holds no socket
    /// for long. hyper counts an HTTP/1.1 keep-alive connection's wait for its next request
    /// in it too, so this is also how long such a connection may sit idle (clients' pools
    /// let theirs go sooner: 5 s in httpx, 4 s in undici).
    ///
    /// It is also every connection's deadline for its first request whatever its protocol
    /// (an HTTP/2 client that sends its preface, or a byte of it, and no request is closed),
    /// and how long an HTTP/2 connection may stay open with no stream in it.
    pub header_read_timeout: Duration,
    /// A PEM certificate chain (`--tls-cert`): with [`tls_key`](Config::tls_key), the
    /// listener serves HTTPS (rustls; HTTP/2 or HTTP/1.1 by ALPN) instead of plain HTTP. Read
    /// again by a reload, so a renewed certificate is served from the next connection on.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of [`tls_cert`](Config::tls_cert) (`--tls-key`).
    pub tls_key: Option<std::path::PathBuf>,
    /// The access log (`--log-format json|off`, `LOG_FORMAT`; off): one JSON line per call
    /// (time, tenant, model, provider, status, how it ended, time to first token, duration,
    /// attempts, tokens; never a prompt or a key), written off the call's path.
    pub log_format: crate::LogFormat,
    /// Where the access log goes (`--access-log FILE`; standard output): appended to.
    pub access_log: Option<std::path::PathBuf>,
    /// Connections open at once (`--max-connections`; 4,096): one more is closed as it is
    /// accepted, before a byte of it is read.
    pub max_connections: usize,
    /// Streams at once on one HTTP/2 connection (`--max-streams-per-connection`; 128), the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` the gateway announces.
    pub max_streams_per_connection: u32,
    /// On SIGINT/SIGTERM, how long in-flight streams may run on before they are cut with an
    /// error event (`--shutdown-grace-ms`; 10 s).
    pub shutdown_grace: Duration,
    /// `max_tokens` added when a request has none (`--default-max-tokens`; none: requests
    /// pass through unchanged).
    pub default_max_tokens: Option<u32>,
    /// Time to first token (`--first-token-timeout-ms`, `FIRST_TOKEN_TIMEOUT_MS`; 30 s; 0 off).
    pub first_token_timeout: Option<Duration>,
    /// Longest gap between chunks once streaming (`--idle-timeout-ms`; 30 s; 0 off). With
    /// `adaptive_idle` it is the cap of the measured limit.
    pub idle_timeout: Option<Duration>,
    /// Derive each stream's idle limit from what its model and provider were measured to
    /// do: 20 × the p99 of the longest gap per stream, at least 2 s, at most `idle_timeout`
    /// (`--adaptive-idle on|off`, `ADAPTIVE_IDLE`; on). A stream that hangs midway is cut
    /// in seconds, and a whole answer retried, instead of waiting 30 s.
    pub adaptive_idle: bool,
    /// Derive each attempt's first-token limit from what was measured: 3 × the p99 first
    /// token of the provider it is aimed at (the model's while that one is not measured), at
    /// least 2 s, at most `first_token_timeout` (`--adaptive-first-token on|off`,
    /// `ADAPTIVE_FIRST_TOKEN`; on). An attempt whose upstream sends headers and then nothing
    /// is cut in seconds and retried, whole answers included.
    pub adaptive_first_token: bool,
    /// Continue a stream that breaks after its first token (`--resume on|off`, `RESUME`;
    /// off): the default for requests without an `x-llm-resume: on|off` header.
    pub resume: bool,
    /// Seed the router with the upstream's published per-endpoint latency
    /// (`GET /models/{id}/endpoints`, fetched in the background per model, every 5 min) as
    /// priors worth a few calls (`--priors on|off`, `PRIORS`; on).
    pub priors: bool,
    /// Share one upstream call between identical concurrent calls that are deterministic
    /// (`temperature: 0`) or marked `x-llm-coalesce: on` (`--coalesce on|off`,
    /// `COALESCE`; off).
    pub coalesce: bool,
    /// Share rate limits, holds, breaker trips and latency profiles with the other replicas
    /// through Redis or Valkey (`--redis-url`, `REDIS_URL`; none: everything stays in this
    /// process). The URL may carry a password: it is never logged nor shown.
    pub redis_url: Option<String>,
    /// How many replicas share the limits (`--replicas`, `LLM_GATEWAY_REPLICAS`; 1): with
    /// Redis unreachable, each replica limits to its share (limit ÷ replicas).
    pub replicas: u64,
    /// Shared limits decided per call (`exact`) or from leases of about 250 ms of this
    /// replica's rate (`lease`, the default: never over-admits, a round trip per lease)
    /// (`--redis-limits exact|lease`).
    pub redis_limits: llm_layers_redis::LimitMode,
    /// `--stack full|leaf` (full): `leaf` serves every call straight from the leaf, no layer
    /// at all (the SSE re-encoding, keys and endpoints stay): for measuring what the layers
    /// cost, never for production.
    pub leaf_only: bool,
    /// Upstreams from the config file (`--config FILE.toml`, `LLM_GATEWAY_CONFIG`): the
    /// first is the primary (it replaces `OPENROUTER_API_KEY`/`OPENROUTER_BASE_URL`), the
    /// others race it for the models they list. Empty: one upstream from the environment.
    pub upstreams: Vec<crate::upstreams::UpstreamConfig>,
    /// Prices by model id, from the config file's `[prices]` (USD per token, as OpenRouter's
    /// `pricing` writes them): they win over the upstream's catalog, and price the models of
    /// an upstream that publishes none.
    pub prices: std::collections::BTreeMap<String, llm_layers_core::price::Price>,
    /// Whole-call limit (`--total-timeout-ms`; 300 s; 0 off).
    pub total_timeout: Option<Duration>,
    /// Retries per call before the first token (`--max-retries`; 4; 0 off; throttles have
    /// their own allowance of 8 on top, unless this is 0).
    pub max_retries: u32,
    /// Connect timeout of the upstream connector (`--connect-timeout-ms`; 5 s).
    pub connect_timeout: Duration,
    /// Hedge when no first token came by this quantile of the TTFT of the provider the call
    /// went to (`--hedge-quantile`, `HEDGE_QUANTILE`; 0.96; 0 turns hedging off). With the
    /// default budget of 5 %, hedging at the p96 spends four fifths of it and leaves a fifth
    /// for the races of exploring calls, so the budget is not spent before the tail is.
    pub hedge_quantile: f64,
    /// Extra requests for the tail (hedges and exploring races) at most this share of
    /// calls over 10 s, or 30 per 10 s when that is more: a hard cap (`--hedge-budget`;
    /// 0.05).
    pub hedge_budget: f64,
    /// A first token slower than this many times the model's recorded median counts as a
    /// provider failure for the breaker (`--slow-call-factor`; 3; at least 1).
    pub slow_call_factor: f64,
    /// Runtime threads (`--worker-threads`, `WORKER_THREADS`): 0 (the default) is one per
    /// core; 1 is a single-threaded runtime, which on a machine shared with other processes
    /// (a sidecar, a small container) costs less CPU per request: no wake-ups between
    /// threads (see the README's load figures).
    pub worker_threads: usize,
    /// Calls in flight at once (`--max-concurrency`; 512); when full, `x-priority: low`
    /// calls are shed with 429 and the others queue, high first.
    pub max_concurrency: usize,
    /// Requests per minute per model (`--requests-per-minute`; 0 = off); over it, calls
    /// wait up to 5 s, then 429 with Retry-After.
    pub requests_per_minute: u64,
    /// Requests per minute per tenant (`x-tenant`; `--tenant-requests-per-minute`; 0 =
    /// off); over it, calls wait up to 5 s, then 429 with Retry-After. Calls without the
    /// header share the tenant `_anonymous`.
    pub tenant_requests_per_minute: u64,
    /// LLM tokens per minute per model (`--tokens-per-minute`; 0 = off), reserved from an
    /// estimate and settled to the real usage.
    pub tokens_per_minute: u64,
    /// Tiers and routing knobs (`--tiers FILE`, `ROUTER_TIERS`: a JSON
    /// [`RouterConfig`](llm_layers_router::RouterConfig)); requests name a tier as
    /// `model: "tier:NAME"`. Learned provider order is on unless `--learned-order off`.
    pub router: llm_layers_router::RouterConfig,
    /// Speak HTTP/2 without negotiation to an `http://` upstream (`--upstream-h2c on`,
    /// `UPSTREAM_H2C`; off): every call shares one connection. Over `https://` (OpenRouter)
    /// HTTP/2 is negotiated by ALPN either way.
    pub upstream_h2c: bool,
    /// Seeds the jitter of retries and breakers, for reproducible runs (none: from the
    /// clock). Tests and benchmarks set it.
    pub seed: Option<u64>,
    /// Gateway keys (`LLM_GATEWAY_KEYS=tenant=key,...` or `--keys FILE.json`); none: the
    /// gateway is open to anyone who reaches it, and says so.
    pub keys: crate::keys::Keys,
    /// Bounds on what a caller sends (lengths and counts of its fields): over one, `400`.
    pub bounds: crate::bounds::Bounds,
    /// `--check-config`: read and check everything, print the configuration in force, and
    /// exit (the binary), instead of serving.
    pub check_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            base_url: llm_layers_openrouter::DEFAULT_BASE_URL.to_owned(),
            mock_preset: "fat_tail".into(),
            mock_time_scale: 1.0,
            max_body_bytes: 4 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            log_format: crate::LogFormat::Off,
            access_log: None,
            max_connections: 4096,
            max_streams_per_connection: 128,
            shutdown_grace: Duration::from_secs(10),
            default_max_tokens: None,
            first_token_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(30)),
            adaptive_idle: true,
            adaptive_first_token: true,
            resume: false,
            priors: true,
            coalesce: false,
            redis_url: None,
            replicas: 1,
            redis_limits: llm_layers_redis::LimitMode::Lease,
            leaf_only: false,
            upstreams: Vec::new(),
            total_timeout: Some(Duration::from_secs(300)),
            max_retries: 4,
            connect_timeout: Duration::from_secs(5),
            hedge_quantile: 0.96,
            hedge_budget: 0.05,
            slow_call_factor: 3.0,
            worker_threads: 0,
            max_concurrency: 512,
            requests_per_minute: 0,
            tenant_requests_per_minute: 0,
            tokens_per_minute: 0,
            router: llm_layers_router::RouterConfig::default(),
            prices: std::collections::BTreeMap::new(),
            upstream_h2c: false,
            seed: None,
            keys: crate::keys::Keys::default(),
            bounds: crate::bounds::Bounds::default(),
            check_only: false,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("mock_preset", &self.mock_preset)
            .field("mock_time_scale", &self.mock_time_scale)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("log_format", &self.log_format)
            .field("access_log", &self.access_log)
            .field("max_connections", &self.max_connections)
            .field(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            )
            .field("shutdown_grace", &self.shutdown_grace)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("adaptive_idle", &self.adaptive_idle)
            .field("adaptive_first_token", &self.adaptive_first_token)
            .field("resume", &self.resume)
            .field("priors", &self.priors)
            .field("coalesce", &self.coalesce)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("replicas", &self.replicas)
            .field("redis_limits", &self.redis_limits)
            .field("leaf_only", &self.leaf_only)
            .field("upstreams", &self.upstreams)
            .field("total_timeout", &self.total_timeout)
            .field("max_retries", &self.max_retries)
            .field("connect_timeout", &self.connect_timeout)
            .field("hedge_quantile", &self.hedge_quantile)
            .field("hedge_budget", &self.hedge_budget)
            .field("slow_call_factor", &self.slow_call_factor)
            .field("worker_threads", &self.worker_threads)
            .field("max_concurrency", &self.max_concurrency)
            .field("requests_per_minute", &self.requests_per_minute)
            .field(
                "tenant_requests_per_minute",
                &self.tenant_requests_per_minute,
            )
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("router", &self.router)
            .field("upstream_h2c", &self.upstream_h2c)
            .field("seed", &self.seed)
            .field("keys", &self.keys)
            .field("bounds", &self.bounds)
            .field("check_only", &self.check_only)
            .finish()
    }
}

impl Config {
    /// Checks everything a start would: every upstream's keys (from the environment through
    /// `env`), every layer's settings (the whole stack is built over a stand-in upstream),
    /// the mock's preset. `Err` says what is wrong, never a secret.
    pub fn check(&self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for u in &self.upstreams {
            u.leaf(&env, self.connect_timeout, self.default_max_tokens)
                .map_err(|e| e.to_string())?;
        }
        crate::tls::acceptor(self).map_err(|e| e.to_string())?;
        if self.api_key.is_none() && llm_layers_mock::Scenario::preset(&self.mock_preset).is_none()
        {
            return Err(format!("unknown mock preset {:?}", self.mock_preset));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        rt.block_on(async {
            crate::stack::build_stack(self, llm_layers_mock::MockChat::new(), None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    /// The Tokio runtime [`worker_threads`](Config::worker_threads) asks for, its timers and
    /// sockets enabled.
    ///
    /// ```
    /// let c = llm_layers_gateway::Config { worker_threads: 1, ..Default::default() };
    /// let rt = c.runtime()?;
    /// assert_eq!(rt.handle().runtime_flavor(), tokio::runtime::RuntimeFlavor::CurrentThread);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut b = match self.worker_threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        if self.worker_threads > 1 {
            b.worker_threads(self.worker_threads);
        }
        b.enable_all().build()
    }

    /// A few lines saying what is in force (never the key).
    pub fn describe(&self) -> String {
        let d =
            |x: Option<Duration>| x.map_or("off".to_owned(), |d| format!("{}ms", d.as_millis()));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "listen              {}{}",
            self.listen,
            match &self.tls_cert {
                Some(c) => format!(" (HTTPS, certificate {})", c.display()),
                None => " (plain HTTP)".to_owned(),
            }
        );
        let _ = writeln!(
            s,
            "gateway keys        {}",
            if self.keys.is_empty() {
                "NONE: OPEN GATEWAY, anyone who reaches it spends the upstream key (set LLM_GATEWAY_KEYS or --keys)".to_owned()
            } else {
                format!(
                    "{} (tenants and priorities come from the key)",
                    self.keys.iter().count()
                )
            }
        );
        let _ = writeln!(
            s,
            "upstream            {}{}",
            if self.api_key.is_some() {
                self.base_url.as_str()
            } else {
                "built-in mock"
            },
            if self.upstream_h2c { " (h2c)" } else { "" }
        );
        let _ = writeln!(
            s,
            "first-token timeout {}{}",
            d(self.first_token_timeout),
            if self.adaptive_first_token && self.first_token_timeout.is_some() {
                " at most; 3x the measured p99 first token of the provider aimed at, 2 s at least"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "idle timeout        {}{}",
            d(self.idle_timeout),
            if self.adaptive_idle && self.idle_timeout.is_some() {
                " at most; 20x the measured p99 longest gap per stream, 2 s at least"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "total timeout       {}", d(self.total_timeout));
        let _ = writeln!(
            s,
            "mid-stream resume   {} by default (x-llm-resume: on|off per request), up to twice per call, from the retry budget",
            if self.resume { "on" } else { "off" }
        );
        let _ = writeln!(
            s,
            "coalescing          {}",
            if self.coalesce {
                "on: identical concurrent temperature-0 (or x-llm-coalesce: on) calls share one upstream call"
            } else {
                "off (--coalesce on)"
            }
        );
        let _ = writeln!(
            s,
            "shared state        {}",
            match &self.redis_url {
                Some(_) => format!(
                    "Redis (limits {:?}, {} replica(s): limit / {} each while Redis is down)",
                    self.redis_limits, self.replicas, self.replicas
                ),
                None =>
                    "none: limits, breakers and latency are this process's (--redis-url)".into(),
            }
        );
        let _ = writeln!(
            s,
            "endpoint priors     {}",
            if self.priors {
                "on: published per-endpoint latency seeds the provider order (worth 5 calls)"
            } else {
                "off"
            }
        );
        let _ = writeln!(
            s,
            "runtime threads     {}",
            match self.worker_threads {
                0 => "one per core (--worker-threads N; 1 = single-threaded)".to_owned(),
                1 => "1 (single-threaded runtime)".to_owned(),
                n => n.to_string(),
            }
        );
        let _ = writeln!(
            s,
            "connect timeout     {}ms",
            self.connect_timeout.as_millis()
        );
        let off = |n: u64| {
            if n == 0 {
                "off".to_owned()
            } else {
                n.to_string()
            }
        };
        let _ = writeln!(
            s,
            "rate limits         {} in flight (low priority shed when full, at most 1024 waiting 30 s); requests/min per model as routed {}; per tenant {}; tokens/min per model {}",
            self.max_concurrency,
            off(self.requests_per_minute),
            off(self.tenant_requests_per_minute),
            off(self.tokens_per_minute)
        );
        let _ = writeln!(
            s,
            "max retries         {} (throttles apart: up to 8 moving to a free provider and 8 waiting for a hold)",
            self.max_retries
        );
        let _ = writeln!(
            s,
            "429 handling        a provider's 429 holds that provider for its Retry-After (1 s default, 60 s cap) and the retry goes to another at once; never a breaker failure; all held: wait the shortest hold within the deadline, else 429 with Retry-After; a 429 on our own key is said, not retried"
        );
        let _ = writeln!(
            s,
            "breaker             5 failures in a row or half of the last 20; slow = {}x median TTFT",
            self.slow_call_factor
        );
        let _ = writeln!(
            s,
            "hedge               {}",
            if self.hedge_quantile > 0.0 {
                format!(
                    "at p{} of recent TTFT (1 s until learned, then no earlier than 3x the median until 40 samples), with exploring races at most {}% of calls over 10 s (or 30 per 10 s when that is more); a failed hedge replaced at once",
                    self.hedge_quantile * 100.0,
                    self.hedge_budget * 100.0
                )
            } else {
                "off".to_owned()
            }
        );
        let tiers: Vec<&str> = self.router.tiers.iter().map(|t| t.name.as_str()).collect();
        let _ = writeln!(
            s,
            "router              tiers: {}; learned provider order {} (explores {}% of calls)",
            if tiers.is_empty() {
                "none (--tiers FILE)".to_owned()
            } else {
                tiers.join(", ")
            },
            if self.router.learned_order.enabled {
                "on"
            } else {
                "off"
            },
            self.router.learned_order.explore * 100.0
        );
        let _ = writeln!(
            s,
            "default max_tokens  {}",
            self.default_max_tokens
                .map_or("none (pass through)".to_owned(), |n| n.to_string())
        );
        let _ = writeln!(s, "max body            {} bytes", self.max_body_bytes);
        let _ = write!(
            s,
            "shutdown grace      {}ms",
            self.shutdown_grace.as_millis()
        );
        s
    }
}
