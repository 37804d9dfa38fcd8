//! Whether to retry, and what to send next.

use std::sync::Arc;

use llm_layers_core::{ChatRequest, Classify, DefaultClassify, LlmError, default_slug};

/// Decides, after a failed attempt, whether to try again, and may rewrite the request for
/// the next attempt. Shared by every call (`&self`); keep per-call state in the request.
///
/// Implemented for closures `Fn(&mut ChatRequest, &LlmError, u32) -> bool`.
pub trait Policy: Send + Sync + 'static {
    /// `attempt` is the number of the attempt that just failed (1 for the first).
    fn retry(&self, req: &mut ChatRequest, error: &LlmError, attempt: u32) -> bool;
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
/// ```
/// use llm_layers_core::{ChatRequest, LlmError, Message};
/// use llm_layers_retry::{DefaultPolicy, Policy};
/// let p = DefaultPolicy::new(2);
/// let mut req = ChatRequest::new("m", vec![Message::user("hi")]);
/// let e = LlmError::status(http::StatusCode::BAD_GATEWAY, None).with_provider("DeepInfra");
/// assert!(p.retry(&mut req, &e, 1));
/// assert_eq!(req.body().provider.as_ref().unwrap().ignore.as_deref(), Some(&["deepinfra".to_owned()][..]));
/// assert!(!p.retry(&mut req, &e, 3), "two retries at most");
/// ```
#[derive(Clone)]
pub struct DefaultPolicy {
    classify: Arc<dyn Classify>,
    max_retries: u32,
    avoid_failed_provider: bool,
    slug: fn(&str) -> String,
}

impl std::fmt::Debug for DefaultPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultPolicy")
            .field("max_retries", &self.max_retries)
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
            avoid_failed_provider: true,
            slug: default_slug,
        }
    }

    /// Uses another classification.
    pub fn classify(mut self, c: impl Classify) -> Self {
        self.classify = Arc::new(c);
        self
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

impl Policy for DefaultPolicy {
    fn retry(&self, req: &mut ChatRequest, error: &LlmError, attempt: u32) -> bool {
        if attempt > self.max_retries {
            return false;
        }
        // A 404 right after we avoided providers means we left the model none ("no
        // endpoints"): give them back and retry rather than surface an error we caused.
        if error.status_code().map(|s| s.as_u16()) == Some(404) {
            if let Some(Avoided(added)) = req.extensions_mut().remove::<Avoided>() {
                if let Some(ignore) = req
                    .body_mut()
                    .provider
                    .as_mut()
                    .and_then(|p| p.ignore.as_mut())
                {
                    ignore.retain(|s| !added.contains(s));
                }
                return true;
            }
        }
        let class = self.classify.classify(error);
        if !class.retriable {
            return false;
        }
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
}
