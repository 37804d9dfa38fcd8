use std::sync::Arc;

use llm_layers_core::price::Price;
use tower_layer::Layer;

use crate::service::Costed;

/// The price of a model at a provider (`None`: the model's own, for what is not served by
/// one provider); `None` when unknown.
pub type PriceFn = Arc<dyn Fn(&str, Option<&str>) -> Option<Price> + Send + Sync>;

/// Applies [`Costed`]: every stream says what its call cost in a
/// [`CostReport`](crate::CostReport). See the [crate docs](crate).
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct CostLayer {
    prices: PriceFn,
}

impl std::fmt::Debug for CostLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostLayer").finish_non_exhaustive()
    }
}

impl CostLayer {
    /// A layer pricing calls with `prices` (model, provider).
    pub fn new(
        prices: impl Fn(&str, Option<&str>) -> Option<Price> + Send + Sync + 'static,
    ) -> CostLayer {
        CostLayer {
            prices: Arc::new(prices),
        }
    }
}

impl<S> Layer<S> for CostLayer {
    type Service = Costed<S>;

    fn layer(&self, inner: S) -> Costed<S> {
        Costed::new(inner, self.prices.clone())
    }
}
