//! The request extensions the layers set and read: deadlines, what kind of attempt a request
//! is, who asked, and how a call is routed.

use std::sync::Arc;

use tokio::time::Instant;

use super::ChatRequest;

/// A request extension: the instant by which the whole call must be done.
///
/// Retry and hedge never start an attempt, or sleep a backoff, that cannot finish before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

/// A request extension: the caller wants one whole answer (a non-streaming call), so nothing
/// reaches it before the end of the stream. Layers may then treat the end of the stream as
/// the commit point: the retry layer, for one, retries a mid-stream failure of such a call
/// as it would a failure before the first token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WholeAnswer;

/// A request extension: why this upstream request was sent, set by the layer that sends a
/// second one for the same call (a retry, a hedge, a continuation of a broken stream). A
/// request without it is the call's first attempt. Spans and logs read it; nothing decides
/// on it.
///
/// ```
/// use llm_layers_core::{AttemptKind, ChatRequest, Message};
/// let mut req = ChatRequest::new("m", vec![Message::user("hi")]);
/// assert_eq!(AttemptKind::of(&req), AttemptKind::First);
/// req.extensions_mut().insert(AttemptKind::Hedge);
/// assert_eq!(AttemptKind::of(&req).as_str(), "hedge");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttemptKind {
    /// The call's own first request.
    #[default]
    First,
    /// Sent again after a failure (the retry layer).
    Retry,
    /// Raced against a slow first attempt (the hedge layer).
    Hedge,
    /// Continues a stream that broke mid-answer (the resume layer).
    Continuation,
}

impl AttemptKind {
    /// The kind a request carries (`First` when none).
    pub fn of(req: &ChatRequest) -> AttemptKind {
        req.extensions()
            .get::<AttemptKind>()
            .copied()
            .unwrap_or_default()
    }

    /// `first`, `retry`, `hedge` or `continuation`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::First => "first",
            AttemptKind::Retry => "retry",
            AttemptKind::Hedge => "hedge",
            AttemptKind::Continuation => "continuation",
        }
    }
}

/// A request extension: a count, shared by every attempt of one call (requests are cloned
/// per attempt; the count is not), of the upstream requests the call's own layers gave up
/// before their first token: a hedge that lost, an attempt cut by a first-token deadline,
/// the one in flight when the caller left. An upstream may bill each for the prompt it read
/// and reports nothing for it: what a budget charges them from. The per-attempt
/// `LatencyLayer` counts them.
///
/// ```
/// use llm_layers_core::{ChatRequest, GivenUp, Message};
/// let given_up = GivenUp::default();
/// let mut req = ChatRequest::new("m", vec![Message::user("hi")]);
/// req.extensions_mut().insert(given_up.clone());
/// let attempt = req.clone();
/// if let Some(g) = attempt.extensions().get::<GivenUp>() {
///     g.add();
/// }
/// assert_eq!(given_up.count(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct GivenUp(Arc<std::sync::atomic::AtomicU32>);

impl GivenUp {
    /// One more attempt given up.
    pub fn add(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The attempts given up so far.
    pub fn count(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A request extension: who the call is for (rate limits and metrics key on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(pub Arc<str>);

/// A request extension: scheduling priority; higher goes first, low is shed first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub u8);

/// A request extension: other models that may serve this call, best first (a router sets
/// it from a tier's remaining candidates; a hedge policy may race the next one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternatives(pub Arc<[String]>);

/// A request extension: which provider a router sent the first attempt to and what a
/// hedge should do about it. A hedge reads its delay from the quantile of `first` (the
/// provider the call is actually waiting on, not the model's whole mixture), races no
/// later than `race_after`, and sends its request with `hedge_order` when set.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ProviderPlan {
    /// The provider the first attempt is sent to, by display name (as streams and the
    /// latency store name it); `None` when routing is left to the upstream.
    pub first: Option<Arc<str>>,
    /// The provider order (slugs) a hedge should send; `None`: the same request again (a
    /// fresh draw from the same provider's pool).
    pub hedge_order: Option<Arc<[String]>>,
    /// Race a hedge no later than this: set when the first attempt *explores* (goes to a
    /// provider that is not the best known), so exploring never costs more than the best
    /// provider's own typical first token.
    pub race_after: Option<std::time::Duration>,
}

/// In [`ResponseMeta::extensions`](crate::ResponseMeta::extensions): the API key that
/// served the call, by its id (a name, or `…` and its last four characters), never its
/// text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(pub Arc<str>);

/// In [`ResponseMeta::extensions`](crate::ResponseMeta::extensions): the upstream that
/// served the call, by the name it was configured with (`"openrouter"`, `"direct"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamName(pub Arc<str>);

impl ProviderPlan {
    /// A plan whose first attempt goes to `first`.
    pub fn new(first: Option<Arc<str>>) -> Self {
        ProviderPlan {
            first,
            ..ProviderPlan::default()
        }
    }

    /// Sets the order a hedge sends.
    #[must_use]
    pub fn hedge_order(mut self, order: Arc<[String]>) -> Self {
        self.hedge_order = Some(order);
        self
    }

    /// Sets the latest delay before a hedge races.
    #[must_use]
    pub fn race_after(mut self, d: std::time::Duration) -> Self {
        self.race_after = Some(d);
        self
    }

    /// Whether the first attempt explores (a race is planned no later than `race_after`).
    pub fn is_exploring(&self) -> bool {
        self.race_after.is_some()
    }
}
