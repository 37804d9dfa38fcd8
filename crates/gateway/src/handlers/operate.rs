//! What operators read: the status page and its JSON, the health check, the metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::json;

use crate::error::ApiFailure;
use crate::server::AppState;
use crate::{now_secs, status};

/// The status page: a static shell with no data in it, open to all; its script polls
/// `/status.json`, which takes an admin key when keys are on (the page asks for it and keeps
/// it in the tab's session storage, never in a URL, where logs would keep it).
pub(crate) async fn status_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        status::PAGE,
    )
        .into_response()
}

pub(crate) async fn status_json(State(state): State<AppState>) -> Response {
    let state = state.load();
    let mut snapshot =
        status::snapshot(&state.parts, &state.config, state.started, &state.counters);
    // Each budgeted tenant's spend in its current window, against its budget.
    let mut budgets = Vec::new();
    for k in state.config.keys.iter() {
        if let Some(b) = k.budget {
            let spent = state.spend.spent(&k.tenant, b).await;
            budgets.push(serde_json::json!({
                "tenant": &*k.tenant, "budget_usd": b.usd, "per": b.per.name(),
                "spent_usd": spent, "resets_at": llm_layers_core::ledger::Window::at(b.per, now_secs()).ends,
            }));
        }
    }
    if let Some(o) = snapshot.as_object_mut() {
        o.insert("budgets".into(), serde_json::Value::Array(budgets));
    }
    axum::Json(snapshot).into_response()
}

/// Open in every mode (load balancers probe it without a key); says whether the gateway
/// is open, and whether its upstreams' API keys can serve: `"degraded"`, with the reason,
/// when every key of an upstream is out (retired, paused, held, or the last one failing).
/// That is still a `200`: every replica shares the keys, so taking this one out of a load
/// balancer would not help. `"sick"` with a `503` when this replica cannot connect to an
/// upstream (its own DNS, network or TLS: calls in a row failed to connect, none answered
/// since): another replica may well reach it.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let state = state.load();
    let auth = if state.config.keys.is_empty() {
        "open: no gateway keys configured, anyone who reaches this gateway can use it"
    } else {
        "gateway keys required"
    };
    let mut reasons = Vec::new();
    let mut sick = Vec::new();
    let mut upstream_keys = serde_json::Map::new();
    for (name, leaf) in &state.upstreams {
        let failures = leaf.egress_failures();
        if failures >= EGRESS_SICK {
            sick.push(format!(
                "this replica cannot reach upstream {name}: {failures} connect failures in a row (DNS, TCP or TLS)"
            ));
        }
        let health = leaf.key_health();
        let keys: serde_json::Map<String, serde_json::Value> = health
            .iter()
            .map(|k| (k.id.to_string(), json!(key_state(k.state))))
            .collect();
        if !health.iter().any(|k| k.state.is_ok()) {
            let states: Vec<String> = health
                .iter()
                .map(|k| format!("{}: {}", k.id, key_state(k.state)))
                .collect();
            reasons.push(format!(
                "every API key of upstream {name} is out ({})",
                states.join(", ")
            ));
        }
        upstream_keys.insert(name.clone(), keys.into());
    }
    let status = if !sick.is_empty() {
        "sick"
    } else if reasons.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    sick.extend(reasons);
    let mut body = json!({
        "status": status,
        "auth": auth,
        "upstream_keys": upstream_keys,
    });
    if !sick.is_empty() {
        body["reason"] = json!(sick.join("; "));
    }
    let code = if status == "sick" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(body)).into_response()
}

/// Connect failures in a row after which a replica calls itself sick on `/healthz`.
const EGRESS_SICK: u32 = 3;

fn key_state(s: llm_layers_openrouter::KeyState) -> String {
    use llm_layers_openrouter::KeyState;
    match s {
        KeyState::Ok => "ok".to_owned(),
        KeyState::Retired => "retired: refused by the upstream (401)".to_owned(),
        KeyState::Paused(d) => format!("credit limit spent (402): paused {} s", d.as_secs()),
        KeyState::Held(d) => format!("at its rate limit (429): held {} s", d.as_secs()),
        KeyState::Failing(status) => format!("failing ({status}), kept as the last key"),
        _ => "out".to_owned(),
    }
}

pub(crate) async fn metrics_text(State(state): State<AppState>) -> Response {
    let state = state.load();
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
