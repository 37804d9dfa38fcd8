//! The router's configuration as serde types (JSON, TOML or anything serde reads).

use std::collections::HashMap;

use llm_layers_core::ProviderPreferences;
use serde::{Deserialize, Serialize};

use crate::Objective;

/// Everything the router needs besides the latency store. Every field but `tiers` has a
/// default; [`RouterLayer::from_config`](crate::RouterLayer::from_config) validates it.
///
/// ```
/// let cfg: llm_layers_router::RouterConfig = serde_json::from_str(r#"{
///   "tiers": [{
///     "name": "fast",
///     "models": ["openai/gpt-4o-mini", {"model": "meta-llama/llama-3.1-8b-instruct",
///                                      "provider": {"only": ["groq", "cerebras"]}}],
///     "sla": {"ttft_ms": 1500, "ttft_quantile": 0.95}
///   }]
/// }"#)?;
/// assert_eq!(cfg.tiers[0].sla.min_success_rate, 0.95);
/// assert!(cfg.learned_order.enabled);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Named candidate sets; a request names one as `tier:NAME` in `model`.
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// Share of a tier's calls that may go to candidates with too few samples, or back from
    /// their cool-down (0 to 0.5; default 0.05).
    #[serde(default = "default_explore")]
    pub explore: f64,
    /// How long a candidate that broke its SLA is skipped (seconds; default 60, the
    /// latency store's default window, so it comes back measured on fresh samples only).
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: f64,
    /// After its cool-down, a candidate is chosen again only when its quantile is at most
    /// this share of the bound (0 to 1; default 0.9): the hysteresis that stops flapping.
    #[serde(default = "default_recover")]
    pub recover_ratio: f64,
    /// Provider order learned for every model, tiered or concrete.
    #[serde(default)]
    pub learned_order: LearnedOrderConfig,
    /// Provider display names (as streams name them) to routing slugs, where the default
    /// (lowercase, spaces to dashes) is wrong.
    #[serde(default)]
    pub slugs: HashMap<String, String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            tiers: Vec::new(),
            explore: default_explore(),
            cooldown_secs: default_cooldown(),
            recover_ratio: default_recover(),
            learned_order: LearnedOrderConfig::default(),
            slugs: HashMap::new(),
        }
    }
}

/// One tier: an ordered candidate set and its SLA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The name (`fast`); requests say `tier:fast`.
    pub name: String,
    /// Candidates, preferred first.
    pub models: Vec<CandidateConfig>,
    /// What "good enough" means.
    pub sla: SlaConfig,
    /// Also send the other candidates as OpenRouter's `models` fallback list, so OpenRouter
    /// itself falls back when the chosen one errors (default false).
    #[serde(default)]
    pub fallback_models: bool,
    /// What the chosen model's provider order optimises (`fastest`, the default;
    /// `cheapest` within this tier's SLA; `weighted=W`): see [`Objective`].
    #[serde(default)]
    pub objective: Objective,
}

/// A candidate: a model id, or a model id with provider preferences of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CandidateConfig {
    /// Just the model id.
    Model(String),
    /// A model id and the `provider` preferences to send with it (unless the caller sent
    /// its own).
    WithProvider {
        /// The model id.
        model: String,
        /// Its provider preferences.
        provider: Box<ProviderPreferences>,
    },
}

impl CandidateConfig {
    /// The model id.
    pub fn model(&self) -> &str {
        match self {
            CandidateConfig::Model(m) | CandidateConfig::WithProvider { model: m, .. } => m,
        }
    }
}

/// A tier's service level: a TTFT quantile bound and a minimum success rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    /// The bound on the TTFT quantile, in milliseconds.
    pub ttft_ms: u64,
    /// Which quantile (0 to 1, exclusive; default 0.95).
    #[serde(default = "default_sla_quantile")]
    pub ttft_quantile: f64,
    /// The least share of calls that must succeed (0 to 1; default 0.95).
    #[serde(default = "default_success")]
    pub min_success_rate: f64,
}

/// How provider order is learned for a model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedOrderConfig {
    /// On or off (default on).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Providers are ranked by this TTFT quantile (0 to 1, exclusive; default 0.9).
    #[serde(default = "default_order_quantile")]
    pub quantile: f64,
    /// Providers failing more often than this are left out of the order (default 0.25).
    #[serde(default = "default_max_error")]
    pub max_error_rate: f64,
    /// The current leader keeps first place until another is faster by this share
    /// (0 to 1; default 0.1), so equal providers do not swap on noise.
    #[serde(default = "default_stickiness")]
    pub stickiness: f64,
    /// Share of calls left to the upstream's own routing, so a provider nobody has
    /// published or measured yet shows up (0 to 0.5; default 0.01). Such a call is raced
    /// against the best known provider after that one's p75, from the hedge budget: half
    /// of these calls land on a slower provider and race, so each per cent of share costs
    /// about half a per cent of the budget. Known providers are
    /// re-measured by the order's own draws (see the crate docs), not by this share.
    #[serde(default = "default_order_explore")]
    pub explore: f64,
    /// What the order of a call naming a concrete model optimises (default `fastest`); a
    /// tier's own objective, or a call's [`Objective`] extension, wins.
    #[serde(default)]
    pub objective: Objective,
    /// The SLA `cheapest` and `weighted` orders of a concrete model must meet (default
    /// none: the cheapest provider not failing). A tier's call meets the tier's SLA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaConfig>,
}

impl Default for LearnedOrderConfig {
    fn default() -> Self {
        LearnedOrderConfig {
            enabled: true,
            quantile: default_order_quantile(),
            max_error_rate: default_max_error(),
            stickiness: default_stickiness(),
            explore: default_order_explore(),
            objective: Objective::default(),
            sla: None,
        }
    }
}

fn default_explore() -> f64 {
    0.05
}
fn default_order_explore() -> f64 {
    0.01
}
fn default_cooldown() -> f64 {
    60.0
}
fn default_recover() -> f64 {
    0.9
}
fn default_sla_quantile() -> f64 {
    0.95
}
fn default_success() -> f64 {
    0.95
}
fn yes() -> bool {
    true
}
fn default_order_quantile() -> f64 {
    0.9
}
fn default_max_error() -> f64 {
    0.25
}
fn default_stickiness() -> f64 {
    0.1
}
