//! What each call cost: the upstream's `usage.cost` when it reports one, else the usage at
//! the serving endpoint's price (OpenRouter's `/models/{id}/endpoints` `pricing`, from the
//! router's published-stats feed), else at the model's price from the upstream's catalog
//! (`GET /models`, its `pricing`), read the first time a call needs an estimate and again
//! when that is 10 minutes old (an upstream that reports its costs, as OpenRouter does, is
//! never asked; the calls before the first read have no estimate). Said on each answer
//! (`x-llm-cost-usd` on a whole answer, the usage chunk's `llm_layers.cost_usd` on a
//! stream), in the access log, summed per model in the `llm_call_cost_usd` histogram and per
//! model and provider in the `llm_cost_usd_total` counter.

use llm_layers_core::hash::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use llm_layers_core::endpoints::EndpointStats;
use llm_layers_core::price::{Cost, Price};
use llm_layers_core::sync::{lock, read, write};
use llm_layers_core::{MODEL_VARIANTS, Usage};
use llm_layers_latency::PriorFeed;
use llm_layers_openrouter::{ModelInfo, OpenRouter};
use tokio::time::Instant;

/// How often the catalog's prices are read again (the leaf caches the catalog an hour).
const REFRESH: Duration = Duration::from_secs(600);

/// The prices of the upstream's models, by model id.
#[derive(Debug, Default)]
pub(crate) struct PriceBook {
    prices: RwLock<HashMap<String, Price>>,
    /// Where the prices are read from (none: only reported costs).
    catalog: Option<OpenRouter>,
    /// When they were last read, and whether a read is under way.
    read: Mutex<(Option<Instant>, bool)>,
    /// The endpoints' own prices, where published.
    endpoints: Option<PriorFeed>,
    /// Prices from the config file, by model id: they win over the catalog's.
    configured: HashMap<String, Price>,
    /// The cost metrics' handles by their labels (bounded, see [`PriceBook::cost`]), so that
    /// a call does not build and look up two labelled keys.
    handles: Mutex<HashMap<Box<str>, (metrics::Histogram, metrics::Gauge)>>,
}

impl PriceBook {
    /// A book that reads `catalog`'s prices when a call first needs one.
    pub(crate) fn over(catalog: OpenRouter) -> PriceBook {
        PriceBook {
            catalog: Some(catalog),
            ..PriceBook::default()
        }
    }

    /// Also reads each endpoint's own price from `feed` (the published endpoint stats).
    pub(crate) fn with_endpoints(mut self, feed: Option<PriorFeed>) -> PriceBook {
        self.endpoints = feed;
        self
    }

    /// Prices set by the operator (the config file's `[prices]`), which win over the
    /// catalog's.
    pub(crate) fn with_configured(
        mut self,
        prices: impl IntoIterator<Item = (String, Price)>,
    ) -> PriceBook {
        self.configured = prices.into_iter().collect();
        self
    }

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
        self.configured(model)
            .or_else(|| by_model(&read(&self.prices), model))
    }

    /// The config file's price of `model` (or of its base model).
    fn configured(&self, model: &str) -> Option<Price> {
        by_model(&self.configured, model)
    }

    /// The price `provider` publishes for its endpoint of `model` (or of its base model).
    fn endpoint_price(&self, model: &str, provider: &str) -> Option<Price> {
        let feed = self.endpoints.as_ref()?;
        feed.price(model, provider).or_else(|| {
            MODEL_VARIANTS
                .iter()
                .find_map(|v| model.strip_suffix(v))
                .and_then(|base| feed.price(base, provider))
        })
    }

    /// What a call to `model`, served by `provider` for `tenant` (its gateway key's: the keys
    /// file names them, so the label stays bounded), that used `usage` cost: counted in
    /// `llm_call_cost_usd` and `llm_cost_usd_total`.
    pub(crate) fn cost(
        self: &Arc<Self>,
        model: &str,
        (provider, tenant): (Option<&str>, Option<&str>),
        usage: &Usage,
    ) -> Option<Cost> {
        let reported = usage.extra.get("cost").is_some();
        let listed = self.price(model);
        // The operator's price first, then the serving endpoint's, then the catalog's.
        let price = self
            .configured(model)
            .or_else(|| provider.and_then(|p| self.endpoint_price(model, p)))
            .or(listed);
        if !reported {
            self.read_if_due();
        }
        let cost = Cost::of(usage, price.as_ref())?;
        // Labelled by model only for a model of the catalog, and by provider only for one
        // its published endpoints name (bounded): any other `_OTHER`.
        let label = if listed.is_some() { model } else { "_OTHER" };
        let provider = match (provider, &self.endpoints) {
            (Some(p), Some(feed)) if listed.is_some() && feed.price(model, p).is_some() => p,
            _ => "_OTHER",
        };
        let tenant = tenant.unwrap_or("");
        let key = labels_key(&[label, provider, tenant, cost.source()]);
        let (histogram, total) = {
            let mut handles = lock(&self.handles);
            match handles.get(key.as_str()) {
                Some(h) => h.clone(),
                None => {
                    let h = (
                        metrics::histogram!("llm_call_cost_usd", "gen_ai.request.model" => label.to_owned(), "source" => cost.source()),
                        // A running sum in USD: `metrics` counters count integers, so it is a
                        // gauge that only goes up (`rate()` reads it as a counter; it restarts
                        // at 0 with the process).
                        metrics::gauge!(
                            "llm_cost_usd_total",
                            "gen_ai.request.model" => label.to_owned(),
                            "gen_ai.provider.name" => provider.to_owned(),
                            "tenant" => tenant.to_owned(),
                        ),
                    );
                    handles.insert(key.into_boxed_str(), h.clone());
                    h
                }
            }
        };
        histogram.record(cost.usd());
        total.increment(cost.usd());
        Some(cost)
    }

    /// `cost` with the attempts that broke before a resume added: their usage (their
    /// prompt and the tokens they delivered, as the resume layer estimates it) at the
    /// model's price. An upstream's reported cost covers only the attempts that reached
    /// their usage; a cost it did not report was estimated on the summed usage already,
    /// broken attempts included.
    pub(crate) fn with_broken(&self, model: &str, cost: Cost, broken: &Usage) -> Cost {
        let unreported = broken.prompt_tokens + broken.completion_tokens > 0;
        match (cost, self.price(model)) {
            (Cost::Reported(c), Some(p)) if unreported => Cost::Estimated(c + p.cost(broken)),
            _ => cost,
        }
    }

    /// What `cancelled` attempts of a call to `model` (hedges that lost, cancelled before
    /// their first token) cost, each having read `prompt` tokens: an estimate at the model's
    /// price (an upstream may bill a cancelled request for the prompt it read; none reports
    /// it). None without a price.
    pub(crate) fn cancelled(&self, model: &str, prompt: u64, cancelled: u32) -> Option<f64> {
        let p = self.price(model)?;
        Some(f64::from(cancelled) * p.of_tokens(prompt, 0))
    }

    /// `model`'s price at the dearest of its endpoints: each of prompt, completion and
    /// request at its highest published (the model's own price when no endpoint publishes
    /// one). What a reservation assumes, since a hedge or a fallback may reach any of them.
    /// A price from the config file is the price, whatever the endpoints publish.
    fn dearest(&self, model: &str, listed: Option<Price>) -> Option<Price> {
        if let Some(p) = self.configured(model) {
            return Some(p);
        }
        let endpoints = self.endpoints.as_ref().map(|f| {
            let mut e = f.endpoints(model);
            if e.is_empty() {
                if let Some(base) = MODEL_VARIANTS.iter().find_map(|v| model.strip_suffix(v)) {
                    e = f.endpoints(base);
                }
            }
            e
        });
        endpoints
            .iter()
            .flat_map(|e| e.iter().filter_map(EndpointStats::price))
            .chain(listed)
            .reduce(|a, b| Price {
                prompt: a.prompt.max(b.prompt),
                completion: a.completion.max(b.completion),
                request: a.request.max(b.request),
                cache_read: None,
            })
    }

    /// `model`'s price, reading the catalog first (and waiting for it, at most 10 s) when it
    /// has none: what a budget's reservation needs before the call.
    pub(crate) async fn price_now(self: &Arc<Self>, model: &str) -> Option<Price> {
        if let Some(p) = self.price(model) {
            return self.dearest(model, Some(p));
        }
        let Some(catalog) = self.catalog.clone() else {
            return self.dearest(model, None);
        };
        // The leaf caches the catalog: a model it does not price costs no round trip.
        if let Ok(Ok(models)) =
            tokio::time::timeout(Duration::from_secs(10), catalog.models()).await
        {
            self.learn(&models);
            lock(&self.read).0 = Some(Instant::now());
        }
        self.dearest(model, self.price(model))
    }

    /// Reads the catalog's prices in the background, unless they were read within
    /// [`REFRESH`] or are being read.
    fn read_if_due(self: &Arc<Self>) {
        let Some(catalog) = self.catalog.clone() else {
            return;
        };
        let now = Instant::now();
        {
            let mut r = lock(&self.read);
            let fresh =
                r.0.is_some_and(|at| now.saturating_duration_since(at) < REFRESH);
            if fresh || r.1 {
                return;
            }
            *r = (Some(now), true);
        }
        let book = Arc::downgrade(self);
        tokio::spawn(async move {
            let models = tokio::time::timeout(Duration::from_secs(10), catalog.models()).await;
            let Some(book) = book.upgrade() else { return };
            match models {
                Ok(Ok(models)) => {
                    book.learn(&models);
                }
                _ => tracing::debug!("the catalog did not answer: prices as they were"),
            }
            lock(&book.read).1 = false;
        });
    }
}

/// `model`'s entry in `prices`, or its base model's (`:nitro`, `:floor` ... route the same
/// model).
/// The labels of a metric as one map key, each part prefixed with its length: no two lists
/// of parts give the same key, whatever the parts hold.
fn labels_key(parts: &[&str]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    let mut len = itoa::Buffer::new();
    for p in parts {
        key.push_str(len.format(p.len()));
        key.push(':');
        key.push_str(p);
    }
    key
}

fn by_model(prices: &HashMap<String, Price>, model: &str) -> Option<Price> {
    prices.get(model).copied().or_else(|| {
        MODEL_VARIANTS
            .iter()
            .find_map(|v| model.strip_suffix(v))
            .and_then(|base| prices.get(base).copied())
    })
}

/// The USD amount as a header or JSON number: nine decimals (a nano-dollar), no exponent.
pub(crate) fn usd(c: Cost) -> String {
    format!("{:.9}", c.usd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_keys_are_unambiguous() {
        assert_ne!(labels_key(&["a\nb", "c"]), labels_key(&["a", "b\nc"]));
        assert_ne!(labels_key(&["1:a", ""]), labels_key(&["", "1:a"]));
        assert_eq!(labels_key(&["m", "p"]), labels_key(&["m", "p"]));
    }

    fn model(id: &str, pricing: serde_json::Value) -> ModelInfo {
        serde_json::from_value(json!({"id": id, "pricing": pricing})).unwrap()
    }

    #[test]
    fn a_call_costs_what_was_reported_else_its_usage_at_the_catalog_price() {
        let book = Arc::new(PriceBook::default());
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
        for model in ["a/m", "a/m:nitro"] {
            let c = book.cost(model, (None, None), &u).unwrap();
            assert_eq!(c.source(), "estimated", "{model}");
            // 1,000 × 1e-6 + 100 × 2e-6
            assert!((c.usd() - 0.0012).abs() < 1e-15, "{model}: {c:?}");
        }
        assert_eq!(
            book.cost("openrouter/auto", (None, None), &u),
            None,
            "never a silent free"
        );
        assert_eq!(book.cost("c/unknown", (None, None), &u), None);
        let mut reported = u.clone();
        reported.extra.insert("cost".into(), json!(0.5));
        assert_eq!(
            book.cost("c/unknown", (None, None), &reported),
            Some(Cost::Reported(0.5))
        );
        assert_eq!(usd(Cost::Estimated(0.0012)), "0.001200000");
    }

    #[tokio::test]
    async fn an_endpoint_is_charged_its_own_price_and_a_reservation_the_dearest() {
        use llm_layers_core::endpoints::EndpointStats;
        let endpoints = |name: &str, prompt: &str, completion: &str| EndpointStats {
            provider_name: name.into(),
            pricing: Some(json!({"prompt": prompt, "completion": completion})),
            ..Default::default()
        };
        let published = vec![
            endpoints("Cheap", "0.000001", "0.000001"),
            endpoints("Dear", "0.000004", "0.000003"),
        ];
        let store = llm_layers_latency::LatencyStore::new();
        let feed = PriorFeed::builder(
            store,
            Arc::new(move |_m: String| {
                let e = published.clone();
                Box::pin(async move { Ok(e) }) as _
            }),
        )
        .build()
        .unwrap();
        feed.refresh("a/m").await.unwrap();
        let book = Arc::new(PriceBook::default().with_endpoints(Some(feed)));
        book.learn(&[model(
            "a/m",
            json!({"prompt": "0.000002", "completion": "0.000002"}),
        )]);
        let u: Usage = serde_json::from_value(
            json!({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}),
        )
        .unwrap();
        let at = |provider| {
            book.cost("a/m", (provider, Some("acme")), &u)
                .unwrap()
                .usd()
        };
        assert!(
            (at(Some("Dear")) - 0.0043).abs() < 1e-12,
            "{}",
            at(Some("Dear"))
        );
        assert!((at(Some("Cheap")) - 0.0011).abs() < 1e-12);
        // An endpoint that publishes nothing, or no provider named: the model's price.
        assert!((at(Some("Other")) - 0.0022).abs() < 1e-12);
        assert!((at(None) - 0.0022).abs() < 1e-12);
        // A reservation assumes the dearest of each price, endpoint or model.
        let p = book.price_now("a/m").await.unwrap();
        assert_eq!((p.prompt, p.completion), (0.000004, 0.000003));
        // The config file's price is the price.
        let set = Price {
            prompt: 0.1,
            completion: 0.2,
            request: 0.0,
            cache_read: None,
        };
        let book = Arc::new(PriceBook::default().with_configured([("a/m".to_owned(), set)]));
        assert_eq!(book.price_now("a/m:nitro").await, Some(set));
    }
}
