//! What the mock does with one request, drawn from the scenario's seeded RNG.

use std::time::Duration;

use llm_layers_core::ChatBody;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::scenario::{ProviderSpec, Scenario};

/// The outcome drawn for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No provider is left after the request's preferences (404).
    NoEndpoints,
    /// An error status before the stream.
    Status {
        /// The status.
        code: u16,
        /// `Retry-After` seconds.
        retry_after_s: Option<u64>,
    },
    /// A `400` refusing an assistant prefill, in Anthropic's words.
    RefusePrefill,
    /// The connection is closed before headers.
    Reset,
    /// Headers, then nothing.
    Hang,
    /// 200 with an `{"error"}` body.
    Error200,
    /// An answer; maybe cut after `after` tokens by `cut`.
    Answer {
        /// A mid-stream failure, if drawn.
        cut: Option<(Cut, u32)>,
    },
}

/// How an answer is cut mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// An error event, then `[DONE]`.
    ErrorEvent,
    /// An error event, then end of body.
    ErrorEventEof,
    /// A connection reset.
    Reset,
    /// Nothing more, ever.
    Hang,
}

/// One request's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The index of the provider in the scenario, if one was chosen.
    pub provider: Option<usize>,
    /// What happens.
    pub outcome: Outcome,
    /// Time to first token (scaled).
    pub ttft: Duration,
    /// Gaps after each token (scaled), one per token.
    pub gaps: Vec<Duration>,
    /// How many tokens the answer has.
    pub tokens: u32,
}

impl Plan {
    /// A short label of the outcome, for counters.
    pub fn label(&self) -> String {
        match &self.outcome {
            Outcome::NoEndpoints => "no_endpoints".into(),
            Outcome::Status { code, .. } => format!("status_{code}"),
            Outcome::RefusePrefill => "prefill_refused".into(),
            Outcome::Reset => "reset".into(),
            Outcome::Hang => "hang".into(),
            Outcome::Error200 => "error_200".into(),
            Outcome::Answer { cut: None } => "ok".into(),
            Outcome::Answer {
                cut: Some((Cut::ErrorEvent, _)),
            } => "midstream_error".into(),
            Outcome::Answer {
                cut: Some((Cut::ErrorEventEof, _)),
            } => "midstream_error_eof".into(),
            Outcome::Answer {
                cut: Some((Cut::Reset, _)),
            } => "truncate".into(),
            Outcome::Answer {
                cut: Some((Cut::Hang, _)),
            } => "hang_midstream".into(),
        }
    }
}

/// OpenRouter's `error_type` for a status the mock answers.
pub fn error_type(code: u16) -> &'static str {
    match code {
        429 => "rate_limit_exceeded",
        502 => "provider_unavailable",
        503 | 529 => "provider_overloaded",
        524 | 408 => "timeout",
        _ => "server",
    }
}

/// A seeded RNG for one request: from the scenario seed, the body's hash and how many times
/// that body was seen before, so runs are reproducible under any interleaving.
pub fn request_rng(seed: u64, body_hash: u64, repeat: u64) -> SmallRng {
    let mix = seed ^ body_hash.rotate_left(17) ^ repeat.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    SmallRng::seed_from_u64(mix)
}

/// Chooses the provider for a request, honouring `provider.order/only/ignore/allow_fallbacks`.
pub fn choose_provider<R: Rng + ?Sized>(
    scenario: &Scenario,
    body: &ChatBody,
    rng: &mut R,
) -> Option<usize> {
    let prefs = body.provider.as_ref();
    let allowed = |p: &ProviderSpec| prefs.is_none_or(|pr| pr.allows(&p.slug));
    let candidates: Vec<usize> = (0..scenario.providers.len())
        .filter(|&i| allowed(&scenario.providers[i]))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    if let Some(order) = prefs
        .and_then(|p| p.order.as_ref())
        .filter(|o| !o.is_empty())
    {
        for slug in order {
            if let Some(&i) = candidates
                .iter()
                .find(|&&i| llm_layers_core::slug_matches(slug, &scenario.providers[i].slug))
            {
                return Some(i);
            }
        }
        if prefs.and_then(|p| p.allow_fallbacks) == Some(false) {
            return None;
        }
    }
    let total: f64 = candidates
        .iter()
        .map(|&i| scenario.providers[i].weight)
        .sum();
    let mut x = rng.random_range(0.0..total);
    for &i in &candidates {
        x -= scenario.providers[i].weight;
        if x < 0.0 {
            return Some(i);
        }
    }
    candidates.last().copied()
}

/// Draws the whole plan of one request.
pub fn draw<R: Rng + ?Sized>(scenario: &Scenario, body: &ChatBody, rng: &mut R) -> Plan {
    let tokens = body
        .max_output_tokens()
        .unwrap_or(scenario.default_tokens)
        .clamp(1, scenario.max_tokens);
    let Some(pi) = choose_provider(scenario, body, rng) else {
        return Plan {
            provider: None,
            outcome: Outcome::NoEndpoints,
            ttft: Duration::ZERO,
            gaps: Vec::new(),
            tokens,
        };
    };
    let p = &scenario.providers[pi];
    let ttft = scenario.scaled(p.ttft.sample_ms(rng));
    let prefill = llm_layers_core::continuation::continued(body)
        .is_some_and(|c| c.mode != llm_layers_core::continuation::ContinueMode::Instruction);
    if p.refuses_prefill && prefill {
        return Plan {
            provider: Some(pi),
            outcome: Outcome::RefusePrefill,
            ttft,
            gaps: Vec::new(),
            tokens,
        };
    }
    let gaps = (0..tokens)
        .map(|_| scenario.scaled(p.gap.sample_ms(rng)))
        .collect();
    let f = &p.faults;
    let mut x: f64 = rng.random();
    let mut hit = |rate: f64| {
        x -= rate;
        x < 0.0
    };
    let mut outcome = Outcome::Answer { cut: None };
    let mut decided = false;
    for s in &f.status {
        if hit(s.rate) {
            outcome = Outcome::Status {
                code: s.code,
                retry_after_s: s.retry_after_s,
            };
            decided = true;
            break;
        }
    }
    if !decided {
        let cut_at = rng.random_range(1..=tokens.max(1));
        outcome = if hit(f.reset_before_headers) {
            Outcome::Reset
        } else if hit(f.hang_after_headers) {
            Outcome::Hang
        } else if hit(f.error_200) {
            Outcome::Error200
        } else if hit(f.midstream_error) {
            Outcome::Answer {
                cut: Some((Cut::ErrorEvent, cut_at)),
            }
        } else if hit(f.midstream_error_eof) {
            Outcome::Answer {
                cut: Some((Cut::ErrorEventEof, cut_at)),
            }
        } else if hit(f.truncate) {
            Outcome::Answer {
                cut: Some((Cut::Reset, cut_at)),
            }
        } else if hit(f.hang_midstream) {
            Outcome::Answer {
                cut: Some((Cut::Hang, cut_at)),
            }
        } else {
            Outcome::Answer { cut: None }
        };
    }
    Plan {
        provider: Some(pi),
        outcome,
        ttft,
        gaps,
        tokens,
    }
}
