//! The model and provider catalog: a TTL cache with single-flight fetches.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use llm_layers_core::LlmError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

/// One entry of `GET /models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model id (`"openai/gpt-4o"`).
    pub id: String,
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unix seconds when it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// The context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    /// Everything else (`pricing`, `architecture`, `supported_parameters`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `GET /providers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// The display name used in responses (`"OpenAI"`).
    pub name: String,
    /// The routing slug used in `provider.order/only/ignore` (`"openai"`).
    pub slug: String,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub(crate) struct Catalog {
    ttl: Duration,
    models: Cache<Vec<ModelInfo>>,
    providers: Cache<Vec<ProviderInfo>>,
}

impl Catalog {
    pub(crate) fn new(ttl: Duration) -> Catalog {
        Catalog {
            ttl,
            models: Cache::default(),
            providers: Cache::default(),
        }
    }

    pub(crate) async fn models<F, Fut>(&self, fetch: F) -> Result<Arc<Vec<ModelInfo>>, LlmError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<ModelInfo>, LlmError>>,
    {
        self.models.get(self.ttl, fetch).await
    }

    pub(crate) async fn providers<F, Fut>(
        &self,
        fetch: F,
    ) -> Result<Arc<Vec<ProviderInfo>>, LlmError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<ProviderInfo>, LlmError>>,
    {
        self.providers.get(self.ttl, fetch).await
    }
}

/// A value fetched at most once per TTL. Readers of a fresh value take a short read lock;
/// a stale value is refetched by one caller while the others wait on the gate and then
/// read what it stored (single-flight).
struct Cache<T> {
    value: RwLock<Option<(Instant, Arc<T>)>>,
    gate: tokio::sync::Mutex<()>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            value: RwLock::new(None),
            gate: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Cache<T> {
    fn fresh(&self, ttl: Duration) -> Option<Arc<T>> {
        let guard = self.value.read().unwrap_or_else(|e| e.into_inner());
        let (at, v) = guard.as_ref()?;
        (Instant::now().saturating_duration_since(*at) < ttl).then(|| v.clone())
    }

    async fn get<F, Fut>(&self, ttl: Duration, fetch: F) -> Result<Arc<T>, LlmError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        if let Some(v) = self.fresh(ttl) {
            return Ok(v);
        }
        // The gate is an async mutex held across the fetch on purpose: it is what makes
        // concurrent callers share one fetch. It is off the request hot path.
        let _gate = self.gate.lock().await;
        if let Some(v) = self.fresh(ttl) {
            return Ok(v);
        }
        let v = Arc::new(fetch().await?);
        *self.value.write().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}
