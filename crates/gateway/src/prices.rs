//! What each call cost: the upstream's `usage.cost` when it reports one, else the usage at
//! the serving model's price from the upstream's catalog (`GET /models`, its `pricing`),
//! re-read every 10 minutes. Said on each answer (`x-llm-cost-usd` on a whole answer, the
//! usage chunk's `llm_layers.cost_usd` on a stream), in the access log, and summed per model
//! in the `llm_call_cost_usd` histogram.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use llm_layers_core::price::{Cost, Price};
use llm_layers_core::sync::{read, write};
use llm_layers_core::{MODEL_VARIANTS, Usage};
use llm_layers_openrouter::{ModelInfo, OpenRouter};

/// How often the catalog's prices are read again (the leaf caches the catalog an hour).
const REFRESH: Duration = Duration::from_secs(600);

/// The prices of the upstream's models, by model id.
#[derive(Debug, Default)]
pub(crate) struct PriceBook {
    prices: RwLock<HashMap<String, Price>>,
}

impl PriceBook {
    /// Takes the prices of `models`; a model whose price cannot be read (missing, negative:
    /// a router priced by what it routes to) has none, and its calls no estimate.
    pub(crate) fn learn(&self, models: &[ModelInfo]) -> usize {
        let mut unpriced = 0;
        let prices: HashMap<String, Price> = models
            .iter()
            .filter_map(|m| {
                let p = m.extra.get("pricing").map(Price::from_pricing);
                match p {
                    Some(Ok(p)) => Some((m.id.clone(), p)),
                    _ => {
                        unpriced += 1;
                        None
                    }
                }
            })
            .collect();
        let n = prices.len();
        *write(&self.prices) = prices;
        if unpriced > 0 {
            tracing::debug!(
                unpriced,
                "models with no usable price: their calls are not estimated"
            );
        }
        n
    }

    /// `model`'s price, or its base model's (`:nitro`, `:floor` ... route the same model).
    fn price(&self, model: &str) -> Option<Price> {
        let prices = read(&self.prices);
        prices.get(model).copied().or_else(|| {
            MODEL_VARIANTS
                .iter()
                .find_map(|v| model.strip_suffix(v))
                .and_then(|base| prices.get(base).copied())
        })
    }

    /// What a call to `model` that used `usage` cost, counted in `llm_call_cost_usd`.
    pub(crate) fn cost(&self, model: &str, usage: &Usage) -> Option<Cost> {
        let price = self.price(model);
        let cost = Cost::of(usage, price.as_ref())?;
        // Labelled by model only for a model of the catalog (bounded): any other `_OTHER`.
        let label = if price.is_some() {
            model.to_owned()
        } else {
            "_OTHER".to_owned()
        };
        metrics::histogram!("llm_call_cost_usd", "gen_ai.request.model" => label, "source" => cost.source())
            .record(cost.usd());
        Some(cost)
    }

    /// Reads the prices from `leaf`'s catalog now and every [`REFRESH`], while the book is
    /// in use.
    pub(crate) fn refresh_from(self: &Arc<Self>, leaf: OpenRouter) {
        let book = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(book) = book.upgrade() else { return };
                match tokio::time::timeout(Duration::from_secs(10), leaf.models()).await {
                    Ok(Ok(models)) => {
                        book.learn(&models);
                    }
                    _ => tracing::debug!("the catalog did not answer: prices as they were"),
                }
            }
        });
    }
}

/// The USD amount as a header or JSON number: nine decimals (a nano-dollar), no exponent.
pub(crate) fn usd(c: Cost) -> String {
    format!("{:.9}", c.usd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model(id: &str, pricing: serde_json::Value) -> ModelInfo {
        serde_json::from_value(json!({"id": id, "pricing": pricing})).unwrap()
    }

    #[test]
    fn a_call_costs_what_was_reported_else_its_usage_at_the_catalog_price() {
        let book = PriceBook::default();
        let n = book.learn(&[
            model(
                "a/m",
                json!({"prompt": "0.000001", "completion": "0.000002"}),
            ),
            model(
                "openrouter/auto",
                json!({"prompt": "-1", "completion": "-1"}),
            ),
            model("b/m", json!({"prompt": "0.1"})),
        ]);
        assert_eq!(n, 1, "a router's -1 and a missing price are no price");
        let u: Usage = serde_json::from_value(
            json!({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}),
        )
        .unwrap();
        assert_eq!(book.cost("a/m", &u), Some(Cost::Estimated(0.0012)));
        assert_eq!(
            book.cost("a/m:nitro", &u),
            Some(Cost::Estimated(0.0012)),
            "a variant"
        );
        assert_eq!(
            book.cost("openrouter/auto", &u),
            None,
            "never a silent free"
        );
        assert_eq!(book.cost("c/unknown", &u), None);
        let mut reported = u.clone();
        reported.extra.insert("cost".into(), json!(0.5));
        assert_eq!(book.cost("c/unknown", &reported), Some(Cost::Reported(0.5)));
        assert_eq!(usd(Cost::Estimated(0.0012)), "0.001200000");
    }
}
