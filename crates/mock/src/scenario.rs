//! [`Scenario`]: what the mock server does, as data (JSON or TOML), with built-in presets.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod dist;
mod presets;
mod published;
pub use dist::Dist;

/// A mock OpenRouter's behaviour: its providers, their latency and faults, and the wire
/// quirks it plays.
///
/// ```
/// use llm_layers_mock::Scenario;
/// let s = Scenario::from_json(r#"{
///     "seed": 7,
///     "time_scale": 0.01,
///     "providers": [
///         {"name": "Fast", "slug": "fast", "weight": 3, "ttft": {"kind": "fixed", "ms": 100}},
///         {"name": "Flaky", "slug": "flaky", "weight": 1,
///          "faults": {"status": [{"code": 429, "rate": 0.5, "retry_after_s": 2}]}}
///     ]
/// }"#)?;
/// assert_eq!(s.providers.len(), 2);
/// let err = Scenario::from_json(r#"{"providers": [{"name": "A", "slug": "a", "weight": -1}]}"#).unwrap_err();
/// assert_eq!(err.field(), "providers[0].weight");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[must_use]
pub struct Scenario {
    /// Seed of every random choice (with the request's body and repeat count).
    #[serde(default)]
    pub seed: u64,
    /// Multiplies every delay: 0.01 runs a real-world scenario 100 times faster; 0 removes
    /// all delays.
    #[serde(default = "one")]
    pub time_scale: f64,
    /// Model ids listed by `GET /models` (any model id is served).
    #[serde(default = "default_models")]
    pub models: Vec<String>,
    /// The upstream providers, drawn by weight per request.
    pub providers: Vec<ProviderSpec>,
    /// Send `: OPENROUTER PROCESSING` this often (ms, before scaling) while waiting for the
    /// first token; 0 sends none.
    #[serde(default)]
    pub keepalive_ms: f64,
    /// Time before an answer that is an error (a status, a reset before headers, a 200
    /// with an error body) comes back: the round trip to the upstream and its own tries
    /// (ms, before scaling; default 0). A real upstream never fails in zero time, and a
    /// client's behaviour under concurrency depends on what is in flight meanwhile.
    #[serde(default)]
    pub error_after_ms: f64,
    /// End lines with CRLF instead of LF.
    #[serde(default)]
    pub crlf: bool,
    /// Cut each event across two writes at a random byte.
    #[serde(default)]
    pub split_writes: bool,
    /// Write events that are due at the same time in one write.
    #[serde(default = "yes")]
    pub coalesce_writes: bool,
    /// Tokens per answer when the request sets no `max_tokens`.
    #[serde(default = "default_tokens")]
    pub default_tokens: u32,
    /// The most tokens per answer, whatever `max_tokens` says.
    #[serde(default = "max_tokens_cap")]
    pub max_tokens: u32,
    /// Require `Authorization: Bearer …` (401 without).
    #[serde(default = "yes")]
    pub require_auth: bool,
    /// Behave as a strict OpenAI-compatible endpoint: a chat request with a field OpenAI's
    /// API does not take (OpenRouter's `provider`, `models`, `transforms` ...) is a 400 in
    /// OpenAI's error shape.
    #[serde(default)]
    pub strict_openai: bool,
    /// API keys answered with a status instead of an answer: 401 (invalid key), 402 (the
    /// key's credit limit is spent: `limit_source: openrouter_key_limit`) or 429 (the key's own limit, with `X-RateLimit-*` headers and
    /// `Retry-After: 30`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub key_statuses: std::collections::BTreeMap<String, u16>,
    /// A request whose message text contains this is flagged by moderation: `403`, as
    /// OpenRouter answers (the caller's input, never the key's fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation_flag: Option<String>,
    /// A request asking for more than this many tokens (`max_tokens` or
    /// `max_completion_tokens`, times `n`) is more than the balance can cover: `402` with
    /// `limit_source: openrouter_credits` (the call's size, never the key's fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affordable_tokens: Option<u32>,
    /// Report each answer's cost (`usage.cost`, at [`crate::PRICE`]), as OpenRouter does;
    /// off, an upstream that does not (what it charged is then estimated downstream).
    #[serde(default = "yes")]
    pub report_cost: bool,
}

/// The request fields an OpenAI-compatible chat endpoint takes (what `strict_openai`
/// accepts).
pub const OPENAI_CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
    "metadata",
    "store",
    "service_tier",
    "reasoning_effort",
    "modalities",
    "prediction",
    "audio",
];

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_tokens() -> u32 {
    8
}
fn max_tokens_cap() -> u32 {
    64
}
fn default_models() -> Vec<String> {
    vec!["mock/echo".into(), "mock/fast".into(), "mock/slow".into()]
}

/// One upstream provider behind the mock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Display name, as in the stream's `provider` field (`"OpenAI"`).
    pub name: String,
    /// Routing slug, as in `provider.order/only/ignore` (`"openai"`).
    pub slug: String,
    /// Relative share of traffic when the request names no order.
    #[serde(default = "one")]
    pub weight: f64,
    /// Time to first token.
    #[serde(default = "default_ttft")]
    pub ttft: Dist,
    /// Gap between tokens.
    #[serde(default = "default_gap")]
    pub gap: Dist,
    /// Faults and their rates.
    #[serde(default)]
    pub faults: Faults,
    /// Answers a continuation by assistant prefill (or `prefix: true`) with a 400, as
    /// recent Claude models do ("does not support assistant message prefill").
    #[serde(default)]
    pub refuses_prefill: bool,
    /// Takes a continuation by assistant prefill as a new turn and answers it from scratch
    /// (as OpenAI's models do): the whole answer again, not the rest of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefill_from_scratch: bool,
    /// The TTFT distribution `GET /models/{id}/endpoints` publishes for this provider
    /// (default: its real `ttft`). Set it to make the published stats lie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_ttft: Option<Dist>,
    /// What this provider charges, USD per token: billed, reported as `usage.cost` and
    /// published as its endpoint's `pricing` (default [`crate::PRICE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceSpec>,
}

/// A provider's price, USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    /// Per prompt token.
    pub prompt: f64,
    /// Per completion token.
    pub completion: f64,
}

impl ProviderSpec {
    /// What this provider charges ([`crate::PRICE`] unless it says otherwise).
    pub fn price(&self) -> llm_layers_core::price::Price {
        self.price
            .map_or(crate::PRICE, |p| llm_layers_core::price::Price {
                prompt: p.prompt,
                completion: p.completion,
                request: 0.0,
                cache_read: None,
            })
    }
}

fn default_ttft() -> Dist {
    Dist::Fixed { ms: 50.0 }
}
fn default_gap() -> Dist {
    Dist::Fixed { ms: 5.0 }
}

/// Faults of one provider, each a rate in `[0, 1]` per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Error statuses (429, 500, 502, 503, 524, 529, ...) before the stream.
    #[serde(default)]
    pub status: Vec<StatusFault>,
    /// Close the connection before sending headers.
    #[serde(default)]
    pub reset_before_headers: f64,
    /// Send 200 and event-stream headers, then nothing, ever.
    #[serde(default)]
    pub hang_after_headers: f64,
    /// After some tokens, an error event, then `data: [DONE]`.
    #[serde(default)]
    pub midstream_error: f64,
    /// After some tokens, an error event, then a bare end of body.
    #[serde(default)]
    pub midstream_error_eof: f64,
    /// After some tokens, reset the connection (no `[DONE]`).
    #[serde(default)]
    pub truncate: f64,
    /// After some tokens, nothing more, ever (the connection stays open).
    #[serde(default)]
    pub hang_midstream: f64,
    /// Answer 200 with an `{"error": ...}` body instead of an answer.
    #[serde(default)]
    pub error_200: f64,
}

/// An error status returned at some rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusFault {
    /// The HTTP status.
    pub code: u16,
    /// Rate in `[0, 1]`.
    pub rate: f64,
    /// `Retry-After` seconds to send, if any.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

/// A scenario that could not be loaded, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    field: String,
    message: String,
}

impl ScenarioError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ScenarioError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The path of the field at fault (`providers[0].weight`), or `""` for the document.
    pub fn field(&self) -> &str {
        &self.field
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "bad scenario: {}", self.message)
        } else {
            write!(f, "bad scenario field `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ScenarioError {}

fn rate_ok(r: f64) -> bool {
    (0.0..=1.0).contains(&r)
}

impl Scenario {
    /// Parses and validates a JSON scenario.
    pub fn from_json(s: &str) -> Result<Scenario, ScenarioError> {
        let de = &mut serde_json::Deserializer::from_str(s);
        let scenario: Scenario = serde_path_to_error::deserialize(de)
            .map_err(|e| ScenarioError::new(path_of(e.path()), e.inner().to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Parses and validates a TOML scenario.
    pub fn from_toml(s: &str) -> Result<Scenario, ScenarioError> {
        let de = toml::Deserializer::parse(s).map_err(|e| ScenarioError::new("", e.to_string()))?;
        let scenario: Scenario = serde_path_to_error::deserialize(de)
            .map_err(|e| ScenarioError::new(path_of(e.path()), e.inner().to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Loads a file: TOML if its name ends in `.toml`, JSON otherwise.
    pub fn from_file(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::new("", format!("cannot read {}: {e}", path.display())))?;
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::from_toml(&text)
        } else {
            Scenario::from_json(&text)
        }
    }

    /// Sets the time scale (builder style).
    pub fn with_time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    /// Sets the seed (builder style).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks values serde cannot: rates, weights, distributions.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if !(self.time_scale >= 0.0 && self.time_scale.is_finite()) {
            return Err(ScenarioError::new(
                "time_scale",
                "must be a finite number >= 0",
            ));
        }
        if !(self.error_after_ms >= 0.0 && self.error_after_ms.is_finite()) {
            return Err(ScenarioError::new("error_after_ms", "must be >= 0"));
        }
        if !(self.keepalive_ms >= 0.0 && self.keepalive_ms.is_finite()) {
            return Err(ScenarioError::new("keepalive_ms", "must be >= 0"));
        }
        if self.providers.is_empty() {
            return Err(ScenarioError::new(
                "providers",
                "at least one provider is needed",
            ));
        }
        if self.max_tokens == 0 {
            return Err(ScenarioError::new("max_tokens", "must be > 0"));
        }
        if self.default_tokens == 0 {
            return Err(ScenarioError::new("default_tokens", "must be > 0"));
        }
        for (i, p) in self.providers.iter().enumerate() {
            let f = |name: &str| format!("providers[{i}].{name}");
            if p.name.is_empty() {
                return Err(ScenarioError::new(f("name"), "must not be empty"));
            }
            if p.slug.is_empty() || p.slug.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(ScenarioError::new(
                    f("slug"),
                    "must be non-empty and lowercase",
                ));
            }
            if !(p.weight > 0.0 && p.weight.is_finite()) {
                return Err(ScenarioError::new(
                    f("weight"),
                    "must be a finite number > 0",
                ));
            }
            p.ttft.validate(&f("ttft"))?;
            p.gap.validate(&f("gap"))?;
            let fl = &p.faults;
            for (name, r) in [
                ("reset_before_headers", fl.reset_before_headers),
                ("hang_after_headers", fl.hang_after_headers),
                ("midstream_error", fl.midstream_error),
                ("midstream_error_eof", fl.midstream_error_eof),
                ("truncate", fl.truncate),
                ("hang_midstream", fl.hang_midstream),
                ("error_200", fl.error_200),
            ] {
                if !rate_ok(r) {
                    return Err(ScenarioError::new(
                        f(&format!("faults.{name}")),
                        "must be in 0..=1",
                    ));
                }
            }
            let mut total = 0.0;
            for (j, s) in fl.status.iter().enumerate() {
                if !rate_ok(s.rate) {
                    return Err(ScenarioError::new(
                        f(&format!("faults.status[{j}].rate")),
                        "must be in 0..=1",
                    ));
                }
                if !(400..=599).contains(&s.code) {
                    return Err(ScenarioError::new(
                        f(&format!("faults.status[{j}].code")),
                        "must be an error status (400..=599)",
                    ));
                }
                total += s.rate;
            }
            total += fl.reset_before_headers
                + fl.hang_after_headers
                + fl.midstream_error
                + fl.midstream_error_eof
                + fl.truncate
                + fl.hang_midstream
                + fl.error_200;
            if total > 1.0 + 1e-9 {
                return Err(ScenarioError::new(
                    f("faults"),
                    "the rates add up to more than 1",
                ));
            }
        }
        Ok(())
    }

    /// Scales a delay in milliseconds into a duration.
    pub fn scaled(&self, ms: f64) -> Duration {
        Duration::try_from_secs_f64((ms * self.time_scale / 1000.0).max(0.0))
            .unwrap_or(Duration::MAX)
    }
}

fn path_of(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." { String::new() } else { s }
}
