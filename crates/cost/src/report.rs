use std::sync::{Arc, Mutex};

use llm_layers_core::price::Cost;
use llm_layers_core::sync::lock;

/// What one call cost, in its stream's `meta().extensions`: filled when the usage chunk
/// passes, so read it once the stream has ended.
///
/// - [`cost`](Self::cost): the answer's (the upstream's `usage.cost`, else its usage at the
///   serving endpoint's price);
/// - [`given_up`](Self::given_up): the attempts given up before their first token, and
///   [`attempts_usd`](Self::attempts_usd): the cost with their prompts added at the model's
///   price (an estimate: no upstream reports what it bills a cancelled request).
#[derive(Debug, Clone, Default)]
pub struct CostReport(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    cost: Option<Cost>,
    given_up: u32,
    given_up_usd: Option<f64>,
}

impl CostReport {
    /// What the answer cost, once its usage came (none without a usage, or with neither a
    /// reported cost nor a price).
    pub fn cost(&self) -> Option<Cost> {
        lock(&self.0).cost
    }

    /// Attempts of the call given up before their first token.
    pub fn given_up(&self) -> u32 {
        lock(&self.0).given_up
    }

    /// Everything the call's attempts cost: [`cost`](Self::cost) and the given-up attempts'
    /// prompts at the model's price (none when either is unknown).
    pub fn attempts_usd(&self) -> Option<f64> {
        let r = lock(&self.0);
        match (r.cost, r.given_up) {
            (Some(c), 0) => Some(c.usd()),
            (Some(c), _) => r.given_up_usd.map(|g| c.usd() + g),
            (None, _) => None,
        }
    }

    pub(crate) fn set(&self, cost: Option<Cost>, given_up: u32, given_up_usd: Option<f64>) {
        let mut r = lock(&self.0);
        r.cost = cost;
        r.given_up = given_up;
        r.given_up_usd = given_up_usd;
    }
}
