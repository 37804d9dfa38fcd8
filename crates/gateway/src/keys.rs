//! Gateway keys: who may call the gateway, as which tenant, at which priority, for which
//! models, within which limits.
//!
//! Callers send `Authorization: Bearer <gateway key>` (the OpenAI SDKs send their `api_key`
//! so). Keys come from `LLM_GATEWAY_KEYS` (comma-separated `tenant=key` pairs) or a JSON file
//! (`--keys FILE.json`, [`KeysFile`]); only their SHA-256 is kept, and a presented key is
//! compared against every stored hash in constant time, so neither the answer nor its timing
//! depends on how much of a key matched. No key configured: the gateway is open, and says so.
//!
//! ```
//! use llm_layers_gateway::keys::Keys;
//! let keys = Keys::from_pairs("acme=sk-gw-1111111111111,globex=sk-gw-2222222222222")?;
//! assert_eq!(keys.check(Some("Bearer sk-gw-2222222222222")).ok().map(|k| &*k.tenant), Some("globex"));
//! assert!(keys.check(Some("Bearer sk-gw-2222222222223")).is_err());
//! assert!(keys.check(None).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;

use llm_layers_core::{ChatBody, ChatRequest, Priority};
use serde::Deserialize;

use crate::error::ApiFailure;
use subtle::ConstantTimeEq;

mod auth;
pub use auth::{Caller, KeyAuth, KeyAuthLayer, SharedKeys};

/// The SHA-256 of a key.
type Hash = [u8; 32];

fn sha256(key: &str) -> Hash {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// One gateway key: its tenant and what it may do. `Debug` shows no secret.
#[derive(Clone, PartialEq)]
pub struct GatewayKey {
    hash: Hash,
    /// The tenant its calls are made as (rate limits, metrics, the status page).
    pub tenant: Arc<str>,
    /// The highest priority its calls may have; `x-priority` may only lower it (unless
    /// `trusted`).
    pub priority: Priority,
    /// The models (exact ids, `author/*` prefixes, or `tier:NAME`) it may use; `None`: any.
    /// A variant needs its own entry (see [`GatewayKey::allows_model`]).
    pub models: Option<Vec<String>>,
    /// Its `max_tokens` is capped to this (and set to it when the caller sets none).
    pub max_tokens: Option<u32>,
    /// Whether it may send the body fields that spend money or change routing (`models`,
    /// `provider`, `plugins`, `transforms`); otherwise they are removed.
    pub routing: bool,
    /// Whether its `x-tenant` and `x-priority` headers are honoured as sent (a trusted
    /// front end that knows its own users); otherwise the key decides.
    pub trusted: bool,
    /// Requests per minute for this key (0: none beyond the gateway's own limits).
    pub requests_per_minute: u64,
    /// Whether it may read `/metrics` and `/status`.
    pub admin: bool,
    /// A revoked key is refused like a wrong one.
    pub revoked: bool,
    /// What its tenant may spend (see [`crate::budget`]).
    pub budget: Option<crate::budget::Budget>,
}

impl fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayKey")
            .field("tenant", &self.tenant)
            .field("priority", &self.priority)
            .field("models", &self.models)
            .field("max_tokens", &self.max_tokens)
            .field("routing", &self.routing)
            .field("trusted", &self.trusted)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("admin", &self.admin)
            .field("revoked", &self.revoked)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl GatewayKey {
    /// A key for `tenant`, normal priority, any model, no caps.
    pub fn new(tenant: &str, key: &str) -> GatewayKey {
        GatewayKey {
            hash: sha256(key),
            tenant: Arc::from(tenant),
            priority: Priority(1),
            models: None,
            max_tokens: None,
            routing: false,
            trusted: false,
            requests_per_minute: 0,
            admin: false,
            revoked: false,
            budget: None,
        }
    }

    /// Whether this key may call `model` (a model id or `tier:NAME`).
    ///
    /// An entry is an exact id, or a prefix and `*` (`openai/*`, `tier:*`). A model
    /// variant (`:online`, `:free`, `:nitro`, ... see
    /// [`split_variant`](llm_layers_core::split_variant)) can change what a call costs, so
    /// it needs an entry that says it: `openai/*:online` or the exact id; `openai/*` admits
    /// no variant.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| entry_admits(m, model)))
    }

    /// Applies this key to a request: every model the body can reach (`model`, and
    /// `models` when the key may route) is allowed, else `403`; the routing and spending
    /// fields are removed unless allowed; the output cap holds on every field that means
    /// output tokens (`max_tokens`, `max_completion_tokens`, `reasoning.max_tokens`,
    /// `thinking.budget_tokens`), shared by the `n` choices, and the body sent carries the
    /// capped values.
    ///
    /// ```
    /// use llm_layers_core::ChatRequest;
    /// use llm_layers_gateway::keys::GatewayKey;
    /// let mut key = GatewayKey::new("acme", "sk-gw-aaaaaaaaaaaaaaaa");
    /// key.max_tokens = Some(16);
    /// let mut req: ChatRequest = serde_json::from_str(
    ///     r#"{"model":"a/b","messages":[],"max_completion_tokens":1,"max_tokens":100000,"n":2}"#,
    /// )?;
    /// assert!(key.apply(&mut req).is_ok());
    /// assert_eq!((req.body().max_tokens, req.body().max_completion_tokens), (Some(8), Some(1)));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn apply(&self, req: &mut ChatRequest) -> Result<(), ApiFailure> {
        if !self.allows_model(req.model()) {
            return Err(not_allowed(req.model(), "model"));
        }
        const SPENDING: [&str; 2] = ["plugins", "transforms"];
        if self.routing {
            if let Some(m) = req
                .body()
                .models
                .iter()
                .flatten()
                .find(|m| !self.allows_model(m))
            {
                return Err(not_allowed(m, "models"));
            }
        } else if req.body().models.is_some()
            || req.body().provider.is_some()
            || SPENDING.iter().any(|f| req.body().extra.contains_key(*f))
        {
            let body = req.body_mut();
            body.models = None;
            body.provider = None;
            for f in SPENDING {
                body.extra.remove(f);
            }
        }
        if let Some(cap) = self.max_tokens {
            cap_output(req.body_mut(), cap)?;
        }
        Ok(())
    }
}

fn not_allowed(model: &str, param: &str) -> ApiFailure {
    ApiFailure::forbidden(
        "model_not_allowed",
        format!("this key may not use the model {model:?}"),
    )
    .with_param(param)
}

/// Whether the allow-list entry `entry` admits `model` (see [`GatewayKey::allows_model`]).
fn entry_admits(entry: &str, model: &str) -> bool {
    let (base, variant) = llm_layers_core::split_variant(model);
    let (entry_base, entry_variant) = llm_layers_core::split_variant(entry);
    if variant != entry_variant {
        return false;
    }
    match entry_base.strip_suffix('*') {
        Some(prefix) => base.len() > prefix.len() && base.starts_with(prefix),
        None => entry_base == base,
    }
}

/// Caps every output-token field of `body` so that `n` choices together stay within `cap`.
fn cap_output(body: &mut ChatBody, cap: u32) -> Result<(), ApiFailure> {
    let n = body.choices();
    let per_choice = u64::from(cap) / n;
    let Ok(per @ 1..) = u32::try_from(per_choice) else {
        return Err(ApiFailure::invalid(
            http::StatusCode::BAD_REQUEST,
            "integer_above_max_value",
            format!("'n' of {n} asks for more than this key's cap of {cap} output tokens"),
        )
        .with_param("n"));
    };
    let capped = |v: Option<u32>| v.map(|t| t.min(per));
    match (body.max_tokens, body.max_completion_tokens) {
        // OpenAI's reasoning models refuse `max_tokens`: a caller who sent only the newer
        // field keeps only it.
        (None, Some(_)) => body.max_completion_tokens = capped(body.max_completion_tokens),
        (None, None) => body.max_tokens = Some(per),
        _ => {
            body.max_tokens = capped(body.max_tokens);
            body.max_completion_tokens = capped(body.max_completion_tokens);
        }
    }
    // Reasoning budgets: OpenRouter's `reasoning.max_tokens`, Anthropic's
    // `thinking.budget_tokens`.
    for (field, budget) in [("reasoning", "max_tokens"), ("thinking", "budget_tokens")] {
        if let Some(v) = body.extra.get_mut(field).and_then(|r| r.get_mut(budget)) {
            if v.as_u64().is_none_or(|b| b > u64::from(per)) {
                *v = per.into();
            }
        }
    }
    Ok(())
}

/// One entry of a keys file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The tenant.
    pub tenant: String,
    /// The key itself, or ...
    #[serde(default)]
    pub key: Option<String>,
    /// ... its SHA-256 in hex, so the file need not hold the secret.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// `low`, `normal` (default) or `high`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Allowed models (exact, `author/*`, `tier:NAME`); absent: any.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// The `max_tokens` cap.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// May send `models`, `provider`, `plugins`, `transforms`.
    #[serde(default)]
    pub allow_routing: bool,
    /// Its headers are honoured as sent.
    #[serde(default)]
    pub trusted: bool,
    /// Requests per minute for this key.
    #[serde(default)]
    pub requests_per_minute: u64,
    /// May read `/metrics` and `/status`.
    #[serde(default)]
    pub admin: bool,
    /// Refused like a wrong key.
    #[serde(default)]
    pub revoked: bool,
    /// USD its tenant may spend per window: `{"usd": 25, "per": "day"}`.
    #[serde(default)]
    pub budget: Option<crate::budget::BudgetEntry>,
}

/// The keys file (`--keys FILE.json`): `{"keys": [KeyEntry, ...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The keys.
    pub keys: Vec<KeyEntry>,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer ...` header.
    Missing,
    /// A key that is not known, or revoked (the two are not told apart).
    Wrong,
}

/// The configured gateway keys.
#[derive(Clone, Default, PartialEq)]
pub struct Keys {
    keys: Vec<GatewayKey>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.tenant))
            .finish()
    }
}

fn priority(name: Option<&str>) -> Result<Priority, String> {
    match name.unwrap_or("normal") {
        "low" => Ok(Priority(0)),
        "normal" => Ok(Priority(1)),
        "high" => Ok(Priority(2)),
        other => Err(format!("priority {other:?} is not low, normal or high")),
    }
}

fn valid_tenant(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > 128 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "tenant {t:?} must be 1 to 128 characters, no spaces"
        ));
    }
    Ok(())
}

impl Keys {
    /// Keys from `tenant=key` pairs separated by commas (`LLM_GATEWAY_KEYS`).
    pub fn from_pairs(pairs: &str) -> Result<Keys, String> {
        let mut keys = Vec::new();
        for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tenant, key) = pair
                .split_once('=')
                .ok_or_else(|| "LLM_GATEWAY_KEYS: each entry is tenant=key".to_owned())?;
            let (tenant, key) = (tenant.trim(), key.trim());
            valid_tenant(tenant).map_err(|e| format!("LLM_GATEWAY_KEYS: {e}"))?;
            if key.len() < 16 {
                return Err(format!(
                    "LLM_GATEWAY_KEYS: the key of {tenant} is shorter than 16 characters"
                ));
            }
            keys.push(GatewayKey::new(tenant, key));
        }
        Keys::checked(keys)
    }

    /// Keys from a keys file's text.
    pub fn from_json(text: &str) -> Result<Keys, String> {
        let file: KeysFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a keys file: {}",
                crate::config::file_error::json_error(text, &e)
            )
        })?;
        let mut keys = Vec::new();
        for e in file.keys {
            valid_tenant(&e.tenant)?;
            let hash = match (&e.key, &e.key_sha256) {
                (Some(k), None) if k.len() >= 16 => sha256(k),
                (Some(_), None) => {
                    return Err(format!(
                        "the key of {} is shorter than 16 characters",
                        e.tenant
                    ));
                }
                (None, Some(h)) => parse_hex(h)
                    .ok_or_else(|| format!("key_sha256 of {} is not 64 hex digits", e.tenant))?,
                _ => {
                    return Err(format!(
                        "{}: give exactly one of key and key_sha256",
                        e.tenant
                    ));
                }
            };
            keys.push(GatewayKey {
                hash,
                tenant: Arc::from(e.tenant.as_str()),
                priority: priority(e.priority.as_deref())?,
                models: e.models,
                max_tokens: e.max_tokens.filter(|n| *n > 0),
                routing: e.allow_routing,
                trusted: e.trusted,
                requests_per_minute: e.requests_per_minute,
                admin: e.admin,
                revoked: e.revoked,
                budget: e
                    .budget
                    .as_ref()
                    .map(|b| crate::budget::Budget::from_entry(&e.tenant, b))
                    .transpose()?,
            });
        }
        Keys::checked(keys)
    }

    fn checked(keys: Vec<GatewayKey>) -> Result<Keys, String> {
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.hash == k.hash) {
                return Err(format!("the key of {} is given twice", k.tenant));
            }
        }
        Ok(Keys { keys })
    }

    /// Whether any key is configured (otherwise the gateway is open).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key (for per-key limits and the status page); no secrets in them.
    pub fn iter(&self) -> impl Iterator<Item = &GatewayKey> {
        self.keys.iter()
    }

    /// The key an `Authorization` header value presents, or why it is refused. The presented
    /// key is hashed and compared with every stored hash in constant time, whatever matches.
    pub fn check(&self, authorization: Option<&str>) -> Result<&GatewayKey, Refusal> {
        let presented = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(Refusal::Missing)?;
        let hash = sha256(presented);
        let mut found: Option<&GatewayKey> = None;
        for k in &self.keys {
            // No early exit: every stored hash is compared.
            if bool::from(k.hash.ct_eq(&hash)) {
                found = Some(k);
            }
        }
        found.filter(|k| !k.revoked).ok_or(Refusal::Wrong)
    }
}

fn parse_hex(h: &str) -> Option<Hash> {
    let h = h.trim();
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_files_and_refusals() {
        let keys =
            Keys::from_pairs(" acme = sk-gw-aaaaaaaaaaaa , globex=sk-gw-bbbbbbbbbbbb").unwrap();
        assert_eq!(
            &*keys
                .check(Some("Bearer sk-gw-aaaaaaaaaaaa"))
                .unwrap()
                .tenant,
            "acme"
        );
        assert_eq!(
            keys.check(Some("Bearer sk-gw-aaaaaaaaaaab")),
            Err(Refusal::Wrong)
        );
        assert_eq!(keys.check(Some("Basic xyz")), Err(Refusal::Missing));
        assert_eq!(keys.check(None), Err(Refusal::Missing));
        assert!(Keys::from_pairs("acme=short").is_err());
        assert!(Keys::from_pairs("no-equals-sign").is_err());
        assert!(Keys::from_pairs("a=sk-gw-aaaaaaaaaaaa,b=sk-gw-aaaaaaaaaaaa").is_err());
        let hash: String = sha256("sk-gw-cccccccccccc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let file = format!(
            r#"{{"keys": [
                {{"tenant": "acme", "key": "sk-gw-aaaaaaaaaaaa", "priority": "low",
                  "models": ["openai/*", "tier:fast"], "max_tokens": 100}},
                {{"tenant": "ops", "key_sha256": "{hash}", "admin": true}},
                {{"tenant": "gone", "key": "sk-gw-dddddddddddd", "revoked": true}}
            ]}}"#
        );
        let keys = Keys::from_json(&file).unwrap();
        let acme = keys.check(Some("Bearer sk-gw-aaaaaaaaaaaa")).unwrap();
        assert_eq!(acme.priority, Priority(0));
        assert!(acme.allows_model("openai/gpt-4o") && acme.allows_model("tier:fast"));
        assert!(!acme.allows_model("anthropic/claude") && !acme.allows_model("tier:cheap"));
        assert!(keys.check(Some("Bearer sk-gw-cccccccccccc")).unwrap().admin);
        assert_eq!(
            keys.check(Some("Bearer sk-gw-dddddddddddd")),
            Err(Refusal::Wrong)
        );
        // No secret in Debug.
        let debug = format!("{keys:?} {acme:?}");
        assert!(
            !debug.contains("sk-gw") && !debug.contains(&hash),
            "{debug}"
        );
        assert!(Keys::from_json(r#"{"keys": [{"tenant": "x"}]}"#).is_err());
        assert!(
            Keys::from_json(
                r#"{"keys": [{"tenant": "x", "key": "sk-gw-aaaaaaaaaaaa", "priority": "max"}]}"#
            )
            .is_err()
        );
    }
}
