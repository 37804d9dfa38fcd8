//! What a provider order optimises: speed, price within an SLA, or a trade of the two.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the provider order of a call optimises. Set per tier (`"objective"` in
/// [`TierConfig`](crate::TierConfig)), for every concrete model
/// ([`LearnedOrderConfig::objective`](crate::LearnedOrderConfig::objective)), or per call
/// as a request extension (the gateway reads it from the `x-llm-objective` header), which
/// wins.
///
/// - `fastest`: the provider a draw finds fastest first (the learned order).
/// - `cheapest`: the cheapest provider whose TTFT quantile and success rate meet the SLA
///   (the tier's, else [`LearnedOrderConfig::sla`](crate::LearnedOrderConfig::sla)), read
///   with the uncertainty the router tracks (one Thompson draw per provider per call, so a
///   provider that may meet it is tried in proportion to that chance); when none meets it,
///   the fastest. Without an SLA, the cheapest provider not failing.
/// - `weighted=W`: the lowest `ln(price) + W · ln(TTFT quantile)` among those meeting the SLA
///   (when there is one): `W = 1` trades 10 % of price for 10 % of latency; `0` is the
///   cheapest, a large `W` the fastest.
///
/// A provider's price is the one its endpoint publishes (OpenRouter's
/// `/models/{id}/endpoints` `pricing`, through the router's
/// [`priors`](crate::RouterLayerBuilder::priors)), at the call's own token estimate (its
/// prompt and output limit); a provider with no price ranks after every priced one, never
/// as free. Under `cheapest` and `weighted` the hedge races the same choice (a fresh
/// attempt to the cheapest provider meeting the SLA), never a dearer one.
///
/// ```
/// use llm_layers_router::Objective;
/// assert_eq!("cheapest".parse::<Objective>()?, Objective::Cheapest);
/// assert_eq!("weighted=0.5".parse::<Objective>()?, Objective::Weighted { latency_weight: 0.5 });
/// assert_eq!(Objective::Weighted { latency_weight: 2.0 }.to_string(), "weighted=2");
/// assert!("cheap".parse::<Objective>().is_err());
/// assert!("weighted=-1".parse::<Objective>().is_err());
/// # Ok::<(), llm_layers_router::ObjectiveError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Objective {
    /// The fastest provider first.
    #[default]
    Fastest,
    /// The cheapest provider that meets the SLA first.
    Cheapest,
    /// The lowest `ln(price) + latency_weight · ln(TTFT quantile)` that meets the SLA first.
    Weighted {
        /// How much a share of latency weighs against the same share of price (≥ 0).
        latency_weight: f64,
    },
}

/// An objective that is not `fastest`, `cheapest` or `weighted=W` (W a finite number ≥ 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectiveError(String);

impl fmt::Display for ObjectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown objective `{}`: fastest, cheapest or weighted=W (W a number at least 0)",
            self.0
        )
    }
}

impl std::error::Error for ObjectiveError {}

impl FromStr for Objective {
    type Err = ObjectiveError;

    fn from_str(s: &str) -> Result<Objective, ObjectiveError> {
        let bad = || ObjectiveError(s.chars().take(64).collect());
        match s.trim() {
            "fastest" => Ok(Objective::Fastest),
            "cheapest" => Ok(Objective::Cheapest),
            "weighted" => Ok(Objective::Weighted {
                latency_weight: 1.0,
            }),
            other => {
                let w = other
                    .strip_prefix("weighted=")
                    .and_then(|w| w.trim().parse::<f64>().ok())
                    .filter(|w| w.is_finite() && *w >= 0.0)
                    .ok_or_else(bad)?;
                Ok(Objective::Weighted { latency_weight: w })
            }
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Objective::Fastest => f.write_str("fastest"),
            Objective::Cheapest => f.write_str("cheapest"),
            Objective::Weighted { latency_weight } => write!(f, "weighted={latency_weight}"),
        }
    }
}

impl TryFrom<String> for Objective {
    type Error = ObjectiveError;

    fn try_from(s: String) -> Result<Objective, ObjectiveError> {
        s.parse()
    }
}

impl From<Objective> for String {
    fn from(o: Objective) -> String {
        o.to_string()
    }
}
