//! What an upstream publishes about the endpoints (providers) serving a model: OpenRouter's
//! `GET /models/{author}/{slug}/endpoints`. A router takes it as a *prior*: aggregates over
//! everyone's traffic for the last 30 minutes, a first guess that its own measurements
//! replace.
//!
//! ```
//! use llm_layers_core::endpoints::{EndpointStats, ModelEndpoints};
//!
//! let body = r#"{"data":{"id":"openai/gpt-4o","endpoints":[{
//!     "provider_name":"OpenAI","tag":"openai","status":0,
//!     "latency_last_30m":{"p50":0.25,"p75":0.35,"p90":0.48,"p99":0.85},
//!     "throughput_last_30m":{"p50":45.2,"p75":38.0,"p90":25.0,"p99":15.1},
//!     "uptime_last_5m":99.5,"uptime_last_30m":99.9,"uptime_last_1d":null}]}}"#;
//! let parsed: ModelEndpoints = serde_json::from_str(body)?;
//! let e: &EndpointStats = &parsed.data.endpoints[0];
//! assert_eq!((e.provider_name.as_str(), e.tag.as_deref()), ("OpenAI", Some("openai")));
//! assert_eq!(e.latency_last_30m.map(|l| l.p90), Some(Some(0.48)));
//! assert_eq!(e.uptime_last_1d, None);
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde::{Deserialize, Serialize};

/// The body of `GET /models/{author}/{slug}/endpoints`: `{"data": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelEndpoints {
    /// The model and its endpoints.
    pub data: EndpointList,
}

/// A model and the endpoints that serve it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointList {
    /// The model id.
    #[serde(default)]
    pub id: String,
    /// One entry per endpoint.
    #[serde(default)]
    pub endpoints: Vec<EndpointStats>,
}

/// One endpoint's published stats. Every figure may be absent (or `null`) for an endpoint
/// with little traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// The provider's display name, as streams name it (`"OpenAI"`).
    #[serde(default)]
    pub provider_name: String,
    /// The routing slug (`"openai"`, `"deepinfra/turbo"`), as `provider.order` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The endpoint's status code (0 when serving; negative when degraded or down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// Time to first token over the last 30 minutes, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_last_30m: Option<Percentiles>,
    /// Output tokens per second over the last 30 minutes (its p99 is the *slow* end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_last_30m: Option<Percentiles>,
    /// Uptime over the last 5 minutes, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_last_5m: Option<f64>,
    /// Uptime over the last 30 minutes, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_last_30m: Option<f64>,
    /// Uptime over the last day, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_last_1d: Option<f64>,
    /// What this endpoint charges (`{"prompt":"0.000001","completion":"0.000002",...}`,
    /// USD per token as decimal strings): read through [`EndpointStats::price`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<serde_json::Value>,
}

impl EndpointStats {
    /// This endpoint's price, when it publishes a usable one (a missing, negative or
    /// unreadable `prompt` or `completion` is none: never a free endpoint).
    ///
    /// ```
    /// use llm_layers_core::endpoints::EndpointStats;
    /// let e: EndpointStats = serde_json::from_str(
    ///     r#"{"provider_name":"A","pricing":{"prompt":"0.000002","completion":"0.000008"}}"#)?;
    /// assert_eq!(e.price().map(|p| p.completion), Some(0.000008));
    /// let unpriced: EndpointStats = serde_json::from_str(r#"{"provider_name":"B","pricing":{"prompt":"-1"}}"#)?;
    /// assert_eq!(unpriced.price(), None);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn price(&self) -> Option<crate::price::Price> {
        crate::price::Price::from_pricing(self.pricing.as_ref()?).ok()
    }
}

/// Published percentiles; any may be missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    /// 75th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p75: Option<f64>,
    /// 90th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    /// 99th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
}
