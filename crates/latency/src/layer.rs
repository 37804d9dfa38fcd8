use llm_layers_core::ConfigError;
use llm_layers_core::hash::{HashMap, HashSet};
use llm_layers_core::sync::lock;
use std::sync::{Arc, Mutex, Once};

use tower_layer::Layer;

use crate::service::Latency;
use crate::store::{LatencyStore, OTHER};
use crate::stream::Handles;

static DESCRIBE: Once = Once::new();

/// Where in the stack a [`LatencyLayer`] sits: it becomes the `llm.scope` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Outside retry and hedge: one record per call, as the caller sees it.
    Call,
    /// Next to the leaf: one record per attempt, per provider. Feeds the store.
    Attempt,
}

impl Scope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Call => "call",
            Scope::Attempt => "attempt",
        }
    }
}

pub(crate) struct Shared {
    pub(crate) store: Option<LatencyStore>,
    pub(crate) scope: Scope,
    pub(crate) max_models: usize,
    pub(crate) models: Mutex<HashSet<Arc<str>>>,
    /// Metric handles of committed calls per model, then per (prompt bucket, provider,
    /// response model): registered once, so a call does no label building or registry
    /// lookup.
    pub(crate) handles: Mutex<HashMap<Arc<str>, Vec<CachedHandles>>>,
}

/// The handles of one label set.
pub(crate) struct CachedHandles {
    bucket: &'static str,
    provider: Option<Box<str>>,
    response_model: Box<str>,
    handles: Arc<Handles>,
}

/// The most label sets cached per model; past it, calls build their labels each time.
const MAX_CACHED_PER_MODEL: usize = 256;

impl Shared {
    /// The model label, with cardinality capped: models past the cap fold into `_OTHER`.
    pub(crate) fn model_label(&self, model: &str) -> (Arc<str>, Arc<str>) {
        let mut seen = lock(&self.models);
        if let Some(m) = seen.get(model) {
            return (m.clone(), m.clone());
        }
        if seen.len() >= self.max_models {
            // The metric label folds; the store still keys the real model (it has bounds
            // and admission rules of its own).
            return (Arc::from(OTHER), Arc::from(model));
        }
        let m: Arc<str> = Arc::from(model);
        seen.insert(m.clone());
        (m.clone(), m)
    }

    pub(crate) fn handles(
        &self,
        model: &Arc<str>,
        bucket: &'static str,
        provider: Option<&str>,
        response_model: &str,
        make: impl FnOnce() -> Handles,
    ) -> Arc<Handles> {
        let mut map = lock(&self.handles);
        let sets = map.entry(model.clone()).or_default();
        let found = sets.iter().find(|c| {
            c.bucket == bucket
                && c.provider.as_deref() == provider
                && &*c.response_model == response_model
        });
        if let Some(c) = found {
            return c.handles.clone();
        }
        let handles = Arc::new(make());
        if sets.len() < MAX_CACHED_PER_MODEL {
            sets.push(CachedHandles {
                bucket,
                provider: provider.map(Box::from),
                response_model: Box::from(response_model),
                handles: handles.clone(),
            });
        }
        handles
    }
}

/// Records TTFT, chunk gaps, duration, tokens and outcome of every call (or attempt) to the
/// `metrics` facade and, when given one, to a [`LatencyStore`].
///
/// The metric handles of each label set are registered once, with the recorder in force
/// the first time that label set is seen, and reused: install the recorder before the
/// first call.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct LatencyLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LatencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyLayer")
            .field("scope", &self.shared.scope)
            .field("max_models", &self.shared.max_models)
            .finish_non_exhaustive()
    }
}

impl LatencyLayer {
    /// A builder: scope [`Scope::Attempt`], no store, 64 model labels.
    pub fn builder() -> LatencyLayerBuilder {
        LatencyLayerBuilder {
            store: None,
            scope: Scope::Attempt,
            max_models: 64,
        }
    }
}

impl<S> Layer<S> for LatencyLayer {
    type Service = Latency<S>;

    fn layer(&self, inner: S) -> Latency<S> {
        Latency::new(inner, self.shared.clone())
    }
}

/// Builds a [`LatencyLayer`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LatencyLayerBuilder {
    store: Option<LatencyStore>,
    scope: Scope,
    max_models: usize,
}

impl LatencyLayerBuilder {
    /// Also records into `store` (only what the layer sees: place it per attempt to learn
    /// per provider).
    pub fn store(mut self, store: LatencyStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The `llm.scope` label.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The most distinct model label values; more fold into `_OTHER` (default 64).
    pub fn max_models(mut self, n: usize) -> Self {
        self.max_models = n;
        self
    }

    /// Validates and builds; describes the metrics to the recorder once per process.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: `max_models` of zero.
    pub fn build(self) -> Result<LatencyLayer, ConfigError> {
        if self.max_models == 0 {
            return Err(ConfigError::new("max_models must be at least 1"));
        }
        DESCRIBE.call_once(crate::names::describe);
        Ok(LatencyLayer {
            shared: Arc::new(Shared {
                store: self.store,
                scope: self.scope,
                max_models: self.max_models,
                models: Mutex::new(HashSet::default()),
                handles: Mutex::new(HashMap::default()),
            }),
        })
    }
}
