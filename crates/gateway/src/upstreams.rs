//! Several upstreams from the config file: their leaves, and the leaf the stack wraps
//! (racing them for the models they race for).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use llm_layers_core::{ChatRequest, ConfigError};
use llm_layers_hedge::{ChooseUpstreamLayer, HedgeDelay, HedgeLayer, NextUpstream, Upstreams};
use llm_layers_latency::{LatencyLayer, LatencyStore, Scope};
use llm_layers_openrouter::{Dialect, OpenRouter};
use serde::Deserialize;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use crate::stack::Stack;

/// One upstream of the config file's `[[upstreams]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its name (`"openrouter"`, `"direct"`): in metrics, logs and the stream's
    /// `UpstreamName`.
    pub name: String,
    /// `"openrouter"` (default) or `"openai-compatible"`.
    #[serde(default)]
    pub dialect: DialectName,
    /// The API base URL (`https://openrouter.ai/api/v1`, `https://api.openai.com/v1`).
    pub base_url: String,
    /// Its API keys, taken in turn.
    pub keys: Vec<KeyConfig>,
    /// Model ids to send instead of the caller's (`"openai/gpt-4o-mini" = "gpt-4o-mini"`).
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    /// Models this upstream races for, against the first upstream: a call to one starts on
    /// the upstream measured faster for it and races the other at the hedge delay.
    #[serde(default)]
    pub race: Vec<String>,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("dialect", &self.dialect)
            .field("base_url", &self.base_url)
            .field("keys", &self.keys)
            .field("race", &self.race)
            .finish_non_exhaustive()
    }
}

/// What an upstream speaks, as the config file spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DialectName {
    /// OpenRouter (provider routing sent).
    #[default]
    Openrouter,
    /// Any OpenAI-compatible endpoint.
    OpenaiCompatible,
}

/// A key: its text (`key`) or the environment variable that holds it (`env`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Its name: what logs, metrics and `KeyId` say instead of the key.
    pub name: String,
    /// The environment variable holding it.
    #[serde(default)]
    pub env: Option<String>,
    /// The key itself (prefer `env`).
    #[serde(default)]
    pub key: Option<String>,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("env", &self.env)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl UpstreamConfig {
    /// Its leaf, keys read from the environment through `env`.
    ///
    /// # Errors
    ///
    /// A key with neither text nor a set environment variable, or a bad leaf setting.
    pub fn leaf(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        connect_timeout: Duration,
        default_max_tokens: Option<u32>,
    ) -> Result<OpenRouter, ConfigError> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let text = match (&k.key, &k.env) {
                (Some(t), _) => t.clone(),
                (None, Some(var)) => {
                    env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                        ConfigError::new(format!(
                            "upstream `{}`: key `{}`: ${var} is not set",
                            self.name, k.name
                        ))
                    })?
                }
                (None, None) => {
                    return Err(ConfigError::new(format!(
                        "upstream `{}`: key `{}` has neither `key` nor `env`",
                        self.name, k.name
                    )));
                }
            };
            keys.push((k.name.clone(), text));
        }
        OpenRouter::builder()
            .api_keys(keys)
            .base_url(&self.base_url)
            .dialect(match self.dialect {
                DialectName::Openrouter => Dialect::OpenRouter,
                DialectName::OpenaiCompatible => Dialect::OpenAiCompatible,
            })
            .model_map(self.model_map.clone())
            .connect_timeout(connect_timeout)
            .default_max_tokens(default_max_tokens)
            .title("llm-layers gateway")
            .request_headers(crate::trace::upstream_headers())
            .build()
    }
}

/// The leaf the stack wraps for several upstreams: a call to a model some upstream races
/// for goes to the race of the first upstream and those (each call starts on the one
/// measured faster for its model, the other raced at its p95 within a 5 % budget); any
/// other call to the first upstream.
///
/// # Errors
///
/// An upstream's bad setting, or two upstreams with one name.
pub fn leaf_for(leaves: &[(String, OpenRouter, Vec<String>)]) -> Result<Stack, ConfigError> {
    let Some((_, primary, _)) = leaves.first() else {
        return Err(ConfigError::new("no upstreams"));
    };
    let primary = primary.clone();
    let raced: HashSet<String> = leaves[1..]
        .iter()
        .flat_map(|(_, _, race)| race.iter().cloned())
        .collect();
    if raced.is_empty() {
        return Ok(BoxCloneSyncService::new(primary));
    }
    let mut races = std::collections::HashMap::new();
    for model in &raced {
        let members: Vec<(String, OpenRouter)> = leaves
            .iter()
            .enumerate()
            .filter(|(i, (_, _, race))| *i == 0 || race.contains(model))
            .map(|(_, (n, l, _))| (n.clone(), l.clone()))
            .collect();
        let store = LatencyStore::builder().min_samples(10).build()?;
        let names: Vec<String> = members.iter().map(|(n, _)| n.clone()).collect();
        let upstreams = Upstreams::new(members)?.record_into(store.clone());
        let hedge = HedgeLayer::builder()
            .delay(HedgeDelay::Quantile {
                store: store.clone(),
                quantile: 0.95,
                min: Duration::from_millis(100),
                max: Duration::from_secs(30),
                cold: Duration::from_secs(1),
            })
            .policy(NextUpstream)
            .budget_ratio(0.05)
            .build()?;
        let attempt = LatencyLayer::builder()
            .scope(Scope::Attempt)
            .store(store.clone())
            .build()?;
        let svc = ChooseUpstreamLayer::new(store, names.iter().map(String::as_str), 50)
            .layer(hedge.layer(attempt.layer(upstreams)));
        races.insert(model.clone(), BoxCloneSyncService::new(svc));
    }
    let races = Arc::new(races);
    Ok(BoxCloneSyncService::new(tower::service_fn(
        move |req: ChatRequest| {
            let target: Stack = races
                .get(req.model())
                .cloned()
                .unwrap_or_else(|| BoxCloneSyncService::new(primary.clone()));
            target.oneshot(req)
        },
    )))
}
