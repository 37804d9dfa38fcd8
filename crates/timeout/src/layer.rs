use llm_layers_core::ConfigError;
use std::sync::Arc;
use std::time::Duration;

use llm_layers_latency::LatencyStore;
use tower_layer::Layer;

use crate::service::Timeout;

/// The three limits. Also a request extension: a `Timeouts` in a request's extensions
/// overrides the layer's limits field by field (each `Some` wins).
///
/// ```
/// use std::time::Duration;
/// use llm_layers_core::{ChatRequest, Message};
/// use llm_layers_timeout::Timeouts;
/// let mut req = ChatRequest::new("m", vec![Message::user("long essay")]);
/// req.extensions_mut().insert(Timeouts { total: Some(Duration::from_secs(600)), ..Timeouts::default() });
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Timeouts {
    /// Time to first token.
    pub first_token: Option<Duration>,
    /// Longest gap between two chunks once committed.
    pub idle: Option<Duration>,
    /// From the call to the end of the stream.
    pub total: Option<Duration>,
}

impl Timeouts {
    /// `self`, with every field `other` sets taken from `other`.
    pub fn overridden_by(self, other: &Timeouts) -> Timeouts {
        Timeouts {
            first_token: other.first_token.or(self.first_token),
            idle: other.idle.or(self.idle),
            total: other.total.or(self.total),
        }
    }
}

/// Applies [`Timeout`] to a service. Cheap to clone. One limit reads like tower's
/// `TimeoutLayer::new`: [`TimeoutLayer::first_token`], [`TimeoutLayer::idle`],
/// [`TimeoutLayer::total`]; several, or adaptive ones, come from [`TimeoutLayer::builder`].
///
/// There is no `Default`: a timeout layer that enforces nothing is written on purpose, as
/// `TimeoutLayer::builder().build()` (a layer that only applies per-request [`Timeouts`]).
///
/// ```
/// use std::time::Duration;
/// use llm_layers_timeout::TimeoutLayer;
/// let layer = TimeoutLayer::first_token(Duration::from_secs(10));
/// assert_eq!(layer.limits().first_token, Some(Duration::from_secs(10)));
/// assert_eq!(layer.limits().idle, None);
/// ```
#[derive(Debug, Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct TimeoutLayer {
    limits: Timeouts,
    adaptive: Option<Arc<Adaptive>>,
}

impl TimeoutLayer {
    /// A layer enforcing these limits. Never fails: a zero limit fires at once, as tower's
    /// `Timeout` does with a zero duration ([`TimeoutLayer::builder`] refuses zero instead, as
    /// a likely mistake).
    pub fn new(limits: Timeouts) -> TimeoutLayer {
        TimeoutLayer {
            limits,
            adaptive: None,
        }
    }

    /// A layer limiting the time to first token only.
    pub fn first_token(d: Duration) -> TimeoutLayer {
        TimeoutLayer::new(Timeouts {
            first_token: Some(d),
            ..Timeouts::default()
        })
    }

    /// A layer limiting the gap between two chunks of a committed stream only.
    pub fn idle(d: Duration) -> TimeoutLayer {
        TimeoutLayer::new(Timeouts {
            idle: Some(d),
            ..Timeouts::default()
        })
    }

    /// A layer limiting the time from the call to the end of the stream only.
    pub fn total(d: Duration) -> TimeoutLayer {
        TimeoutLayer::new(Timeouts {
            total: Some(d),
            ..Timeouts::default()
        })
    }

    /// A builder; every limit starts off.
    pub fn builder() -> TimeoutLayerBuilder {
        TimeoutLayerBuilder::default()
    }

    /// The limits in force (before per-request overrides).
    pub fn limits(&self) -> Timeouts {
        self.limits
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::with_adaptive(inner, self.limits, self.adaptive.clone())
    }
}

/// Builds a [`TimeoutLayer`]; zero durations are rejected.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct TimeoutLayerBuilder {
    limits: Timeouts,
    store: Option<LatencyStore>,
    first_token_adaptive: Option<AdaptiveLimit>,
    idle_adaptive: Option<AdaptiveLimit>,
}

impl TimeoutLayerBuilder {
    /// Time allowed until the first token (the response future).
    pub fn first_token(mut self, d: Duration) -> Self {
        self.limits.first_token = Some(d);
        self
    }

    /// Longest gap between two chunks of a committed stream.
    pub fn idle(mut self, d: Duration) -> Self {
        self.limits.idle = Some(d);
        self
    }

    /// Time allowed from the call to the end of the stream.
    pub fn total(mut self, d: Duration) -> Self {
        self.limits.total = Some(d);
        self
    }

    /// Derives the first-token limit of each call from what was measured for its model:
    /// `factor ×` the TTFT `quantile` from `store`, clamped to `[min, max]`; `max` while the
    /// model is unmeasured, and then read again every `min` as the attempt waits (a cold
    /// process's first attempts are cut by what the calls beside them measured, not at the
    /// cap). A per-request [`Timeouts`] override still wins.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// use std::time::Duration;
    /// use llm_layers_latency::LatencyStore;
    /// use llm_layers_timeout::{AdaptiveLimit, TimeoutLayer};
    /// let store = LatencyStore::new();
    /// let layer = TimeoutLayer::builder()
    ///     .first_token_adaptive(store.clone(), AdaptiveLimit {
    ///         quantile: 0.99, factor: 3.0,
    ///         min: Duration::from_secs(5), max: Duration::from_secs(60),
    ///     })
    ///     .build()
    ///     ?;
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn first_token_adaptive(mut self, store: LatencyStore, limit: AdaptiveLimit) -> Self {
        self.store = Some(store);
        self.first_token_adaptive = Some(limit);
        self
    }

    /// Derives the idle limit of each stream from what was measured for its model and
    /// provider: `factor ×` the `quantile` of the longest gap per stream, clamped to
    /// `[min, max]`; `max` while unmeasured. A mid-stream hang is then cut within seconds
    /// of what that provider's streams really do, not at a fixed 30 s.
    pub fn idle_adaptive(mut self, store: LatencyStore, limit: AdaptiveLimit) -> Self {
        self.store = Some(store);
        self.idle_adaptive = Some(limit);
        self
    }

    /// Sets all three at once (for `Option`s read from configuration).
    pub fn limits(mut self, limits: Timeouts) -> Self {
        self.limits = limits;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] saying what is wrong: a zero limit, an adaptive limit out of range, or adaptive limits without a latency store.
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        for (name, d) in [
            ("first_token", self.limits.first_token),
            ("idle", self.limits.idle),
            ("total", self.limits.total),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::new(format!(
                    "timeout {name} must be above zero (leave it unset to disable it)"
                )));
            }
        }
        for (name, a) in [
            ("first_token", &self.first_token_adaptive),
            ("idle", &self.idle_adaptive),
        ] {
            if let Some(a) = a {
                a.validate(name)?;
            }
        }
        let adaptive = match (self.first_token_adaptive, self.idle_adaptive) {
            (None, None) => None,
            (first_token, idle) => Some(Arc::new(Adaptive {
                store: self
                    .store
                    .ok_or_else(|| ConfigError::new("adaptive timeouts need a latency store"))?,
                first_token,
                idle,
            })),
        };
        Ok(TimeoutLayer {
            limits: self.limits,
            adaptive,
        })
    }
}

/// A limit derived from measurements: `factor ×` a measured `quantile`, clamped to
/// `[min, max]`; `max` while nothing is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveLimit {
    /// The quantile read, in `(0, 1]`.
    pub quantile: f64,
    /// Multiplies it (at least 1).
    pub factor: f64,
    /// The shortest limit.
    pub min: Duration,
    /// The longest limit, and the limit while nothing is measured.
    pub max: Duration,
}

impl AdaptiveLimit {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if !(self.quantile > 0.0 && self.quantile <= 1.0) {
            return Err(ConfigError::new(format!(
                "adaptive {name} quantile must be in (0, 1]"
            )));
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(ConfigError::new(format!(
                "adaptive {name} factor must be a finite number >= 1"
            )));
        }
        if self.min.is_zero() || self.max < self.min {
            return Err(ConfigError::new(format!(
                "adaptive {name} needs 0 < min <= max"
            )));
        }
        Ok(())
    }

    /// The limit from a measured value, or `max`.
    pub fn of(&self, measured: Option<Duration>) -> Duration {
        measured.map_or(self.max, |m| {
            Duration::try_from_secs_f64(m.as_secs_f64() * self.factor)
                .unwrap_or(self.max)
                .clamp(self.min, self.max)
        })
    }
}

/// The adaptive limits of a layer and the store they read.
#[derive(Debug)]
pub(crate) struct Adaptive {
    pub(crate) store: LatencyStore,
    pub(crate) first_token: Option<AdaptiveLimit>,
    pub(crate) idle: Option<AdaptiveLimit>,
}

impl Adaptive {
    /// The first-token limit of an attempt at `model` (aimed at `provider`) from what is
    /// measured now, or `None` while nothing is.
    pub(crate) fn measured_first_token(
        &self,
        model: &str,
        provider: Option<&str>,
    ) -> Option<Duration> {
        let a = self.first_token?;
        provider
            .and_then(|p| self.store.ttft_quantile(model, Some(p), a.quantile))
            .or_else(|| self.store.ttft_quantile(model, None, a.quantile))
            .map(|m| a.of(Some(m)))
    }

    /// The idle limit of a stream of `model` served by `provider` from what is measured
    /// now, or `None` while nothing is.
    pub(crate) fn measured_idle(&self, model: &str, provider: Option<&str>) -> Option<Duration> {
        let a = self.idle?;
        provider
            .and_then(|p| self.store.max_gap_quantile(model, Some(p), a.quantile))
            .or_else(|| self.store.max_gap_quantile(model, None, a.quantile))
            .map(|m| a.of(Some(m)))
    }
}
