use std::time::Duration;

use llm_layers_core::LlmError;
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

/// Applies [`Timeout`] to a service. `Copy`; build it with [`TimeoutLayer::builder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer {
    limits: Timeouts,
}

impl TimeoutLayer {
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
        Timeout::new(inner, self.limits)
    }
}

/// Builds a [`TimeoutLayer`]; zero durations are rejected.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayerBuilder {
    limits: Timeouts,
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

    /// Sets all three at once (for `Option`s read from configuration).
    pub fn limits(mut self, limits: Timeouts) -> Self {
        self.limits = limits;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<TimeoutLayer, LlmError> {
        for (name, d) in [
            ("first_token", self.limits.first_token),
            ("idle", self.limits.idle),
            ("total", self.limits.total),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(LlmError::config(format!(
                    "timeout {name} must be above zero (leave it unset to disable it)"
                )));
            }
        }
        Ok(TimeoutLayer {
            limits: self.limits,
        })
    }
}
