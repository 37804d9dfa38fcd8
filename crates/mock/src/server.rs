//! [`MockServer`]: a mock OpenRouter HTTP server on an ephemeral loopback port.

use llm_layers_core::sync::lock;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use llm_layers_core::ChatRequest;
use rand::Rng;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::answer::{answer_pieces_as, whole_answer_tokens};
use crate::plan::{self, Outcome};
use crate::scenario::Scenario;
use crate::writer::{AnswerMeta, write_answer};

mod counters;
pub use counters::Counters;

/// A running mock OpenRouter. Its base URL ends in `/api/v1`, like the real one's.
///
/// Serves `POST /api/v1/chat/completions` (SSE and JSON), `GET /api/v1/models`,
/// `GET /api/v1/providers`, `GET /api/v1/models/{author}/{slug}/endpoints` (published
/// stats from the scenario, see [`Scenario::endpoint_stats`]), and `HEAD` of them, and
/// `GET /_mock/words` (the words answers are made of, see [`crate::PASSAGE`]),
/// `GET /_mock/counters` (requests, open, cancelled and completed streams, as JSON, for a
/// bench in another process); HTTP/1.1 and h2c (prior knowledge) on the same port.
/// Dropping it stops accepting connections.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
/// use llm_layers_mock::{MockServer, Scenario};
/// let server = MockServer::start(Scenario::healthy().with_time_scale(0.0)).await?;
/// assert!(server.base_url().starts_with("http://127.0.0.1:"));
/// assert_eq!(server.counters().requests(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MockServer {
    addr: SocketAddr,
    base_url: String,
    state: Arc<ServerState>,
    accept: JoinHandle<()>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct ServerState {
    scenario: Scenario,
    counters: Arc<Counters>,
    seen: Mutex<HashMap<u64, u64>>,
}

impl MockServer {
    /// Binds `127.0.0.1:0` and serves `scenario`.
    pub async fn start(scenario: Scenario) -> std::io::Result<MockServer> {
        MockServer::bind("127.0.0.1:0".parse().expect("valid address"), scenario).await
    }

    /// Binds `addr` and serves `scenario` (the binary uses this).
    pub async fn bind(addr: SocketAddr, scenario: Scenario) -> std::io::Result<MockServer> {
        scenario
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ServerState {
            scenario,
            counters: Arc::new(Counters::default()),
            seen: Mutex::new(HashMap::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(MockServer {
            addr,
            base_url: format!("http://{addr}/api/v1"),
            state,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT/api/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live counters.
    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    /// The scenario served.
    pub fn scenario(&self) -> &Scenario {
        &self.state.scenario
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<ServerState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors (EMFILE) or memory: the error repeats at once, so retrying
            // at once would spin a core; wait for connections to close (as hyper's and
            // axum's accept loops do).
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.counters.accepted.fetch_add(1, Ordering::SeqCst);
        state.counters.changed.notify_waiters();
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // hyper's default of 200 streams per h2c connection would queue a client that
            // multiplexes thousands of open streams on one connection.
            builder.http2().max_concurrent_streams(MAX_H2_STREAMS);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The most concurrent streams on one h2c connection to the mock.
const MAX_H2_STREAMS: u32 = 100_000;

/// The response body of the mock: fed by a channel, so a writer task can pace it and learn
/// when the client went away.
pub struct MockBody {
    kind: BodyKind,
}

impl std::fmt::Debug for MockBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBody").finish_non_exhaustive()
    }
}

enum BodyKind {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.kind {
            BodyKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut r = Response::new(MockBody {
        kind: BodyKind::Full(Some(body.into())),
    });
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.parse().expect("valid header"),
    );
    r
}

fn error_json(status: StatusCode, message: &str, extra: serde_json::Value) -> Response<MockBody> {
    let mut err = json!({"code": status.as_u16(), "message": message});
    if let (Some(e), serde_json::Value::Object(x)) = (err.as_object_mut(), extra) {
        e.extend(x);
    }
    full(
        status,
        "application/json",
        json!({ "error": err }).to_string(),
    )
}

/// What OpenRouter answers a call for the caller's own input, before any provider: a
/// moderation flag (`403`) or a request the balance cannot cover (`402`).
fn caller_refusal(
    scenario: &Scenario,
    body: &llm_layers_core::ChatBody,
) -> Option<(&'static str, Response<MockBody>)> {
    if let Some(flag) = scenario.moderation_flag.as_deref() {
        let flagged = body.messages.iter().any(|m| match &m.content {
            Some(llm_layers_core::Content::Text(t)) => t.contains(flag),
            Some(llm_layers_core::Content::Parts(ps)) => ps.iter().any(|p| {
                p.get("text")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|t| t.contains(flag))
            }),
            None => false,
        });
        if flagged {
            let r = error_json(
                StatusCode::FORBIDDEN,
                "mock: your input was flagged by moderation",
                json!({"metadata": {"reasons": ["mock"], "flagged_input": flag}}),
            );
            return Some(("moderation_403", r));
        }
    }
    if let Some(affordable) = scenario.affordable_tokens {
        let n = body
            .extra
            .get("n")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1);
        let asked = u64::from(body.max_output_tokens().unwrap_or(0)).saturating_mul(n.max(1));
        if asked > u64::from(affordable) {
            let r = error_json(
                StatusCode::PAYMENT_REQUIRED,
                &format!(
                    "mock: this request requires more credits, or fewer max_tokens. You requested up to {asked} tokens, but can only afford {affordable}."
                ),
                json!({"metadata": {"limit_source": "openrouter_credits"}}),
            );
            return Some(("credits_402", r));
        }
    }
    None
}

/// The error a handler returns to make hyper drop the connection before any response.
#[derive(Debug)]
struct Reset;

impl fmt::Display for Reset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock reset before headers")
    }
}

impl std::error::Error for Reset {}

async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Reset> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    if state.scenario.require_auth {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
        if !ok {
            return Ok(error_json(
                StatusCode::UNAUTHORIZED,
                "No auth credentials found",
                json!({}),
            ));
        }
    }
    let head = method == Method::HEAD;
    if path.ends_with("/models") || path.ends_with("/providers") || path.ends_with("/endpoints") {
        state
            .counters
            .catalog_requests
            .fetch_add(1, Ordering::SeqCst);
    }
    match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/api/v1/models") => {
            let data: Vec<_> = state
                .scenario
                .models
                .iter()
                .map(|id| json!({"id": id, "name": id, "created": 1_700_000_000u64, "context_length": 128_000,
                    "pricing": {"prompt": crate::PRICE.prompt.to_string(),
                                "completion": crate::PRICE.completion.to_string(), "request": "0"}}))
                .collect();
            let body = if head {
                String::new()
            } else {
                json!({ "data": data }).to_string()
            };
            Ok(full(StatusCode::OK, "application/json", body))
        }
        // The counters, for a test or a bench in another process (`llm-layers-mock`).
        (Method::GET, "/_mock/counters") => {
            let c = &state.counters;
            let body = json!({
                "requests": c.requests(),
                "open_streams": c.open_streams(),
                "cancelled_streams": c.cancelled_streams(),
                "billed_usd": c.billed_usd(),
                "completed_streams": c.completed_streams(),
                "accepted_connections": c.accepted_connections(),
                "requests_to": state.scenario.providers.iter()
                    .map(|p| (p.slug.clone(), json!(c.requests_to(&p.slug))))
                    .collect::<serde_json::Map<_, _>>(),
            });
            Ok(full(StatusCode::OK, "application/json", body.to_string()))
        }
        // The words answers are made of, for a checker in another process.
        (Method::GET, "/_mock/words") => Ok(full(
            StatusCode::OK,
            "application/json",
            json!(crate::answer::PASSAGE).to_string(),
        )),
        (Method::GET | Method::HEAD, "/api/v1/providers") => {
            let data: Vec<_> = state
                .scenario
                .providers
                .iter()
                .map(|p| json!({"name": p.name, "slug": p.slug}))
                .collect();
            let body = if head {
                String::new()
            } else {
                json!({ "data": data }).to_string()
            };
            Ok(full(StatusCode::OK, "application/json", body))
        }
        (Method::POST, "/api/v1/chat/completions") => chat(state, req).await,
        (Method::GET | Method::HEAD, p)
            if p.starts_with("/api/v1/models/") && p.ends_with("/endpoints") =>
        {
            let id = &p["/api/v1/models/".len()..p.len() - "/endpoints".len()];
            if !state.scenario.models.iter().any(|m| m == id) {
                return Ok(error_json(
                    StatusCode::NOT_FOUND,
                    "No endpoints found for this model",
                    json!({}),
                ));
            }
            let body = if head {
                String::new()
            } else {
                state.scenario.endpoint_stats(id).to_string()
            };
            Ok(full(StatusCode::OK, "application/json", body))
        }
        _ => Ok(error_json(StatusCode::NOT_FOUND, "Not Found", json!({}))),
    }
}

async fn chat(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Reset> {
    state.counters.requests.fetch_add(1, Ordering::SeqCst);
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    *lock(&state.counters.keys).entry(key.clone()).or_default() += 1;
    let bytes = match Limited::new(req.into_body(), 16 * 1024 * 1024)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(Reset),
    };
    {
        let mut bodies = lock(&state.counters.bodies);
        if bodies.len() >= 1024 {
            bodies.pop_front();
        }
        bodies.push_back(bytes.clone());
    }
    if let Some(&code) = state.scenario.key_statuses.get(&key) {
        state.counters.record("", &format!("key_{code}"));
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::UNAUTHORIZED);
        let extra = match code {
            402 => json!({"metadata": {"limit_source": "openrouter_key_limit"}}),
            _ => json!({}),
        };
        let mut r = error_json(status, &format!("mock: this key gets {code}"), extra);
        if code == 429 {
            let h = r.headers_mut();
            h.insert("x-ratelimit-limit", http::HeaderValue::from_static("10"));
            h.insert("x-ratelimit-remaining", http::HeaderValue::from_static("0"));
            h.insert(header::RETRY_AFTER, http::HeaderValue::from_static("30"));
        }
        return Ok(r);
    }
    if state.scenario.strict_openai {
        let unknown = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
            .ok()
            .and_then(|m| {
                m.keys()
                    .find(|k| !crate::scenario::OPENAI_CHAT_FIELDS.contains(&k.as_str()))
                    .cloned()
            });
        if let Some(field) = unknown {
            state.counters.record("", "strict_rejected");
            let body = json!({"error": {
                "message": format!("Unrecognized request argument supplied: {field}"),
                "type": "invalid_request_error", "param": null, "code": null}});
            return Ok(full(
                StatusCode::BAD_REQUEST,
                "application/json",
                body.to_string(),
            ));
        }
    }
    let request: ChatRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            state.counters.record("", "bad_request");
            return Ok(error_json(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
                json!({"metadata": {"error_type": "invalid_request"}}),
            ));
        }
    };
    let body = request.body();
    if let Some(refusal) = caller_refusal(&state.scenario, body) {
        state.counters.record("", refusal.0);
        return Ok(refusal.1);
    }
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    let body_hash = h.finish();
    let repeat = {
        let mut seen = lock(&state.seen);
        if seen.len() > 100_000 {
            seen.clear();
        }
        let n = seen.entry(body_hash).or_default();
        *n += 1;
        *n - 1
    };
    let mut rng = plan::request_rng(state.scenario.seed, body_hash, repeat);
    let plan = plan::draw(&state.scenario, body, &mut rng);
    let provider = plan.provider.map(|i| &state.scenario.providers[i]);
    let slug = provider.map_or("", |p| p.slug.as_str());
    state.counters.record(slug, &plan.label());
    {
        let prompt = body
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(|m| match &m.content {
                Some(llm_layers_core::Content::Text(t)) => Some(t.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let mut routed = lock(&state.counters.routed);
        if routed.len() < 100_000 {
            *routed.entry((prompt, slug.to_owned())).or_default() += 1;
        }
    }
    let provider_name = provider.map(|p| p.name.clone());
    let split_seed: u64 = rng.random();

    let fails = matches!(
        plan.outcome,
        Outcome::NoEndpoints
            | Outcome::Status { .. }
            | Outcome::RefusePrefill
            | Outcome::Reset
            | Outcome::Error200
    );
    let after = state.scenario.scaled(state.scenario.error_after_ms);
    if fails && !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    match plan.outcome {
        Outcome::NoEndpoints => Ok(error_json(
            StatusCode::NOT_FOUND,
            "No endpoints found that can handle the requested parameters.",
            json!({"availability": {"code": "no_endpoints", "retryable": false}}),
        )),
        Outcome::Status { code, retry_after_s } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let error_type = plan::error_type(code);
            let mut r = error_json(
                status,
                &format!("mock provider error {code}"),
                json!({"metadata": {"error_type": error_type, "provider_name": provider_name}}),
            );
            if let Some(s) = retry_after_s {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().expect("digits"));
            }
            Ok(r)
        }
        Outcome::RefusePrefill => Ok(error_json(
            StatusCode::BAD_REQUEST,
            llm_layers_core::continuation::PREFILL_REFUSAL,
            json!({"metadata": {"error_type": "invalid_request", "provider_name": provider_name}}),
        )),
        Outcome::Reset => Err(Reset),
        Outcome::Error200 => Ok(full(
            StatusCode::OK,
            "application/json",
            json!({"error": {"code": 502, "message": "mock provider returned an error",
                "metadata": {"error_type": "provider_unavailable", "provider_name": provider_name}}})
            .to_string(),
        )),
        Outcome::Hang | Outcome::Answer { .. } => {
            let meta = AnswerMeta {
                id: format!("gen-mock-{body_hash:016x}-{repeat}"),
                model: body.model.clone().unwrap_or_else(|| "mock/echo".into()),
                provider: provider_name.unwrap_or_default(),
                created: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                pieces: answer_pieces_as(
                    body,
                    whole_answer_tokens(body, plan.tokens),
                    provider.is_some_and(|p| p.prefill_from_scratch),
                ),
                prompt_tokens: body.approx_prompt_tokens(),
                report_cost: state.scenario.report_cost,
                price: provider.map_or(crate::PRICE, crate::ProviderSpec::price),
            };
            let (tx, rx) = mpsc::channel(16);
            let stream = request.is_stream();
            let scenario = state.scenario.clone();
            let counters = state.counters.clone();
            counters.open();
            tokio::spawn(write_answer(scenario, counters, plan, meta, stream, split_seed, tx));
            let mut r = Response::new(MockBody {
                kind: BodyKind::Channel(rx),
            });
            let ct = if stream { "text/event-stream" } else { "application/json" };
            r.headers_mut()
                .insert(header::CONTENT_TYPE, ct.parse().expect("valid header"));
            Ok(r)
        }
    }
}
