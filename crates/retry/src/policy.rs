//! Whether to retry, and what to send next.

use std::sync::Arc;

use llm_layers_core::{
    ChatRequest, Classify, DefaultClassify, ErrorKind, LlmError, TimeoutKind, WholeAnswer,
    default_slug,
};

/// Decides, after a failed attempt, whether to try again, and may rewrite the request for
/// the next attempt. Shared by every call (`&self`); keep per-call state in the request.
///
/// Implemented for closures `Fn(&mut ChatRequest, &LlmError, u32) -> bool`.
pub trait Policy: Send + Sync + 'static {
    /// `attempt` is the number of the attempt that just failed (1 for the first).
    fn retry(&self, req: &mut ChatRequest, error: &LlmError, attempt: u32) -> bool;

    /// Whether a retry after `error` draws on the retry budget (default: yes). A retry that
    /// a throttle paces (it goes to another provider, or waits out a hold) adds no load to
    /// a struggling provider, so [`DefaultPolicy`] does not charge it.
    fn charges_budget(&self, error: &LlmError) -> bool {
        let _ = error;
        true
    }
}

impl<F> Policy for F
where
    F: Fn(&mut ChatRequest, &LlmError, u32) -> bool + Send + Sync + 'static,
{
    fn retry(&self, req: &mut ChatRequest, error: &LlmError, attempt: u32) -> bool {
        self(req, error, attempt)
    }
}

/// The default policy: retry what the [`Classify`] calls retriable, up to `max_retries`, and
/// (on by default) keep the provider that failed out of the next attempt by adding it to
/// `provider.ignore`, unless that would leave the request's `only` list empty.
///
/// **Throttled is not broken**: a throttle (a provider's `429`, or the breaker's fast
/// `RateLimited` when every known provider is held) has its own allowance on top of
/// `max_retries` ([`max_throttled`](DefaultPolicy::max_throttled), default 8, for throttles
/// that move at once to a free provider and again for those that wait), is not charged to
/// the budget; when the breaker says every provider is held, the providers this policy
/// avoided are given back for the next attempt.
///
/// ```
/// use llm_layers_core::{ChatRequest, LlmError, Message};
/// use llm_layers_retry::{DefaultPolicy, Policy};
/// let p = DefaultPolicy::new(2);
/// let mut req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let e = LlmError::status(http::StatusCode::BAD_GATEWAY, None).with_provider("DeepInfra");
/// assert!(p.retry(&mut req, &e, 1));
/// assert_eq!(req.body().provider.as_ref().and_then(|p| p.ignore.as_deref()), Some(&["deepinfra".to_owned()][..]));
/// assert!(!p.retry(&mut req, &e, 3), "two retries at most");
/// ```
#[derive(Clone)]
#[must_use]
pub struct DefaultPolicy {
    classify: Arc<dyn Classify>,
    max_retries: u32,
    max_throttled: u32,
    avoid_failed_provider: bool,
    slug: fn(&str) -> String,
}

impl std::fmt::Debug for DefaultPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultPolicy")
            .field("max_retries", &self.max_retries)
            .field("max_throttled", &self.max_throttled)
            .field("avoid_failed_provider", &self.avoid_failed_provider)
            .finish_non_exhaustive()
    }
}

impl DefaultPolicy {
    /// Up to `max_retries` retries of what [`DefaultClassify`] calls retriable.
    pub fn new(max_retries: u32) -> Self {
        DefaultPolicy {
            classify: Arc::new(DefaultClassify),
            max_retries,
            max_throttled: 8,
            avoid_failed_provider: true,
            slug: default_slug,
        }
    }

    /// Uses another classification.
    pub fn classify(mut self, c: impl Classify) -> Self {
        self.classify = Arc::new(c);
        self
    }

    /// Retries after throttles, counted apart from `max_retries` (default 8): this many
    /// that move to a free provider, and this many that wait for a hold to end.
    pub fn max_throttled(mut self, n: u32) -> Self {
        self.max_throttled = n;
        self
    }

    /// Whether `e` is a throttle: the classifier says so, or a local fast error says every
    /// provider is held.
    fn is_throttle(&self, e: &LlmError) -> bool {
        e.kind() == ErrorKind::RateLimited || self.classify.classify(e).throttled
    }

    /// Whether to add the failed provider to `provider.ignore` (default on).
    pub fn avoid_failed_provider(mut self, on: bool) -> Self {
        self.avoid_failed_provider = on;
        self
    }

    /// How provider display names become slugs.
    pub fn slug_with(mut self, f: fn(&str) -> String) -> Self {
        self.slug = f;
        self
    }
}

/// A request extension: the slugs this policy added to `provider.ignore`, so it can take
/// them back when they left no provider at all.
#[derive(Debug, Clone, Default)]
struct Avoided(Vec<String>);

/// A request extension: retries spent on throttles, and on 404s our own avoidance caused
/// (neither counts toward `max_retries`; the rest of `attempt` is failures).
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    /// Throttles that made the call wait (no other provider was free).
    throttled: u32,
    /// Throttles that moved the call at once to another provider.
    moved: u32,
    ours: u32,
}

/// Takes back the slugs this policy added to `provider.ignore`.
fn give_back(req: &mut ChatRequest) -> bool {
    let Some(Avoided(added)) = req.extensions_mut().remove::<Avoided>() else {
        return false;
    };
    if let Some(ignore) = req
        .body_mut()
        .provider
        .as_mut()
        .and_then(|p| p.ignore.as_mut())
    {
        ignore.retain(|s| !added.contains(s));
    }
    true
}

impl Policy for DefaultPolicy {
    fn retry(&self, req: &mut ChatRequest, error: &LlmError, attempt: u32) -> bool {
        // A 404 right after we avoided providers means we left the model none ("no
        // endpoints"): give them back and retry rather than surface an error we caused
        // (once per set avoided, so this cannot loop).
        let mut spent = req.extensions().get::<Spent>().copied().unwrap_or_default();
        if error.status_code().map(|s| s.as_u16()) == Some(404) && give_back(req) {
            spent.ours += 1;
            req.extensions_mut().insert(spent);
            return true;
        }
        // The layer that raised it knows no wait can help (every provider throttles
        // whatever is sent): the caller gets it now.
        if error.no_retry() {
            return false;
        }
        let throttle = self.is_throttle(error);
        // A throttle that moves to a free provider and one that waits are counted apart:
        // moving costs the upstream nothing it asked us not to spend.
        let moves = throttle && error.retry_elsewhere();
        if moves {
            if spent.moved >= self.max_throttled {
                return false;
            }
        } else if throttle {
            if spent.throttled >= self.max_throttled {
                return false;
            }
        } else if attempt.saturating_sub(spent.throttled + spent.moved + spent.ours)
            > self.max_retries
        {
            return false;
        }
        let mut class = self.classify.classify(error);
        // A whole answer has delivered nothing yet: a stream that went quiet or sent
        // garbage midway is as retriable as one that failed before its first token.
        if req.extensions().get::<WholeAnswer>().is_some()
            && matches!(
                error.kind(),
                ErrorKind::Timeout(TimeoutKind::Idle) | ErrorKind::Protocol(_)
            )
        {
            class.retriable = true;
        }
        if !class.retriable {
            return false;
        }
        if moves {
            spent.moved += 1;
            req.extensions_mut().insert(spent);
        } else if throttle {
            spent.throttled += 1;
            req.extensions_mut().insert(spent);
        }
        if error.kind() == ErrorKind::RateLimited {
            // Every provider left to this request is held or open: after the wait, the
            // ones avoided for earlier failures are candidates again.
            give_back(req);
            return true;
        }
        // A throttled provider is not avoided here: the breaker holds it for exactly its
        // Retry-After, which an ignore for the rest of the call would outlast.
        if self.avoid_failed_provider && class.provider_failure {
            if let Some(p) = error.provider() {
                let slug = (self.slug)(p);
                let leaves_some = req
                    .body()
                    .provider
                    .as_ref()
                    .and_then(|pr| pr.only.as_ref())
                    .is_none_or(|only| {
                        only.iter()
                            .any(|o| !llm_layers_core::slug_matches(&slug, o))
                    });
                let already = req
                    .body()
                    .provider
                    .as_ref()
                    .and_then(|pr| pr.ignore.as_ref())
                    .is_some_and(|i| i.iter().any(|s| s.eq_ignore_ascii_case(&slug)));
                if leaves_some && !already {
                    req.body_mut().provider_mut().add_ignore(&slug);
                    match req.extensions_mut().get_mut::<Avoided>() {
                        Some(a) => a.0.push(slug),
                        None => {
                            req.extensions_mut().insert(Avoided(vec![slug]));
                        }
                    }
                }
            }
        }
        true
    }

    fn charges_budget(&self, error: &LlmError) -> bool {
        !self.is_throttle(error)
    }
}
