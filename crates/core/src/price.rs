//! Prices and the cost of a call.
//!
//! A [`Price`] is what one model (or one provider's endpoint of it) costs, in USD per token
//! and per request, as OpenRouter's catalog publishes it (`pricing`: decimal strings). The
//! [`Cost`] of a call is what the upstream reported (`usage.cost`) when it did, else its
//! usage at the serving model's price: an estimate, and said to be one.

use serde_json::Value;

use crate::Usage;

/// USD per token (and per request) for one model or endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per prompt token.
    pub prompt: f64,
    /// Per completion token (reasoning tokens included).
    pub completion: f64,
    /// Per request, whatever its tokens.
    pub request: f64,
    /// Per prompt token read from the provider's cache, when it is priced apart.
    pub cache_read: Option<f64>,
}

/// Why a published price cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceError(String);

impl std::fmt::Display for PriceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PriceError {}

/// A price field: a decimal string (OpenRouter's way) or a number, finite and not negative.
fn field(pricing: &Value, name: &str) -> Result<Option<f64>, PriceError> {
    let v = match pricing.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(Value::Number(n)) => n.as_f64(),
        Some(_) => None,
    };
    match v {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
        // OpenRouter's router models publish "-1": priced per call by the model routed to.
        Some(x) if x.is_finite() && x < 0.0 => Err(PriceError(format!(
            "pricing.{name} is {x}: no fixed price (priced by what it routes to)"
        ))),
        _ => Err(PriceError(format!(
            "pricing.{name} is not a price: {}",
            pricing[name]
        ))),
    }
}

impl Price {
    /// From a catalog's `pricing` object (`{"prompt":"0.000001","completion":"0.000002",
    /// "request":"0","input_cache_read":"0.0000001"}`). `prompt` and `completion` are required;
    /// a missing, negative, infinite or unreadable one is an error, never a free model.
    ///
    /// ```
    /// use llm_layers_core::price::Price;
    /// let p = Price::from_pricing(&serde_json::json!({"prompt": "0.000003", "completion": "0.000015"}))?;
    /// assert_eq!((p.prompt, p.completion, p.request), (0.000003, 0.000015, 0.0));
    /// assert!(Price::from_pricing(&serde_json::json!({"prompt": "0.000003"})).is_err());
    /// assert!(Price::from_pricing(&serde_json::json!({"prompt": "-1", "completion": "-1"})).is_err());
    /// # Ok::<(), llm_layers_core::price::PriceError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`PriceError`] naming the field.
    pub fn from_pricing(pricing: &Value) -> Result<Price, PriceError> {
        if !pricing.is_object() {
            return Err(PriceError("no pricing object".into()));
        }
        let required = |name: &str| {
            field(pricing, name)?.ok_or_else(|| PriceError(format!("pricing.{name} is missing")))
        };
        Ok(Price {
            prompt: required("prompt")?,
            completion: required("completion")?,
            request: field(pricing, "request")?.unwrap_or(0.0),
            cache_read: field(pricing, "input_cache_read")?,
        })
    }

    /// What a call of `prompt` and `completion` tokens costs at this price (none read from
    /// a cache): what a router compares endpoints by before the call.
    ///
    /// ```
    /// use llm_layers_core::price::Price;
    /// let p = Price { prompt: 0.000001, completion: 0.000002, request: 0.001, cache_read: None };
    /// assert!((p.of_tokens(1000, 500) - 0.003).abs() < 1e-12);
    /// ```
    pub fn of_tokens(&self, prompt: u64, completion: u64) -> f64 {
        prompt as f64 * self.prompt + completion as f64 * self.completion + self.request
    }

    /// What `usage` costs at this price: prompt tokens (those read from the cache at the
    /// cache price, when there is one), completion tokens, and the request.
    ///
    /// ```
    /// use llm_layers_core::{Usage, price::Price};
    /// let p = Price { prompt: 0.000001, completion: 0.000002, request: 0.0, cache_read: Some(0.0000001) };
    /// let u: Usage = serde_json::from_str(r#"{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500,
    ///     "prompt_tokens_details":{"cached_tokens":400}}"#)?;
    /// // 600 × 1e-6 + 400 × 1e-7 + 500 × 2e-6
    /// assert!((p.cost(&u) - 0.00164).abs() < 1e-12);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage
            .extra
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(usage.prompt_tokens);
        let (cached, fresh) = match self.cache_read {
            Some(_) => (cached, usage.prompt_tokens - cached),
            None => (0, usage.prompt_tokens),
        };
        fresh as f64 * self.prompt
            + cached as f64 * self.cache_read.unwrap_or(self.prompt)
            + usage.completion_tokens as f64 * self.completion
            + self.request
    }
}

/// What a call cost, in USD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cost {
    /// What the upstream said it charged (`usage.cost`).
    Reported(f64),
    /// Its usage at the serving model's published price.
    Estimated(f64),
}

impl Cost {
    /// The upstream's `usage.cost` when it reported a usable one, else `usage` at `price`
    /// (none without a price).
    ///
    /// ```
    /// use llm_layers_core::{Usage, price::{Cost, Price}};
    /// let p = Price { prompt: 0.000001, completion: 0.000002, request: 0.0, cache_read: None };
    /// let mut u: Usage = serde_json::from_str(r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}"#)?;
    /// let c = Cost::of(&u, Some(&p)).ok_or("a price")?;
    /// assert_eq!(c.source(), "estimated");
    /// assert!((c.usd() - 0.00002).abs() < 1e-15); // 10 × 1e-6 + 5 × 2e-6
    /// assert_eq!(Cost::of(&u, None), None);
    /// u.extra.insert("cost".into(), serde_json::json!(0.5));
    /// assert_eq!(Cost::of(&u, None).map(|c| c.usd()), Some(0.5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn of(usage: &Usage, price: Option<&Price>) -> Option<Cost> {
        let reported = usage
            .extra
            .get("cost")
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0);
        match (reported, price) {
            (Some(c), _) => Some(Cost::Reported(c)),
            (None, Some(p)) => Some(Cost::Estimated(p.cost(usage))),
            (None, None) => None,
        }
    }

    /// The amount, in USD.
    pub fn usd(self) -> f64 {
        match self {
            Cost::Reported(c) | Cost::Estimated(c) => c,
        }
    }

    /// `reported` or `estimated`.
    pub fn source(self) -> &'static str {
        match self {
            Cost::Reported(_) => "reported",
            Cost::Estimated(_) => "estimated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_price_that_is_not_one_is_refused_by_name() {
        let bad = [
            (json!({"completion": "0.1"}), "pricing.prompt is missing"),
            (
                json!({"prompt": "x", "completion": "0.1"}),
                "pricing.prompt is not a price",
            ),
            (
                json!({"prompt": "0.1", "completion": true}),
                "pricing.completion is not a price",
            ),
            (
                json!({"prompt": "-0.5", "completion": "0.1"}),
                "no fixed price",
            ),
            (
                json!({"prompt": "NaN", "completion": "0.1"}),
                "pricing.prompt is not a price",
            ),
            (
                json!({"prompt": "inf", "completion": "0.1"}),
                "pricing.prompt is not a price",
            ),
            (
                json!({"prompt": "0.1", "completion": "0.1", "request": "-1"}),
                "pricing.request",
            ),
            (json!("0.1"), "no pricing object"),
        ];
        for (v, want) in bad {
            let e = Price::from_pricing(&v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
        let p =
            Price::from_pricing(&json!({"prompt": 0, "completion": "0", "request": null})).unwrap();
        assert_eq!(
            (p.prompt, p.completion, p.request, p.cache_read),
            (0.0, 0.0, 0.0, None)
        );
    }

    #[test]
    fn cost_counts_each_part_once() {
        let p = Price {
            prompt: 2.0,
            completion: 3.0,
            request: 5.0,
            cache_read: None,
        };
        let mut u = Usage {
            prompt_tokens: 7,
            completion_tokens: 11,
            total_tokens: 18,
            ..Usage::default()
        };
        assert_eq!(p.cost(&u), 7.0 * 2.0 + 11.0 * 3.0 + 5.0);
        // Cached tokens count at the prompt price when the cache is not priced apart, and
        // never more cached tokens than prompt tokens.
        u.extra
            .insert("prompt_tokens_details".into(), json!({"cached_tokens": 50}));
        assert_eq!(p.cost(&u), 7.0 * 2.0 + 11.0 * 3.0 + 5.0);
        let cheap = Price {
            cache_read: Some(0.5),
            ..p
        };
        assert_eq!(cheap.cost(&u), 7.0 * 0.5 + 11.0 * 3.0 + 5.0);
        // A reported cost that is not one is not taken.
        u.extra.insert("cost".into(), json!(-1.0));
        assert_eq!(Cost::of(&u, None), None);
        assert_eq!(Cost::of(&u, Some(&p)).map(Cost::source), Some("estimated"));
        u.extra.insert("cost".into(), json!(0.25));
        assert_eq!(Cost::of(&u, Some(&p)), Some(Cost::Reported(0.25)));
    }
}
