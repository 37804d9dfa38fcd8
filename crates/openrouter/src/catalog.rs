//! The model and provider catalog: a TTL cache with single-flight fetches.

use llm_layers_core::sync::{read, write};
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

/// How long one fetch may take before it fails with a timeout.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed fetch is remembered: callers in that time get its error (or the stale
/// value) instead of refetching one after another.
const ERROR_TTL: Duration = Duration::from_secs(5);

/// A value fetched at most once per TTL. Readers of a fresh value take a short read lock;
/// a stale value is refetched by one caller while the others wait on the gate and then
/// read what it stored (single-flight). A fetch has 10 s; a failed one is remembered for
/// 5 s, during which callers get the stale value if there is one, else the error.
struct Cache<T> {
    value: RwLock<Option<(Instant, Arc<T>)>>,
    error: RwLock<Option<(Instant, LlmError)>>,
    gate: tokio::sync::Mutex<()>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            value: RwLock::new(None),
            error: RwLock::new(None),
            gate: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Cache<T> {
    fn fresh(&self, ttl: Duration) -> Option<Arc<T>> {
        let guard = read(&self.value);
        let (at, v) = guard.as_ref()?;
        (Instant::now().saturating_duration_since(*at) < ttl).then(|| v.clone())
    }

    /// The stale value, if any, else the error of a fetch that failed within `ERROR_TTL`.
    fn recent_failure(&self) -> Option<Result<Arc<T>, LlmError>> {
        let guard = read(&self.error);
        let (at, e) = guard.as_ref()?;
        if Instant::now().saturating_duration_since(*at) >= ERROR_TTL {
            return None;
        }
        let stale = read(&self.value).as_ref().map(|(_, v)| v.clone());
        Some(stale.ok_or_else(|| e.clone()))
    }

    async fn get<F, Fut>(&self, ttl: Duration, fetch: F) -> Result<Arc<T>, LlmError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        if let Some(v) = self.fresh(ttl) {
            return Ok(v);
        }
        if let Some(r) = self.recent_failure() {
            return r;
        }
        // The gate is an async mutex held across the fetch on purpose: it is what makes
        // concurrent callers share one fetch. It is off the request hot path.
        let _gate = self.gate.lock().await;
        if let Some(v) = self.fresh(ttl) {
            return Ok(v);
        }
        if let Some(r) = self.recent_failure() {
            return r;
        }
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, fetch()).await {
            Ok(r) => r,
            Err(_) => Err(LlmError::timeout(llm_layers_core::TimeoutKind::Total)
                .with_message("the catalog did not answer in time")),
        };
        match fetched {
            Ok(v) => {
                let v = Arc::new(v);
                *write(&self.value) = Some((Instant::now(), v.clone()));
                *write(&self.error) = None;
                Ok(v)
            }
            Err(e) => {
                *write(&self.error) = Some((Instant::now(), e.clone()));
                match self.recent_failure() {
                    Some(r) => r,
                    None => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_is_remembered_and_a_stale_value_served() {
        let cache: Cache<u32> = Cache::default();
        let ttl = Duration::from_secs(60);
        let fetches = AtomicUsize::new(0);
        let fail = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Err::<u32, _>(LlmError::new(llm_layers_core::ErrorKind::Connect))
        };
        // No value yet: the error, and callers in the next 5 s do not refetch.
        assert!(cache.get(ttl, fail).await.is_err());
        assert!(cache.get(ttl, fail).await.is_err());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::advance(ERROR_TTL).await;
        let ok = || async { Ok::<u32, LlmError>(7) };
        assert_eq!(*cache.get(ttl, ok).await.unwrap(), 7);
        // Stale and the refetch fails: the stale value, not the error.
        tokio::time::advance(ttl).await;
        assert_eq!(*cache.get(ttl, fail).await.unwrap(), 7);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // A fetch that hangs fails after 10 s.
        tokio::time::advance(ERROR_TTL).await;
        let cache: Cache<u32> = Cache::default();
        let hang = || std::future::pending::<Result<u32, LlmError>>();
        let start = Instant::now();
        let e = cache.get(ttl, hang).await.unwrap_err();
        assert!(e.is_timeout());
        assert_eq!(Instant::now() - start, FETCH_TIMEOUT);
    }
}
