//! `GET /status` (a page that polls) and `GET /status.json` (what it shows): what the stack
//! has learned, per model and provider.

use llm_layers_core::sync::lock;
use std::collections::VecDeque;

use llm_layers_core::hash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use llm_layers_breaker::State;
use llm_layers_core::default_slug;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Parts;
use crate::config::Config;

/// How many recent first-token times are kept per (model, provider) for the sparkline.
const RECENT: usize = 60;
/// The most (model, provider) pairs and tenants kept (names come from callers).
const MAX_KEYS: usize = 256;

/// What the gateway keeps for the page: calls, hedges, the recent first-token times per
/// (model, provider) and the calls per tenant in the current and the last minute. Bounded;
/// each call takes two short locks, never across an await.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls answered.
    pub calls: AtomicU64,
    /// Calls for which a hedge was sent.
    pub hedged: AtomicU64,
    /// Calls a hedge won.
    pub hedge_won: AtomicU64,
    /// model -> provider -> recent first-token times (ms).
    recent: Mutex<HashMap<String, HashMap<String, VecDeque<f64>>>>,
    tenants: Mutex<HashMap<Arc<str>, (u64, u64, u64)>>,
}

impl Counters {
    /// Notes one call that committed, from what its stream says.
    pub fn note(&self, meta: &llm_layers_core::ResponseMeta) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(&llm_layers_hedge::HedgeWinner(winner)) = meta.extensions.get() {
            self.hedged.fetch_add(1, Ordering::Relaxed);
            if winner > 0 {
                self.hedge_won.fetch_add(1, Ordering::Relaxed);
            }
        }
        let t = &meta.timings;
        if let (Some(start), Some(first), Some(p)) = (t.started, t.first_token, &meta.provider) {
            let ms = first.saturating_duration_since(start).as_secs_f64() * 1000.0;
            let ms = (ms * 10.0).round() / 10.0;
            let mut recent = lock(&self.recent);
            // Names are copied only the first time a (model, provider) is seen.
            let seen = recent
                .get(meta.model.as_str())
                .is_some_and(|m| m.contains_key(p.as_str()));
            if !seen && recent.values().map(HashMap::len).sum::<usize>() >= MAX_KEYS {
                return;
            }
            let q = if seen {
                recent
                    .get_mut(meta.model.as_str())
                    .and_then(|m| m.get_mut(p.as_str()))
            } else {
                Some(
                    recent
                        .entry(meta.model.clone())
                        .or_default()
                        .entry(p.clone())
                        .or_default(),
                )
            };
            let Some(q) = q else { return };
            if q.len() == RECENT {
                q.pop_front();
            }
            q.push_back(ms);
        }
    }

    /// Notes one call of `tenant` (counted per minute).
    pub fn tenant_call(&self, tenant: &Arc<str>, now: Instant, started: Instant) {
        let minute = now.saturating_duration_since(started).as_secs() / 60;
        let mut t = lock(&self.tenants);
        if t.len() >= MAX_KEYS && !t.contains_key(tenant) {
            return;
        }
        let e = t.entry(tenant.clone()).or_insert((minute, 0, 0));
        if e.0 != minute {
            *e = (minute, 0, if e.0 + 1 == minute { e.1 } else { 0 });
        }
        e.1 += 1;
    }

    fn recent(&self, model: &str, provider: &str) -> Vec<f64> {
        lock(&self.recent)
            .get(model)
            .and_then(|m| m.get(provider))
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    fn tenants(&self, now_minute: u64) -> Vec<(String, u64, u64)> {
        let t = lock(&self.tenants);
        let mut v: Vec<(String, u64, u64)> = t
            .iter()
            .map(|(name, &(m, this, last))| {
                let (this, last) = match now_minute.saturating_sub(m) {
                    0 => (this, last),
                    1 => (0, this),
                    _ => (0, 0),
                };
                (name.to_string(), this, last)
            })
            .collect();
        v.sort();
        v
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The state of the stack as JSON: per model, each provider's TTFT quantiles and samples,
/// success rate, breaker state and why, hold, and whether it is slow against the model's
/// best; the learned order; hedges; the gateway's uptime, version and configuration.
pub fn snapshot(parts: &Parts, config: &Config, started: Instant, counters: &Counters) -> Value {
    let now = Instant::now();
    let breakers = parts.breaker.snapshot();
    let models: Vec<Value> = parts
        .store
        .models()
        .into_iter()
        .filter(|m| m != llm_layers_latency::OTHER)
        .map(|model| {
            let providers = parts.store.providers(&model);
            let best = providers
                .iter()
                .filter(|(_, s)| s.ttft_samples > 0 || s.prior_weight > 0.0)
                .map(|(_, s)| s.ttft_p50)
                .min();
            let rows: Vec<Value> = providers
                .iter()
                .map(|(name, s)| {
                    let slug = default_slug(name);
                    let b = breakers
                        .iter()
                        .find(|b| b.model == model && b.provider.as_deref() == Some(slug.as_str()));
                    let (state, why) = match b.map(|b| b.state) {
                        Some(State::Open { until }) => (
                            "open",
                            format!(
                                "tripped {} time(s) in a row; half-opens in {:.1} s",
                                b.map_or(0, |b| b.trips),
                                until.saturating_duration_since(now).as_secs_f64()
                            ),
                        ),
                        Some(State::HalfOpen) => ("half_open", "probing".to_owned()),
                        _ => (
                            "closed",
                            b.map_or(String::new(), |b| {
                                format!("{} of the last {} failed", b.recent_failures, b.recent_calls)
                            }),
                        ),
                    };
                    let held = b
                        .and_then(|b| b.held_until)
                        .map(|h| h.saturating_duration_since(now).as_secs_f64());
                    let slow = best.is_some_and(|best| {
                        (s.ttft_samples > 0 || s.prior_weight > 0.0) && s.ttft_p50 > best * 2
                    });
                    let prior = parts.store.prior(&model, name).map(|p| {
                        json!({"p50": ms(p.ttft_p50), "p95": ms(p.ttft_p95()), "p99": ms(p.ttft_p99),
                               "uptime_5m": p.uptime_5m, "weight": s.prior_weight})
                    });
                    let measured = parts
                        .store
                        .measured(&model, Some(name))
                        .filter(|m| m.ttft_samples > 0)
                        .map(|m| json!({"p50": ms(m.ttft_p50), "p95": ms(m.ttft_p95), "p99": ms(m.ttft_p99)}));
                    json!({
                        "provider": name,
                        "slug": slug,
                        // What the router ranks by: the measurements, blended with the
                        // published prior while there are few.
                        "ttft_ms": {"p50": ms(s.ttft_p50), "p95": ms(s.ttft_p95), "p99": ms(s.ttft_p99)},
                        "measured_ttft_ms": measured,
                        "prior_ttft_ms": prior,
                        "samples": s.ttft_samples,
                        "calls": s.calls,
                        "success_rate": 1.0 - s.error_rate,
                        "timeouts": s.timeout_rate,
                        "censored": s.censored,
                        "slow": slow,
                        "breaker": {"state": state, "why": why},
                        "held_for_s": held,
                        "recent_ttft_ms": counters.recent(&model, name),
                    })
                })
                .collect();
            let lo = &config.router.learned_order;
            let rule = if lo.enabled {
                format!(
                    "a Thompson draw over each provider's TTFT p{:.0} (measured, blended with the published prior worth {} calls; uncertainty shrinks with samples) picks who goes first, the rest by TTFT; providers failing over {:.0} % are left out; a call that explores a slower provider is raced against the best after its p75; {:.0} % of calls are left to the upstream's routing",
                    lo.quantile * 100.0,
                    parts.store.prior_weight(),
                    lo.max_error_rate * 100.0,
                    lo.explore * 100.0
                )
            } else {
                "learned order is off".to_owned()
            };
            json!({
                "model": model,
                "learned_order": parts.router.learned_order(&model).to_vec(),
                "rankings": parts.router.rankings(&model).iter().map(|r| json!({
                    "provider": r.provider,
                    "slug": r.slug,
                    "ttft_ms": ms(r.ttft_quantile),
                    "samples": r.samples,
                    "prior_weight": r.prior_weight,
                    "from": if r.samples == 0 { "prior" } else if r.prior_weight > 0.0 { "prior + measured" } else { "measured" },
                })).collect::<Vec<_>>(),
                "order_rule": rule,
                "providers": rows,
            })
        })
        .collect();
    let minute = now.saturating_duration_since(started).as_secs() / 60;
    let limit_of = |tenant: &str| {
        config
            .keys
            .iter()
            .find(|k| &*k.tenant == tenant && k.requests_per_minute > 0)
            .map(|k| k.requests_per_minute)
            .or((config.tenant_requests_per_minute > 0)
                .then_some(config.tenant_requests_per_minute))
    };
    let tenants: Vec<Value> = counters
        .tenants(minute)
        .into_iter()
        .map(|(tenant, this, last)| {
            json!({"tenant": tenant, "this_minute": this, "last_minute": last,
                   "requests_per_minute": limit_of(&tenant)})
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "tenants": tenants,
        "uptime_s": now.saturating_duration_since(started).as_secs(),
        "auth": if config.keys.is_empty() { "open" } else { "keys" },
        "configuration": config.describe(),
        "calls": counters.calls.load(Ordering::Relaxed),
        "hedges": {
            "calls_hedged": counters.hedged.load(Ordering::Relaxed),
            "hedge_won": counters.hedge_won.load(Ordering::Relaxed),
        },
        "models": models,
        "shared_state": parts.shared.as_ref().map(|sh| json!({
            "store": "redis",
            "healthy": sh.redis.is_healthy(),
            "fallbacks": sh.redis.fallbacks(),
            "replica": sh.redis.replica(),
        })),
    })
}

/// The page: a shell and a little inline script that polls `/status.json` every 3 s. When the
/// gateway has keys, the script asks for an admin key once and keeps it in the tab's session
/// storage.
pub const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llm-layers gateway status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#5b6475;margin-bottom:16px}
table{border-collapse:collapse;background:#fff;min-width:900px;box-shadow:0 1px 2px #0001}
th,td{padding:6px 10px;border-bottom:1px solid #e6e8ec;text-align:right;white-space:nowrap}
th{background:#eef0f4;font-weight:600} td:first-child,th:first-child,td.why,th.why{text-align:left}
tr.slow td{background:#fff4e5} .tag{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px}
.slow .tag.speed{background:#f5a623;color:#fff} .open{background:#d0021b;color:#fff}
.half_open{background:#f5a623;color:#fff} .closed{background:#e3f5e8;color:#17692d}
.held{background:#4a90e2;color:#fff} pre{white-space:pre-wrap;font-size:12px;color:#5b6475}
</style></head><body>
<h1>llm-layers gateway</h1>
<div class="meta" id="meta">loading…</div>
<div id="models"></div>
<div id="tenants"></div>
<div id="budgets"></div>
<h2>Configuration</h2><pre id="config"></pre>
<script>
let key = sessionStorage.getItem("llm-layers-key");
// The last first-token times of a provider as a small line (an inline SVG).
function spark(xs) {
  if (!xs || xs.length < 2) return "";
  const w = 120, h = 22, max = Math.max(...xs), min = Math.min(...xs), span = (max - min) || 1;
  const pts = xs.map((x, i) => `${(i * w / (xs.length - 1)).toFixed(1)},${(h - 2 - (x - min) * (h - 4) / span).toFixed(1)}`).join(" ");
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><polyline fill="none" stroke="#4a90e2" stroke-width="1.5" points="${pts}"/></svg>`;
}
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c]));
async function poll() {
  try {
    const r = await fetch("/status.json", key ? {headers: {authorization: "Bearer " + key}} : {});
    if (r.status === 401 || r.status === 403) {
      key = prompt("An admin key of this gateway:");
      if (key) sessionStorage.setItem("llm-layers-key", key);
      return;
    }
    const s = await r.json();
    document.getElementById("meta").textContent =
      `version ${s.version} · up ${s.uptime_s} s · ${s.calls} calls · hedged ${s.hedges.calls_hedged}, hedge won ${s.hedges.hedge_won} · auth ${s.auth}`;
    document.getElementById("config").textContent = s.configuration;
    document.getElementById("models").innerHTML = s.models.map(m => `
      <h2>${esc(m.model)}</h2>
      <div class="meta">learned order: ${m.learned_order.length ? m.learned_order.map(esc).join(" → ") : "not yet"}
        <span title="how it is decided">(${esc(m.order_rule)})</span></div>
      <table><thead><tr><th>provider</th><th>TTFT p50</th><th>p95</th><th>p99</th><th>samples</th><th>prior p50/p99</th>
        <th>success</th><th>breaker</th><th class="why">why</th><th>hold</th><th>recent TTFT</th><th></th></tr></thead><tbody>
      ${m.providers.map(p => `<tr class="${p.slow ? "slow" : ""}" data-provider="${esc(p.provider)}">
        <td>${esc(p.provider)}</td><td>${p.ttft_ms.p50} ms</td><td>${p.ttft_ms.p95} ms</td><td>${p.ttft_ms.p99} ms</td>
        <td>${p.samples}</td><td>${p.prior_ttft_ms ? `${p.prior_ttft_ms.p50} / ${p.prior_ttft_ms.p99} ms` : ""}</td><td>${(100 * p.success_rate).toFixed(1)} %</td>
        <td><span class="tag ${p.breaker.state}">${p.breaker.state}</span></td><td class="why">${esc(p.breaker.why)}</td>
        <td>${p.held_for_s == null ? "" : `<span class="tag held">${p.held_for_s.toFixed(1)} s</span>`}</td>
        <td>${spark(p.recent_ttft_ms)}</td>
        <td>${p.slow ? `<span class="tag speed">slow</span>` : ""}</td></tr>`).join("")}
      </tbody></table>`).join("") || "<p>No calls yet.</p>";
    document.getElementById("tenants").innerHTML = s.tenants.length ? `<h2>Tenants</h2>
      <table><thead><tr><th>tenant</th><th>calls this minute</th><th>last minute</th><th>limit per minute</th></tr></thead><tbody>
      ${s.tenants.map(t => `<tr><td>${esc(t.tenant)}</td><td>${t.this_minute}</td><td>${t.last_minute}</td>
        <td>${t.requests_per_minute == null ? "none" : t.requests_per_minute}</td></tr>`).join("")}</tbody></table>` : "";
    const budgets = s.budgets || [];
    document.getElementById("budgets").innerHTML = budgets.length ? `<h2>Budgets</h2>
      <table><thead><tr><th>tenant</th><th>spent (USD)</th><th>budget (USD)</th><th>per</th><th>used</th><th>resets</th></tr></thead><tbody>
      ${budgets.map(b => `<tr><td>${esc(b.tenant)}</td><td>${b.spent_usd.toFixed(6)}</td><td>${b.budget_usd}</td>
        <td>${esc(b.per)}</td><td>${(100 * b.spent_usd / b.budget_usd).toFixed(1)} %</td>
        <td>${new Date(b.resets_at * 1000).toISOString().replace(".000", "")}</td></tr>`).join("")}</tbody></table>` : "";
  } catch (e) {
    document.getElementById("meta").textContent = "status unavailable: " + e;
  }
}
poll(); setInterval(poll, 3000);
</script></body></html>
"##;
