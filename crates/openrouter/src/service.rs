//! [`OpenRouter`]: the leaf service.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use llm_layers_core::decode::SseChatDecoder;
use llm_layers_core::endpoints::{EndpointStats, ModelEndpoints};
use llm_layers_core::sse::SseParser;
use llm_layers_core::{
    ApiError, ChatCompletion, ChatRequest, ChatStream, ErrorKind, LlmError, ProtocolKind,
    ResponseMeta, parse_retry_after,
};
use tokio::time::Instant;

use std::collections::HashMap;

use crate::builder::Builder;
use crate::catalog::{Catalog, ModelInfo, ProviderInfo};
use crate::error::from_client;
use crate::future::ResponseFuture;
use crate::keys::KeyRing;

pub(crate) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The most of an error body that is read (64 KiB).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// OpenRouter's attribution headers: the app's site and its name.
const HTTP_REFERER: http::HeaderName = http::HeaderName::from_static("http-referer");
const OPENROUTER_TITLE: http::HeaderName = http::HeaderName::from_static("x-openrouter-title");

/// The OpenRouter chat completions service. Cheap to clone: every clone shares one
/// connection pool, one configuration and one catalog cache.
///
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct OpenRouter {
    shared: Arc<Shared>,
}

/// What an upstream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// OpenRouter: provider routing (`provider`, `models`, `transforms` ...) and its
    /// attribution headers are sent (default).
    #[default]
    OpenRouter,
    /// Any OpenAI-compatible endpoint (OpenAI, a provider's own API, vLLM): nothing only
    /// OpenRouter understands is sent ([`OPENROUTER_ONLY_FIELDS`](llm_layers_core::OPENROUTER_ONLY_FIELDS),
    /// the attribution headers), model ids go through the builder's `model_map` and lose an
    /// OpenRouter variant suffix. Errors in OpenAI's, Anthropic's and vLLM's shapes are read
    /// as OpenRouter's are.
    OpenAiCompatible,
}

pub(crate) struct Shared {
    pub(crate) client: HttpClient,
    pub(crate) chat_url: Uri,
    pub(crate) models_url: Uri,
    pub(crate) providers_url: Uri,
    pub(crate) base_url: String,
    pub(crate) keys: KeyRing,
    /// Connect (TCP, DNS, TLS) failures in a row, with no answer from the upstream since:
    /// this process's egress, not the upstream's health.
    pub(crate) egress_failures: std::sync::atomic::AtomicU32,
    pub(crate) dialect: Dialect,
    pub(crate) model_map: HashMap<String, String>,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) title: Option<HeaderValue>,
    pub(crate) default_max_tokens: Option<u32>,
    pub(crate) stream_upstream: bool,
    pub(crate) max_event_size: usize,
    pub(crate) max_body_size: usize,
    pub(crate) validate_models: bool,
    pub(crate) catalog: Catalog,
    pub(crate) request_headers: Option<crate::builder::RequestHeaders>,
}

impl fmt::Debug for OpenRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRouter")
            .field("base_url", &self.shared.base_url)
            .field("api_keys", &self.shared.keys.ids())
            .field("dialect", &self.shared.dialect)
            .field("stream_upstream", &self.shared.stream_upstream)
            .field("default_max_tokens", &self.shared.default_max_tokens)
            .finish_non_exhaustive()
    }
}

impl OpenRouter {
    /// A builder with the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> OpenRouter {
        OpenRouter { shared }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The model catalog (`GET /models`), cached for the configured TTL; concurrent callers
    /// share one fetch.
    pub async fn models(&self) -> Result<Arc<Vec<ModelInfo>>, LlmError> {
        let shared = self.shared.clone();
        self.shared
            .catalog
            .models(|| async move { get_data(&shared, &shared.models_url).await })
            .await
    }

    /// The provider list (`GET /providers`), cached like [`models`](Self::models).
    pub async fn providers(&self) -> Result<Arc<Vec<ProviderInfo>>, LlmError> {
        let shared = self.shared.clone();
        self.shared
            .catalog
            .providers(|| async move { get_data(&shared, &shared.providers_url).await })
            .await
    }

    /// The per-endpoint stats OpenRouter publishes for `model`
    /// (`GET /models/{author}/{slug}/endpoints`: each provider's TTFT and throughput
    /// percentiles over 30 minutes and its uptime), not cached: a
    /// `llm_layers_latency::PriorFeed` calls it in the background and keeps the result. A
    /// variant suffix (`:nitro`) is dropped; a model id that is not `author/slug` is a bad
    /// request. Answers within 10 s or fails with a timeout.
    ///
    /// # Errors
    ///
    /// The upstream's error, a timeout, or a [`ProtocolKind::Json`] error for a body that is
    /// not the documented shape.
    pub async fn endpoint_stats(&self, model: &str) -> Result<Vec<EndpointStats>, LlmError> {
        let id = model.split(':').next().unwrap_or(model);
        let valid = id.split('/').count() == 2
            && id.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            });
        if !valid {
            return Err(LlmError::bad_request(format!(
                "`{model}` is not an `author/slug` model id"
            )));
        }
        let url: Uri = format!("{}/{id}/endpoints", self.shared.models_url)
            .parse()
            .map_err(|e| LlmError::bad_request("bad endpoints URL").with_source(e))?;
        let fetch = async {
            let parsed: ModelEndpoints = get_json(&self.shared, &url, "endpoints").await?;
            Ok(parsed.data.endpoints)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), fetch).await {
            Ok(r) => r,
            Err(_) => Err(LlmError::timeout(llm_layers_core::TimeoutKind::Total)
                .with_message("the endpoint stats did not come in time")),
        }
    }

    /// The routing slug (`"openai"`) of a provider display name (`"OpenAI"`), from the
    /// provider list; `None` if it is not listed.
    pub async fn provider_slug(&self, display_name: &str) -> Result<Option<String>, LlmError> {
        let providers = self.providers().await?;
        Ok(providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(display_name))
            .map(|p| p.slug.clone()))
    }

    /// A health probe that costs no tokens: `GET /models` must answer 2xx.
    pub async fn health(&self) -> Result<(), LlmError> {
        let req = self.shared.get(Method::GET, &self.shared.models_url)?;
        let resp = self.shared.client.request(req).await.map_err(from_client)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let (parts, body) = resp.into_parts();
            Err(read_error(parts, body).await)
        }
    }

    /// Each API key's state, by id (never its text): whether it serves, or why not.
    ///
    /// ```
    /// use llm_layers_openrouter::{KeyState, OpenRouter};
    /// let leaf = OpenRouter::builder().api_keys([("main", "sk-or-1"), ("backup", "sk-or-2")]).build()?;
    /// let health = leaf.key_health();
    /// assert_eq!(health.len(), 2);
    /// assert!(health.iter().all(|k| k.state == KeyState::Ok));
    /// # Ok::<(), llm_layers_core::ConfigError>(())
    /// ```
    pub fn key_health(&self) -> Vec<crate::KeyHealth> {
        self.shared.keys.health(Instant::now())
    }

    /// Connect failures (TCP, DNS, TLS) of calls in a row with no answer from the upstream
    /// since: above a few, this process cannot reach its upstream (its egress, its DNS, its
    /// certificates), which says more about this replica than about any model.
    pub fn egress_failures(&self) -> u32 {
        self.shared.egress_failures.load(Ordering::Relaxed)
    }

    /// Opens up to `n` pooled connections ahead of traffic (concurrent `HEAD /models`
    /// requests; with HTTP/2 one connection carries them all). Returns how many answered.
    pub async fn warm_up(&self, n: usize) -> Result<usize, LlmError> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let shared = self.shared.clone();
            set.spawn(async move {
                let req = shared.get(Method::HEAD, &shared.models_url)?;
                let resp = shared.client.request(req).await.map_err(from_client)?;
                // Read the (empty) body to the end so the connection returns to the pool.
                let _ = resp.into_body().collect().await;
                Ok::<(), LlmError>(())
            });
        }
        let mut ok = 0;
        let mut last_err = None;
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => {}
            }
        }
        match (ok, last_err) {
            (0, Some(e)) if n > 0 => Err(e),
            _ => Ok(ok),
        }
    }
}

impl tower_service::Service<ChatRequest> for OpenRouter {
    type Response = ChatStream;
    type Error = LlmError;
    type Future = ResponseFuture;

    /// Always ready: the pool does not signal backpressure through readiness.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChatRequest) -> ResponseFuture {
        ResponseFuture::new(Box::pin(send(self.shared.clone(), req)))
    }
}

impl Shared {
    /// A usable key for catalog reads (the first if none is).
    fn any_key(&self) -> usize {
        self.keys.pick(Instant::now(), &[]).unwrap_or(0)
    }

    fn get(&self, method: Method, url: &Uri) -> Result<http::Request<Full<Bytes>>, LlmError> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(url.clone())
            .header(AUTHORIZATION, self.keys.auth(self.any_key()).clone())
            .header(ACCEPT, "application/json");
        if let Some(r) = &self.referer {
            b = b.header(HTTP_REFERER, r.clone());
        }
        if let Some(t) = &self.title {
            b = b.header(OPENROUTER_TITLE, t.clone());
        }
        b.body(Full::new(Bytes::new()))
            .map_err(|e| LlmError::bad_request("could not build the request").with_source(e))
    }

    async fn check_model(&self, this: &OpenRouter, model: &str) -> Result<(), LlmError> {
        if model.is_empty() {
            return Ok(());
        }
        // A variant suffix (`:nitro`, `:free`) names the same model.
        let base = model.split(':').next().unwrap_or(model);
        let models = this.models().await?;
        if models.iter().any(|m| m.id == model || m.id == base) {
            Ok(())
        } else {
            Err(LlmError::bad_request(format!(
                "unknown model {model:?}: it is not in the upstream's model list"
            )))
        }
    }
}

async fn send(shared: Arc<Shared>, req: ChatRequest) -> Result<ChatStream, LlmError> {
    if shared.validate_models {
        let this = OpenRouter {
            shared: shared.clone(),
        };
        shared.check_model(&this, req.model()).await?;
    }
    let upstream_stream = req.is_stream() || shared.stream_upstream;
    let stream = upstream_stream.then_some(true);
    let openrouter = shared.dialect == Dialect::OpenRouter;
    let body = match shared.dialect {
        Dialect::OpenRouter => req.body().to_json_with(stream, shared.default_max_tokens),
        Dialect::OpenAiCompatible => {
            let model = req.model();
            let base = llm_layers_core::MODEL_VARIANTS
                .iter()
                .find_map(|v| model.strip_suffix(v))
                .unwrap_or(model);
            let mapped = shared
                .model_map
                .get(model)
                .or_else(|| shared.model_map.get(base))
                .map_or(base, String::as_str);
            req.body()
                .to_openai_json(stream, shared.default_max_tokens, mapped)
        }
    }
    .map_err(|e| LlmError::bad_request("the request could not be serialized").with_source(e))?;
    let body = Bytes::from(body);
    let extra = shared.request_headers.as_ref().map(|f| {
        let mut h = HeaderMap::new();
        f(&req, &mut h);
        for name in [AUTHORIZATION, CONTENT_TYPE, ACCEPT] {
            h.remove(name);
        }
        h
    });
    let span = tracing::Span::current();
    if !span.is_disabled() {
        if let Some(host) = shared.chat_url.host() {
            span.record("server.address", host);
        }
    }
    let mut tried: Vec<usize> = Vec::new();
    let (key, started, parts, body) = loop {
        let key = shared.keys.pick(Instant::now(), &tried)?;
        if !span.is_disabled() {
            // The key's id (its name, or `…` and its last four characters), never the key.
            span.record("llm_layers.upstream_key", &**shared.keys.id(key));
        }
        // Built in place: `http::request::Builder` moves the whole request head through
        // every `.header(..)` and parses each name given as a `&str`.
        let mut request = http::Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = shared.chat_url.clone();
        let h = request.headers_mut();
        h.insert(AUTHORIZATION, shared.keys.auth(key).clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            ACCEPT,
            HeaderValue::from_static(if upstream_stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        if openrouter {
            if let Some(r) = &shared.referer {
                h.insert(HTTP_REFERER, r.clone());
            }
            if let Some(t) = &shared.title {
                h.insert(OPENROUTER_TITLE, t.clone());
            }
        }
        if let Some(extra) = &extra {
            h.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let started = Instant::now();
        let resp = match shared.client.request(request).await {
            Ok(r) => r,
            Err(e) => {
                let e = from_client(e);
                if e.is_connect() {
                    shared.egress_failures.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        if shared.egress_failures.load(Ordering::Relaxed) != 0 {
            shared.egress_failures.store(0, Ordering::Relaxed);
        }
        let (parts, resp_body) = resp.into_parts();
        if parts.status.is_success() {
            shared.keys.succeeded(key);
            break (key, started, parts, resp_body);
        }
        let err = read_error(parts, resp_body).await;
        // A key-level refusal: the next key may serve the call at once.
        if shared.keys.learn(key, &err, Instant::now()) && tried.len() + 1 < shared.keys.len() {
            tried.push(key);
            continue;
        }
        return Err(err);
    };
    let mut meta = ResponseMeta::default();
    meta.extensions
        .insert(llm_layers_core::KeyId(shared.keys.id(key).clone()));
    meta.attempt = 1;
    meta.attempts = 1;
    meta.timings.started = Some(started);
    meta.generation_id = parts
        .headers
        .get("x-generation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/event-stream") {
        let decoder = SseChatDecoder::with_parser(
            body,
            SseParser::with_max_event_size(shared.max_event_size),
        );
        return ChatStream::commit(decoder, meta)
            .first_byte_from(SseChatDecoder::<Incoming>::first_byte)
            .await;
    }
    if content_type.contains("json") {
        let bytes = Limited::new(body, shared.max_body_size)
            .collect()
            .await
            .map_err(|e| body_error(e, shared.max_body_size))?
            .to_bytes();
        meta.timings.first_byte = Some(Instant::now());
        if let Some(api) = ApiError::from_body(&bytes) {
            // A 200 carrying an error is a failure, not an answer.
            let status = api.status_code().unwrap_or(StatusCode::BAD_GATEWAY);
            return Err(LlmError::status(status, Some(api)));
        }
        let completion: ChatCompletion = serde_json::from_slice(&bytes).map_err(|e| {
            LlmError::protocol(ProtocolKind::Json, format!("bad completion JSON: {e}"))
        })?;
        let mut stream = ChatStream::from_completion(completion)?;
        let generation_id = meta.generation_id.take();
        let m = stream.meta_mut();
        m.attempt = 1;
        m.attempts = 1;
        m.timings = meta.timings;
        m.timings.first_token = m.timings.first_byte;
        if generation_id.is_some() {
            m.generation_id = generation_id;
        }
        return Ok(stream);
    }
    Err(LlmError::protocol(
        ProtocolKind::ContentType,
        format!("unexpected content type {content_type:?} on a 2xx response"),
    ))
}

fn body_error(e: Box<dyn std::error::Error + Send + Sync>, limit: usize) -> LlmError {
    if e.is::<http_body_util::LengthLimitError>() {
        LlmError::protocol(
            ProtocolKind::Oversize,
            format!("response body larger than {limit} bytes"),
        )
    } else {
        LlmError::new(ErrorKind::Truncated)
            .with_message("connection broken while reading the body")
            .with_source(e)
    }
}

/// Turns a non-2xx response into an error: at most 64 KiB of the body is read and parsed as
/// the OpenRouter error shape; `Retry-After` is honoured as seconds or an HTTP date; a 429 or
/// 402 with `X-RateLimit-Limit` and no provider named is marked key-limited.
pub(crate) async fn read_error(parts: http::response::Parts, body: Incoming) -> LlmError {
    let retry_after = parts
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let api = match Limited::new(body, MAX_ERROR_BODY).collect().await {
        Ok(c) => ApiError::from_body(&c.to_bytes()),
        Err(_) => None,
    };
    // OpenRouter's own limits on the key carry `X-RateLimit-*` headers (a provider's 429
    // does not): those are about the caller's key, not a busy provider.
    let key_limited = matches!(parts.status.as_u16(), 402 | 429)
        && parts.headers.contains_key("x-ratelimit-limit")
        && api.as_ref().is_none_or(|a| a.provider_name.is_none());
    let mut err = LlmError::status(parts.status, api);
    if let Some(r) = retry_after {
        err = err.with_retry_after(r);
    }
    if key_limited {
        err = err.with_key_limited();
    }
    err
}

/// `GET` a `{"data": [...]}` endpoint.
async fn get_data<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    url: &Uri,
) -> Result<Vec<T>, LlmError> {
    #[derive(serde::Deserialize)]
    struct Data<T> {
        data: Vec<T>,
    }
    let data: Data<T> = get_json(shared, url, "catalog").await?;
    Ok(data.data)
}

/// `GET` a JSON document (`what` names it in a parse error).
async fn get_json<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    url: &Uri,
    what: &str,
) -> Result<T, LlmError> {
    let req = shared.get(Method::GET, url)?;
    let resp = shared.client.request(req).await.map_err(from_client)?;
    let (parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        return Err(read_error(parts, body).await);
    }
    let bytes = Limited::new(body, shared.max_body_size)
        .collect()
        .await
        .map_err(|e| body_error(e, shared.max_body_size))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| LlmError::protocol(ProtocolKind::Json, format!("bad {what} JSON: {e}")))
}
