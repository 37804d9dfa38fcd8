//! The HTTP handlers: the OpenAI-compatible API, the operator's pages, the fallbacks.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderName, StatusCode, header};
use llm_layers_core::{ChatCompletion, ChatRequest, Priority, Tenant, WholeAnswer};
use llm_layers_resume::ResumeChoice;
use llm_layers_router::TIER_PREFIX;
use serde_json::json;
use tower::ServiceExt;
use tracing::Instrument;

use crate::access::CallRecord;
use crate::bounds::Bounds;
use crate::error::ApiFailure;
use crate::server::AppState;
use crate::trace::{self, CallerTrace};
use crate::{keys, names, now_secs, sse};

mod operate;
pub(crate) use operate::{healthz, metrics_text, status_json, status_page};

/// The body as axum's `Bytes` extractor read it, under the route's `DefaultBodyLimit` and
/// `RequestBodyTimeoutLayer`: a refusal becomes the OpenAI-shaped 413, 408 or 400.
fn body_of(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiFailure> {
    let rejection = match body {
        Ok(b) => return Ok(b),
        Err(r) => r,
    };
    let mut chain = std::iter::successors(
        Some(&rejection as &(dyn std::error::Error + 'static)),
        |e| e.source(),
    );
    if chain.any(|e| e.is::<tower_http::timeout::TimeoutError>()) {
        return Err(ApiFailure::invalid(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body was not received in time",
        ));
    }
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Err(ApiFailure::invalid(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body is larger than {limit} bytes"),
        ));
    }
    Err(ApiFailure::invalid(
        StatusCode::BAD_REQUEST,
        "bad_body",
        "the request body could not be read",
    ))
}

/// Who is calling and how urgently, from the gateway key `KeyAuth` found and the
/// `x-tenant` / `x-priority` headers: a key's tenant and priority win unless the key is
/// trusted, and the header may only lower a key's priority.
pub(crate) struct CallerHints {
    key: Option<keys::GatewayKey>,
    tenant: Option<Tenant>,
    priority: Priority,
    /// `x-llm-resume: on|off`, when given.
    resume: Option<ResumeChoice>,
    /// `x-llm-coalesce: on`: this caller's answer may be shared with identical calls.
    coalesce: bool,
    /// The caller's `traceparent` / `tracestate`, when well-formed.
    trace: Option<CallerTrace>,
    /// `x-llm-objective: fastest|cheapest|weighted=W`: what the provider order optimises.
    objective: Option<llm_layers_router::Objective>,
}

/// A header the gateway reads, refused when it is not one of `allowed` (or not text).
fn one_of<'a>(
    parts: &'a Parts,
    name: &HeaderName,
    allowed: &[&str],
) -> Result<Option<&'a str>, ApiFailure> {
    let Some(v) = parts.headers.get(name) else {
        return Ok(None);
    };
    let name = name.as_str();
    match v.to_str() {
        Ok(t) if allowed.contains(&t) => Ok(Some(t)),
        _ => Err(ApiFailure::invalid(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            format!("header '{name}' must be one of {}", allowed.join(", ")),
        )
        .with_param(name)),
    }
}

impl FromRequestParts<AppState> for CallerHints {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let state = state.load();
        let key = parts
            .extensions
            .get::<keys::Caller>()
            .and_then(|c| c.0.clone());
        let trusted = key.as_ref().is_none_or(|k| k.trusted);
        let header_tenant = match parts.headers.get(names::TENANT) {
            None => None,
            Some(v) => {
                let t = v.to_str().map_err(|_| {
                    ApiFailure::invalid(
                        StatusCode::BAD_REQUEST,
                        "invalid_value",
                        "header 'x-tenant' must be visible ASCII",
                    )
                    .with_param("x-tenant")
                })?;
                state.config.bounds.check_tenant(t)?;
                Some(Tenant(Arc::from(t)))
            }
        };
        let tenant = match &key {
            Some(k) if !trusted => Some(Tenant(k.tenant.clone())),
            Some(k) => header_tenant.or_else(|| Some(Tenant(k.tenant.clone()))),
            None => header_tenant,
        };
        let asked = match one_of(parts, &names::PRIORITY, &["low", "normal", "high"])? {
            Some("low") => Some(Priority(0)),
            Some("high") => Some(Priority(2)),
            Some(_) => Some(Priority(1)),
            None => None,
        };
        let priority = match (&key, asked) {
            (Some(k), Some(p)) if !trusted => p.min(k.priority),
            (Some(k), None) => k.priority,
            (_, Some(p)) => p,
            (None, None) => Priority(1),
        };
        let resume = match one_of(parts, &names::RESUME, &["on", "off"])? {
            Some("on") => Some(ResumeChoice::On),
            Some(_) => Some(ResumeChoice::Off),
            None => None,
        };
        let coalesce = one_of(parts, &names::COALESCE, &["on", "off"])? == Some("on");
        let objective = match parts.headers.get(names::OBJECTIVE) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|t| t.parse::<llm_layers_router::Objective>().ok())
                    .ok_or_else(|| {
                        ApiFailure::invalid(
                            StatusCode::BAD_REQUEST,
                            "invalid_value",
                            "header 'x-llm-objective' must be fastest, cheapest or weighted=W \
                             (W a number at least 0)",
                        )
                        .with_param("x-llm-objective")
                    })?,
            ),
        };
        Ok(CallerHints {
            objective,
            key,
            tenant,
            priority,
            resume,
            coalesce,
            trace: CallerTrace::from_headers(&parts.headers),
        })
    }
}

fn parse_request(bytes: &[u8], bounds: &Bounds) -> Result<ChatRequest, ApiFailure> {
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
        )
        .with_param("messages"));
    }
    bounds.check(req.body())?;
    Ok(req)
}

/// The tenant of the gateway key a call came with (what per-key limits key on, whatever
/// tenant a trusted key's caller names).
#[derive(Debug, Clone)]
pub(crate) struct KeyTenant(pub(crate) Arc<str>);

/// `POST /v1/chat/completions`, in its request span (the parent of the stack's spans).
pub(crate) async fn chat(
    state: State<AppState>,
    hints: CallerHints,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = trace::request_span(hints.trace.as_ref());
    if !span.is_disabled() {
        if let Some(t) = &hints.tenant {
            span.record("llm_layers.tenant", &*t.0);
        }
    }
    let r = call(state, hints, body).instrument(span.clone()).await;
    if !span.is_disabled() {
        let status = r.status().as_u16();
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("error.type", status);
            span.record("otel.status_code", "error");
        }
    }
    r
}

async fn call(
    State(state): State<AppState>,
    hints: CallerHints,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.beat();
    let state = state.load();
    let mut record = CallRecord::start(state.access.clone());
    // `KeyAuth` checked the key before the body was read: a caller without one costs nothing.
    let CallerHints {
        key,
        tenant,
        priority,
        resume,
        coalesce,
        trace,
        objective,
    } = hints;
    let bytes = match body_of(body, state.config.max_body_bytes) {
        Ok(b) => b,
        Err(f) => return refused(f, record),
    };
    let parsed = parse_request(&bytes, &state.config.bounds);
    // The body's bytes are a slice of hyper's read buffer for the connection: released
    // before the call waits, hyper reads the connection's next bytes into the same 8 KiB
    // instead of allocating another one for the life of the stream.
    drop(bytes);
    let mut req = match parsed {
        Ok(r) => r,
        Err(f) => return refused(f, record),
    };
    record.request(
        req.body().model.as_deref().unwrap_or_default(),
        req.is_stream(),
        tenant.as_ref().map(|t| t.0.clone()),
    );
    let mut charge = None;
    if let Some(k) = &key {
        if let Err(f) = k.apply(&mut req) {
            return refused(f, record);
        }
        req.extensions_mut().insert(KeyTenant(k.tenant.clone()));
        // A budget is checked before the call is sent, on the capped request.
        if let Some(b) = k.budget {
            match state
                .spend
                .reserve(
                    &k.tenant,
                    b,
                    &req,
                    (&state.prices, &state.config.router.tiers),
                )
                .await
            {
                Ok(c) => charge = Some(c),
                Err(f) => return refused(f, record),
            }
        }
    }
    req.extensions_mut().insert(priority);
    if let Some(choice) = resume {
        req.extensions_mut().insert(choice);
    }
    if coalesce {
        req.extensions_mut().insert(llm_layers_coalesce::Coalesce);
    }
    if let Some(o) = objective {
        req.extensions_mut().insert(o);
    }
    if let Some(t) = trace {
        req.extensions_mut().insert(t);
    }
    let counted_tenant = tenant.as_ref().map(|t| t.0.clone());
    if let Some(t) = tenant {
        req.extensions_mut().insert(t);
    }
    // The cost's metric names the tenant of a gateway key only (the keys file bounds them).
    let key_tenant = key.as_ref().map(|k| k.tenant.clone());
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
    // Counted by every attempt given up before its first token (a budget charges their
    // prompts; the answer says what all its attempts cost).
    let given_up = charge
        .as_ref()
        .map_or_else(llm_layers_core::GivenUp::default, |c| c.given_up());
    req.extensions_mut().insert(given_up.clone());
    record.sent();
    let stream = match state.stack.clone().oneshot(req).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(c) = charge.as_mut() {
                c.nothing();
            }
            return refused(ApiFailure::from(&e), record);
        }
    };
    record.answered(stream.meta());
    if let Some(c) = charge.as_mut() {
        c.answered();
        if stream
            .meta()
            .extensions
            .get::<llm_layers_coalesce::Joined>()
            .is_some()
        {
            c.joined();
        }
    }
    state.counters.note(stream.meta());
    if let Some(t) = &counted_tenant {
        state
            .counters
            .tenant_call(t, tokio::time::Instant::now(), state.started);
    }
    if streaming {
        return sse::response(
            stream,
            include_usage,
            state.phase.clone(),
            record,
            crate::sse::Pricing {
                book: state.prices.clone(),
                tenant: key_tenant,
                given_up,
            },
            charge,
        );
    }
    let served = stream.meta().provider.clone();
    let collected = stream.collect().await;
    record.collected();
    match collected {
        Ok(c) => {
            let cost = c.usage.as_ref().and_then(|u| {
                record.usage(u);
                let provider = c.provider.as_deref().or(served.as_deref());
                state
                    .prices
                    .cost(&c.model, (provider, key_tenant.as_deref()), u)
            });
            record.cost(cost);
            if let (Some(ch), Some(cost)) = (charge.as_mut(), cost) {
                ch.settle(cost);
            }
            record.done();
            // Hedges that lost: their prompts, estimated at the model's price.
            let lost = match (given_up.count(), c.usage.as_ref()) {
                (n @ 1.., Some(u)) => state.prices.cancelled(&c.model, u.prompt_tokens, n),
                _ => None,
            };
            let mut r = answer_response(&normalize(c));
            record.write_headers(r.headers_mut());
            if let Some(c) = cost {
                let h = r.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(&crate::prices::usd(c)) {
                    h.insert(crate::names::COST, v);
                }
                h.insert(
                    crate::names::COST_SOURCE,
                    http::HeaderValue::from_static(c.source()),
                );
                if let Some(lost) = lost {
                    let all =
                        crate::prices::usd(llm_layers_core::price::Cost::Estimated(c.usd() + lost));
                    if let Ok(v) = http::HeaderValue::from_str(&all) {
                        h.insert(crate::names::ATTEMPTS_COST, v);
                    }
                }
            }
            r
        }
        Err(e) => refused(ApiFailure::from(&e), record),
    }
}

/// A call that ends in `f`: the error, with the timing headers, logged.
fn refused(f: ApiFailure, mut record: CallRecord) -> Response {
    record.failed(f.status.as_u16(), &f.code);
    let mut r = f.into_response();
    record.write_headers(r.headers_mut());
    r
}

/// A whole answer as JSON: the bytes `axum::Json` would send, written by
/// [`ChatCompletion::write_json`] (a string that needs no escape copied whole).
fn answer_response(c: &ChatCompletion) -> Response {
    let mut out = Vec::with_capacity(512);
    c.write_json(&mut out);
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
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

pub(crate) async fn models(State(state): State<AppState>) -> Response {
    let state = state.load();
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

pub(crate) async fn not_found(req: Request<Body>) -> Response {
    ApiFailure::invalid(
        StatusCode::NOT_FOUND,
        "unknown_url",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

pub(crate) async fn method_not_allowed(req: Request<Body>) -> Response {
    ApiFailure::invalid(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}
