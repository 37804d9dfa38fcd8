//! The layer, its builder, and the capability table shared by every clone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llm_layers_core::ConfigError;
use llm_layers_core::continuation::ContinueMode;
use llm_layers_core::sync::lock;
use tower::retry::budget::Budget;
use tower_layer::Layer;

use crate::service::Resume;

/// The most (model, provider) entries the capability table learns; past it, it starts over
/// (pinned entries stay).
const MAX_LEARNED: usize = 4096;

pub(crate) struct Shared {
    pub(crate) on_by_default: bool,
    pub(crate) max_resumes: u32,
    pub(crate) default_mode: ContinueMode,
    pub(crate) budget: Option<Arc<dyn Budget + Send + Sync>>,
    pinned: HashMap<(String, String), ContinueMode>,
    learned: Mutex<HashMap<(String, String), ContinueMode>>,
}

impl Shared {
    /// How to continue an answer of `model` served by `provider`: pinned, else learned,
    /// else the default.
    pub(crate) fn mode(&self, model: &str, provider: Option<&str>) -> ContinueMode {
        let Some(p) = provider else {
            return self.default_mode;
        };
        let key = (model.to_owned(), p.to_owned());
        if let Some(m) = self.pinned.get(&key) {
            return *m;
        }
        lock(&self.learned)
            .get(&key)
            .copied()
            .unwrap_or(self.default_mode)
    }

    /// `provider` refused prefill for `model`: it continues by instruction from now on
    /// (unless pinned).
    pub(crate) fn learn_refusal(&self, model: &str, provider: &str) {
        let key = (model.to_owned(), provider.to_owned());
        if self.pinned.contains_key(&key) {
            return;
        }
        let mut learned = lock(&self.learned);
        if learned.len() >= MAX_LEARNED {
            learned.clear();
        }
        learned.insert(key, ContinueMode::Instruction);
    }
}

/// Applies [`Resume`]. Every service built from one layer (and its clones) shares one
/// capability table and one budget.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct ResumeLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ResumeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeLayer")
            .field("on_by_default", &self.shared.on_by_default)
            .field("max_resumes", &self.shared.max_resumes)
            .field("default_mode", &self.shared.default_mode)
            .finish_non_exhaustive()
    }
}

impl ResumeLayer {
    /// Resume on for every request that does not say otherwise, once per call, by prefill.
    pub fn new() -> ResumeLayer {
        ResumeLayer::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// A builder: on by default, one resume per call, prefill first, no budget.
    pub fn builder() -> ResumeLayerBuilder {
        ResumeLayerBuilder {
            on_by_default: true,
            max_resumes: 1,
            default_mode: ContinueMode::Prefill,
            budget: None,
            pinned: HashMap::new(),
        }
    }

    /// How an answer of `model` served by `provider` would be continued now.
    pub fn mode(&self, model: &str, provider: &str) -> ContinueMode {
        self.shared.mode(model, Some(provider))
    }
}

impl Default for ResumeLayer {
    fn default() -> Self {
        ResumeLayer::new()
    }
}

impl<S> Layer<S> for ResumeLayer {
    type Service = Resume<S>;

    fn layer(&self, inner: S) -> Resume<S> {
        Resume::new(inner, self.shared.clone())
    }
}

/// Builds a [`ResumeLayer`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ResumeLayerBuilder {
    on_by_default: bool,
    max_resumes: u32,
    default_mode: ContinueMode,
    budget: Option<Arc<dyn Budget + Send + Sync>>,
    pinned: HashMap<(String, String), ContinueMode>,
}

impl std::fmt::Debug for ResumeLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeLayerBuilder")
            .field("on_by_default", &self.on_by_default)
            .field("max_resumes", &self.max_resumes)
            .finish_non_exhaustive()
    }
}

impl ResumeLayerBuilder {
    /// Whether requests without a [`ResumeChoice`](crate::ResumeChoice) extension are
    /// resumed (default true; the gateway's `--resume` sets it).
    pub fn on_by_default(mut self, on: bool) -> Self {
        self.on_by_default = on;
        self
    }

    /// The most continuations per call (1 to 8; default 1).
    pub fn max_resumes(mut self, n: u32) -> Self {
        self.max_resumes = n;
        self
    }

    /// How to continue when neither a pin nor what was learned says (default prefill; a
    /// 400 to prefill teaches that (model, provider) to use an instruction).
    pub fn default_mode(mut self, mode: ContinueMode) -> Self {
        self.default_mode = mode;
        self
    }

    /// Always continue `model` served by `provider` (display name, as responses give it)
    /// this way, whatever is learned.
    pub fn pin(
        mut self,
        model: impl Into<String>,
        provider: impl Into<String>,
        mode: ContinueMode,
    ) -> Self {
        self.pinned.insert((model.into(), provider.into()), mode);
        self
    }

    /// Spend continuations from this budget (share the retry layer's: a continuation is an
    /// extra upstream request like a retry); without one, only `max_resumes` bounds them.
    pub fn budget(mut self, budget: Arc<dyn Budget + Send + Sync>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `max_resumes` is outside 1 to 8.
    pub fn build(self) -> Result<ResumeLayer, ConfigError> {
        if !(1..=8).contains(&self.max_resumes) {
            return Err(ConfigError::new("max_resumes must be 1 to 8"));
        }
        Ok(ResumeLayer {
            shared: Arc::new(Shared {
                on_by_default: self.on_by_default,
                max_resumes: self.max_resumes,
                default_mode: self.default_mode,
                budget: self.budget,
                pinned: self.pinned,
                learned: Mutex::new(HashMap::new()),
            }),
        })
    }
}
