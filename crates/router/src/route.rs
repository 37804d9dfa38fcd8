//! What a router decided for one call: carried in the response's
//! [`ResponseMeta::extensions`](llm_layers_core::ResponseMeta::extensions).

use std::sync::{Arc, OnceLock};

use metrics::Counter;

/// What a router decided for one call, in the stream's `meta().extensions`.
///
/// ```
/// # use llm_layers_core::ChatStream;
/// use llm_layers_router::Route;
/// # let stream = ChatStream::empty();
/// if let Some(route) = stream.meta().extensions.get::<Route>() {
///     println!("{} because {}", route.model, route.reason.as_str());
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Route {
    /// The tier the request named (`None` for a concrete model).
    pub tier: Option<Arc<str>>,
    /// The model it sent the call to.
    pub model: String,
    /// Why that model.
    pub reason: RouteReason,
    /// What it did with the provider order.
    pub order: OrderDecision,
}

/// Why a router chose a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouteReason {
    /// The request named a concrete model: left as it was.
    Concrete,
    /// The first candidate of the tier whose measured latency and success meet the SLA.
    Sla,
    /// A candidate with too few samples (or back from its cool-down), within the
    /// exploration share.
    Explore,
    /// No candidate meets the SLA: the best measured one.
    BestMeasured,
    /// Nothing is measured yet: the tier's first candidate.
    Unmeasured,
}

impl RouteReason {
    /// A short, stable name, fit for a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            RouteReason::Concrete => "concrete",
            RouteReason::Sla => "sla",
            RouteReason::Explore => "explore",
            RouteReason::BestMeasured => "best_measured",
            RouteReason::Unmeasured => "unmeasured",
        }
    }
}

/// What a router did with `provider.order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OrderDecision {
    /// Set it from measured TTFT, fastest first.
    Learned,
    /// Left routing to OpenRouter (or put an under-sampled provider first), within the
    /// exploration share, so every provider keeps being measured.
    Explore,
    /// The caller (or the tier) set its own order or sort: never overwritten.
    Caller,
    /// Too little is measured for this model, or learning is off.
    Unchanged,
    /// Set by a `cheapest` or `weighted` [`Objective`](crate::Objective): price and the
    /// SLA first, then speed.
    Priced,
}

impl OrderDecision {
    /// A short, stable name, fit for a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderDecision::Learned => "learned",
            OrderDecision::Explore => "explore",
            OrderDecision::Caller => "caller",
            OrderDecision::Unchanged => "unchanged",
            OrderDecision::Priced => "priced",
        }
    }
}

/// The `llm_router_decisions_total` handles of one tier (or of the calls naming none), one
/// per (reason, order), each registered the first time it counts (with the recorder in
/// force then): a routed call builds no labels and looks nothing up in the registry.
#[derive(Debug, Default)]
pub(crate) struct Decisions {
    handles: [[OnceLock<Counter>; 5]; 5],
}

impl Decisions {
    pub(crate) fn count(&self, tier: Option<&str>, reason: RouteReason, order: OrderDecision) {
        self.handles[reason as usize][order as usize]
            .get_or_init(|| {
                metrics::counter!(
                    "llm_router_decisions_total",
                    "tier" => tier.unwrap_or("").to_owned(),
                    "reason" => reason.as_str(),
                    "order" => order.as_str(),
                )
            })
            .increment(1);
    }
}
