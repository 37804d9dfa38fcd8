//! What a limit is: its rate and burst ([`Limit`]), its key ([`Key`]), what to do when full
//! ([`Mode`]), and how a token limit estimates a request ([`TokenEstimator`]).

use llm_layers_core::ConfigError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use llm_layers_core::{ChatRequest, Tenant};

use crate::store::Rate;

type KeyFn = dyn Fn(&ChatRequest) -> Option<Arc<str>> + Send + Sync;

/// Which bucket a request goes to: a function of the request. `None` skips the limit.
#[derive(Clone)]
pub struct Key {
    of: Arc<KeyFn>,
    /// The one key of [`Key::global`]: a limit keyed by it is the same for every request,
    /// so it can be a readiness concern.
    global: Option<Arc<str>>,
    /// What it keys by (`global`, `model`, `base_model`, `tenant`, `custom`): part of a
    /// limit's stable name.
    kind: &'static str,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.global {
            Some(_) => f.write_str("Key::global()"),
            None => f.write_str("Key(..)"),
        }
    }
}

impl Key {
    /// One bucket for everything.
    pub fn global() -> Key {
        let all: Arc<str> = Arc::from("*");
        let same = all.clone();
        Key {
            of: Arc::new(move |_| Some(same.clone())),
            global: Some(all),
            kind: "global",
        }
    }

    /// A bucket per model id.
    pub fn model() -> Key {
        Key::from_fn(|r| Some(Arc::from(r.model()))).kind("model")
    }

    /// A bucket per base model: the id lowercased and without its variant suffix
    /// ([`split_variant`](llm_layers_core::split_variant)), so `openai/gpt-4o:nitro` and
    /// `OpenAI/GPT-4o` spend from the bucket of `openai/gpt-4o` (a look-alike id cannot
    /// open a fresh bucket).
    ///
    /// ```
    /// use llm_layers_core::{ChatRequest, Message};
    /// let key = llm_layers_ratelimit::Key::base_model();
    /// let of = |m: &str| key.of_request(&ChatRequest::new(m, vec![Message::user("hi")]));
    /// assert_eq!(of("OpenAI/GPT-4o:nitro"), of("openai/gpt-4o"));
    /// ```
    pub fn base_model() -> Key {
        Key::from_fn(|r| {
            let (base, _) = llm_layers_core::split_variant(r.model());
            Some(if base.bytes().any(|b| b.is_ascii_uppercase()) {
                Arc::from(base.to_ascii_lowercase())
            } else {
                Arc::from(base)
            })
        })
        .kind("base_model")
    }

    /// The bucket key of `r` (`None`: the limit does not apply to it).
    pub fn of_request(&self, r: &ChatRequest) -> Option<Arc<str>> {
        (self.of)(r)
    }

    /// A bucket per [`Tenant`] extension; requests without one are not limited.
    pub fn tenant() -> Key {
        Key::from_fn(|r| r.extensions().get::<Tenant>().map(|t| t.0.clone())).kind("tenant")
    }

    /// Your own key function.
    pub fn from_fn(f: impl Fn(&ChatRequest) -> Option<Arc<str>> + Send + Sync + 'static) -> Key {
        Key {
            of: Arc::new(f),
            global: None,
            kind: "custom",
        }
    }

    fn kind(mut self, kind: &'static str) -> Key {
        self.kind = kind;
        self
    }

    pub(crate) fn of(&self, r: &ChatRequest) -> Option<Arc<str>> {
        (self.of)(r)
    }

    /// The one key every request gets, for [`Key::global`].
    pub(crate) fn global_key(&self) -> Option<&Arc<str>> {
        self.global.as_ref()
    }
}

/// What to do when a bucket is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Wait until it fits, up to this long (and never past the request's deadline); then
    /// reject.
    Wait(Duration),
    /// Reject at once with the exact wait.
    Reject,
}

/// One rate limit: `amount` units per `period`, a burst, a key, a mode, and a stable name.
///
/// The name is what a shared store calls its buckets, so replicas that share a store must
/// mean the same limit by the same name, whatever order their limits were added in. By
/// default it is made of what the limit keys by and its rate (`tenant:60/60000ms:10`), so a
/// replica started with other limits (a rolling deploy) never spends from a bucket that
/// means another limit; [`Limit::name`] sets it (the gateway names a key's own limit
/// `key:TENANT`).
#[derive(Debug, Clone)]
#[must_use]
pub struct Limit {
    pub(crate) rate: Rate,
    pub(crate) key: Key,
    pub(crate) mode: Mode,
    pub(crate) name: Option<Arc<str>>,
}

impl Limit {
    /// `amount` per `period`; the burst defaults to `amount`, the key to global, the mode to
    /// waiting up to 5 s.
    pub fn new(amount: u64, period: Duration) -> Limit {
        Limit {
            rate: Rate {
                amount,
                period,
                burst: amount,
            },
            key: Key::global(),
            mode: Mode::Wait(Duration::from_secs(5)),
            name: None,
        }
    }

    /// The stable name of this limit's buckets (see [`Limit`]); the rate is added to it.
    pub fn name(mut self, name: impl Into<String>) -> Limit {
        self.name = Some(Arc::from(name.into()));
        self
    }

    /// The name its buckets have in a store: the name given or what it keys by, and its
    /// rate.
    pub(crate) fn stable_name(&self, prefix: &str) -> Arc<str> {
        let r = &self.rate;
        let what = self.name.as_deref().unwrap_or(self.key.kind);
        Arc::from(format!(
            "{prefix}{what}:{}/{}ms:{}",
            r.amount,
            r.period.as_millis(),
            r.burst
        ))
    }

    /// Units that may go at once from a full bucket.
    pub fn burst(mut self, burst: u64) -> Limit {
        self.rate.burst = burst;
        self
    }

    /// The bucket key.
    pub fn key(mut self, key: Key) -> Limit {
        self.key = key;
        self
    }

    /// Wait or reject.
    pub fn mode(mut self, mode: Mode) -> Limit {
        self.mode = mode;
        self
    }

    pub(crate) fn validate(&self, what: &str) -> Result<(), ConfigError> {
        let r = &self.rate;
        if r.amount == 0 || r.burst == 0 || r.period.is_zero() {
            return Err(ConfigError::new(format!(
                "{what} limit: amount, burst and period must be above zero"
            )));
        }
        if r.interval().is_zero() {
            return Err(ConfigError::new(format!(
                "{what} limit: more than one unit per nanosecond"
            )));
        }
        Ok(())
    }
}

/// Estimates the LLM tokens a request will use, for the token limit's reservation.
pub trait TokenEstimator: Send + Sync + 'static {
    /// Prompt and completion tokens expected.
    fn estimate(&self, req: &ChatRequest) -> u64;
}

/// Prompt bytes / 4, plus the most output the request can cost
/// ([`ChatBody::output_budget`](llm_layers_core::ChatBody::output_budget): the larger of
/// `max_tokens` and `max_completion_tokens`, times `n`), or `default_output` per choice
/// when it sets none.
#[derive(Debug, Clone, Copy)]
pub struct DefaultEstimator {
    /// The output assumed when the request sets no limit.
    pub default_output: u64,
}

impl Default for DefaultEstimator {
    fn default() -> Self {
        DefaultEstimator {
            default_output: 1024,
        }
    }
}

impl TokenEstimator for DefaultEstimator {
    fn estimate(&self, req: &ChatRequest) -> u64 {
        let body = req.body();
        body.approx_prompt_tokens().saturating_add(
            body.output_budget()
                .unwrap_or_else(|| self.default_output.saturating_mul(body.choices())),
        )
    }
}
