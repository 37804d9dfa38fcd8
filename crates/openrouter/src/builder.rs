//! [`Builder`]: validated configuration of the leaf.

use llm_layers_core::ConfigError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use llm_layers_core::ChatRequest;

use std::collections::HashMap;

use crate::catalog::Catalog;
use crate::keys::{KeyChoice, KeyRing, key_id};
use crate::service::{Dialect, OpenRouter, Shared};

/// The public OpenRouter API base URL.
pub const DEFAULT_BASE_URL: &str = "https://openrouter.ai/api/v1";

/// Builds an [`OpenRouter`] service. Every setter has a sensible default; `build` rejects
/// bad values with a [`ConfigError`](llm_layers_core::ConfigError).
///
/// ```
/// use std::time::Duration;
/// use llm_layers_openrouter::OpenRouter;
/// let leaf = OpenRouter::builder()
///     .api_key("sk-or-v1-example")
///     .base_url("http://127.0.0.1:9/api/v1")
///     .connect_timeout(Duration::from_secs(2))
///     .default_max_tokens(Some(1024))
///     .build()
///     ?;
/// assert!(!format!("{leaf:?}").contains("sk-or-v1-example"));
///
/// let err = OpenRouter::builder().api_key("").build().unwrap_err();
/// assert!(err.to_string().contains("API key"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    keys: Vec<(Option<String>, String)>,
    key_choice: KeyChoice,
    dialect: Dialect,
    model_map: HashMap<String, String>,
    base_url: String,
    referer: Option<String>,
    title: Option<String>,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    http2_prior_knowledge: bool,
    default_max_tokens: Option<u32>,
    stream_upstream: bool,
    max_event_size: usize,
    max_body_size: usize,
    catalog_ttl: Duration,
    validate_models: bool,
    request_headers: Option<RequestHeaders>,
}

/// Adds headers to each upstream request: see [`Builder::request_headers`].
pub type RequestHeaders = Arc<dyn Fn(&ChatRequest, &mut HeaderMap) + Send + Sync>;

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("api_keys", &self.keys.len())
            .field("dialect", &self.dialect)
            .field("base_url", &self.base_url)
            .field("connect_timeout", &self.connect_timeout)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("stream_upstream", &self.stream_upstream)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            keys: Vec::new(),
            key_choice: KeyChoice::default(),
            dialect: Dialect::default(),
            model_map: HashMap::new(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            referer: None,
            title: None,
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            http2_prior_knowledge: false,
            default_max_tokens: Some(4096),
            stream_upstream: true,
            max_event_size: llm_layers_core::sse::DEFAULT_MAX_EVENT_SIZE,
            max_body_size: 32 * 1024 * 1024,
            catalog_ttl: Duration::from_secs(3600),
            validate_models: false,
            request_headers: None,
        }
    }
}

impl Builder {
    /// The API key (`sk-or-v1-…`): the only one, replacing any set before. A key (this or
    /// [`api_keys`](Self::api_keys)) is required.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.keys = vec![(None, key.into())];
        self
    }

    /// Several API keys, each with a name that stands for it in metrics, logs and
    /// [`KeyId`](llm_layers_core::KeyId) (the key text never appears anywhere but in the
    /// request header): calls take them in turn ([`key_choice`](Self::key_choice)); a key
    /// answered with 401/403 is retired until the process restarts (logged as an error),
    /// one answered with 402 (no credit) for 10 minutes, one at its own rate limit (a 429
    /// with `X-RateLimit-*` headers) is held for its `Retry-After`, and the call goes on at
    /// once with the next key. Replaces any key set before.
    pub fn api_keys<N: Into<String>, K: Into<String>>(
        mut self,
        keys: impl IntoIterator<Item = (N, K)>,
    ) -> Self {
        self.keys = keys
            .into_iter()
            .map(|(n, k)| (Some(n.into()), k.into()))
            .collect();
        self
    }

    /// How the next key is chosen (default round-robin).
    pub fn key_choice(mut self, choice: KeyChoice) -> Self {
        self.key_choice = choice;
        self
    }

    /// What the upstream speaks (default [`Dialect::OpenRouter`]).
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Model ids to send instead of the caller's, for an
    /// [`OpenAiCompatible`](Dialect::OpenAiCompatible) upstream
    /// (`"openai/gpt-4o-mini"` → `"gpt-4o-mini"`); ids not in the map go as they are, less
    /// an OpenRouter variant suffix (`:nitro`, `:floor` ...).
    pub fn model_map<A: Into<String>, B: Into<String>>(
        mut self,
        map: impl IntoIterator<Item = (A, B)>,
    ) -> Self {
        self.model_map = map.into_iter().map(|(a, b)| (a.into(), b.into())).collect();
        self
    }

    /// The API base URL, `http` or `https` (default [`DEFAULT_BASE_URL`]). Any
    /// OpenAI-compatible endpoint works.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The `HTTP-Referer` attribution header (your app's URL).
    pub fn http_referer(mut self, url: impl Into<String>) -> Self {
        self.referer = Some(url.into());
        self
    }

    /// The `X-OpenRouter-Title` attribution header (your app's name).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Time allowed for TCP connect (default 10 s). The TLS handshake follows it.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long an idle pooled connection is kept (default 90 s).
    pub fn pool_idle_timeout(mut self, t: Duration) -> Self {
        self.pool_idle_timeout = t;
        self
    }

    /// How many idle connections are kept per host (default 64).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// Speak HTTP/2 without negotiation (h2c on `http://`; default off). Over `https://`,
    /// HTTP/2 is negotiated by ALPN either way.
    ///
    /// Every call then shares one connection once it is pooled; a burst on a cold pool can
    /// open a second one (the pool checks for an idle connection and for a connect in flight
    /// in two steps). Call [`OpenRouter::warm_up`](crate::OpenRouter::warm_up)`(1)` at
    /// start-up to open the connection ahead of traffic.
    pub fn http2_prior_knowledge(mut self, on: bool) -> Self {
        self.http2_prior_knowledge = on;
        self
    }

    /// `max_tokens` to send when the caller set no output limit (default `Some(4096)`;
    /// `None` sends none, and a provider may then reserve the model's whole context).
    pub fn default_max_tokens(mut self, n: Option<u32>) -> Self {
        self.default_max_tokens = n;
        self
    }

    /// Ask the upstream for a stream even when the caller wants one JSON body (default
    /// on): the response then commits at the first token, so first-token timeouts, hedging
    /// and the breaker work for non-streaming callers too.
    pub fn stream_upstream(mut self, on: bool) -> Self {
        self.stream_upstream = on;
        self
    }

    /// The largest SSE event accepted (default 4 MiB).
    pub fn max_event_size(mut self, n: usize) -> Self {
        self.max_event_size = n;
        self
    }

    /// The largest non-streamed JSON body accepted (default 32 MiB).
    pub fn max_body_size(mut self, n: usize) -> Self {
        self.max_body_size = n;
        self
    }

    /// How long the model and provider catalog is cached (default 1 h).
    pub fn catalog_ttl(mut self, t: Duration) -> Self {
        self.catalog_ttl = t;
        self
    }

    /// Reject a model id the catalog does not list, locally, with a
    /// [`BadRequest`](llm_layers_core::ErrorKind::BadRequest) and no upstream call (default
    /// off). The first call fetches the catalog.
    pub fn validate_models(mut self, on: bool) -> Self {
        self.validate_models = on;
        self
    }

    /// Adds headers to every upstream request, computed per request when it is sent (in
    /// the attempt's `tracing` span): a trace context (`traceparent`), a tenant tag. Called
    /// once per request; what it adds cannot replace `authorization`, `content-type` or
    /// `accept`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use llm_layers_openrouter::OpenRouter;
    /// let leaf = OpenRouter::builder()
    ///     .api_key("sk-or-v1-example")
    ///     .request_headers(Arc::new(|_req, headers| {
    ///         headers.insert("x-team", http::HeaderValue::from_static("search"));
    ///     }))
    ///     .build()?;
    /// # let _ = leaf;
    /// # Ok::<(), llm_layers_core::ConfigError>(())
    /// ```
    pub fn request_headers(mut self, f: RequestHeaders) -> Self {
        self.request_headers = Some(f);
        self
    }

    /// Validates the configuration and builds the service with its connection pool.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: an empty API key or one that cannot be a header, a base URL that is not an `http(s)` URL with a host, a zero timeout or size, or a TLS configuration that fails.
    pub fn build(self) -> Result<OpenRouter, ConfigError> {
        if self.keys.is_empty() || self.keys.iter().any(|(_, k)| k.trim().is_empty()) {
            return Err(ConfigError::new("the API key is empty"));
        }
        let mut ring = Vec::with_capacity(self.keys.len());
        for (name, key) in &self.keys {
            let mut auth =
                HeaderValue::try_from(format!("Bearer {}", key.trim())).map_err(|_| {
                    ConfigError::new("the API key has characters not allowed in a header")
                })?;
            auth.set_sensitive(true);
            if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                return Err(ConfigError::new("an API key's name is empty"));
            }
            let id = key_id(name.as_deref(), key.trim());
            if ring
                .iter()
                .any(|(other, _): &(Arc<str>, HeaderValue)| *other == id)
            {
                return Err(ConfigError::new(format!("two API keys are named {id}")));
            }
            ring.push((id, auth));
        }
        let base = self.base_url.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|_| ConfigError::new(format!("base URL {base:?} is not a URL")))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(ConfigError::new(format!(
                    "base URL {base:?} must start with http:// or https://"
                )));
            }
        }
        if uri.authority().is_none() {
            return Err(ConfigError::new(format!("base URL {base:?} has no host")));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new("connect timeout must be above zero"));
        }
        if self.pool_idle_timeout.is_zero() {
            return Err(ConfigError::new("pool idle timeout must be above zero"));
        }
        if self.max_event_size == 0 || self.max_body_size == 0 {
            return Err(ConfigError::new("size limits must be above zero"));
        }
        if self.default_max_tokens == Some(0) {
            return Err(ConfigError::new("default max_tokens must be above zero"));
        }
        if self.catalog_ttl.is_zero() {
            return Err(ConfigError::new("catalog TTL must be above zero"));
        }
        let endpoint = |path: &str| -> Result<Uri, ConfigError> {
            format!("{base}{path}")
                .parse()
                .map_err(|_| ConfigError::new(format!("base URL {base:?} is not a URL")))
        };
        let header = |v: &Option<String>, name: &str| -> Result<Option<HeaderValue>, ConfigError> {
            v.as_deref()
                .map(HeaderValue::try_from)
                .transpose()
                .map_err(|_| ConfigError::new(format!("{name} is not a valid header value")))
        };

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| ConfigError::new(format!("TLS configuration: {e}")))?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(self.http2_prior_knowledge)
            .build(connector);

        Ok(OpenRouter::from_shared(Arc::new(Shared {
            client,
            chat_url: endpoint("/chat/completions")?,
            models_url: endpoint("/models")?,
            providers_url: endpoint("/providers")?,
            base_url: base.to_owned(),
            keys: KeyRing::new(ring, self.key_choice),
            egress_failures: std::sync::atomic::AtomicU32::new(0),
            dialect: self.dialect,
            model_map: self.model_map,
            referer: header(&self.referer, "HTTP-Referer")?,
            title: header(&self.title, "title")?,
            default_max_tokens: self.default_max_tokens,
            stream_upstream: self.stream_upstream,
            max_event_size: self.max_event_size,
            max_body_size: self.max_body_size,
            validate_models: self.validate_models,
            catalog: Catalog::new(self.catalog_ttl),
            request_headers: self.request_headers,
        })))
    }
}
