//! [`Upstreams`]: several upstream services (OpenRouter and a provider's own endpoint, two
//! keys' worth of OpenRouter, a second aggregator) as one, so a hedge can race them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError, UpstreamName};
use tower_service::Service;

use crate::HedgePolicy;

/// A request extension: send this call to upstream number `.0` of an [`Upstreams`]
/// (modulo their number; 0, the preferred one, without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UseUpstream(pub usize);

type BoxFuture = Pin<Box<dyn Future<Output = Result<ChatStream, LlmError>> + Send>>;

/// Several upstream services as one: a call goes to the upstream its [`UseUpstream`]
/// names (the first, preferred one, without it) and its stream names the upstream that
/// served it ([`UpstreamName`] in `meta().extensions`). Under a [`HedgeLayer`](crate::HedgeLayer)
/// with the [`NextUpstream`] policy, a late first token races the next upstream: first
/// token wins, the loser is dropped (its request cancelled), as for any hedge.
///
/// Each call is sent on a clone of its upstream made ready for it (as `oneshot` does), so
/// this service is always ready: one slow upstream never holds back calls to another.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
/// use std::time::Duration;
/// use llm_layers_core::{ChatRequest, Message, UpstreamName};
/// use llm_layers_hedge::{HedgeDelay, HedgeLayer, NextUpstream, Upstreams};
/// use llm_layers_mock::{MockChat, Script};
/// use tower::{Layer, ServiceExt};
///
/// let slow = MockChat::with_default(Script::tokens(Duration::from_secs(5), 2, Duration::ZERO));
/// let fast = MockChat::with_default(Script::tokens(Duration::from_millis(100), 2, Duration::ZERO));
/// let race = HedgeLayer::builder()
///     .delay(HedgeDelay::Fixed(Duration::from_millis(500)))
///     .policy(NextUpstream)
///     .budget_ratio(1.0)
///     .build()
///     .unwrap()
///     .layer(Upstreams::new([("openrouter", slow), ("direct", fast)]).unwrap());
/// let stream = race.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await.unwrap();
/// assert_eq!(stream.meta().extensions.get::<UpstreamName>().unwrap().0.as_ref(), "direct");
/// # });
/// ```
#[derive(Clone)]
pub struct Upstreams<S> {
    upstreams: Arc<[(Arc<str>, S)]>,
}

impl<S> std::fmt::Debug for Upstreams<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.upstreams.iter().map(|(n, _)| &**n).collect();
        f.debug_struct("Upstreams").field("names", &names).finish()
    }
}

impl<S> Upstreams<S> {
    /// Upstreams by name, the preferred first.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](llm_layers_core::ConfigError) for an empty list, an empty name or
    /// a name given twice.
    pub fn new<N: Into<Arc<str>>>(
        upstreams: impl IntoIterator<Item = (N, S)>,
    ) -> Result<Self, llm_layers_core::ConfigError> {
        let upstreams: Vec<(Arc<str>, S)> =
            upstreams.into_iter().map(|(n, s)| (n.into(), s)).collect();
        if upstreams.is_empty() {
            return Err(llm_layers_core::ConfigError::new("no upstreams"));
        }
        for (i, (n, _)) in upstreams.iter().enumerate() {
            if n.trim().is_empty() {
                return Err(llm_layers_core::ConfigError::new("an upstream has no name"));
            }
            if upstreams[..i].iter().any(|(m, _)| m == n) {
                return Err(llm_layers_core::ConfigError::new(format!(
                    "upstream `{n}` is named twice"
                )));
            }
        }
        Ok(Upstreams {
            upstreams: upstreams.into(),
        })
    }

    /// How many upstreams.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// Never: there is at least one.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// The upstreams' names, preferred first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.upstreams.iter().map(|(n, _)| &**n)
    }
}

impl<S> Service<ChatRequest> for Upstreams<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChatRequest) -> BoxFuture {
        let i = req
            .extensions()
            .get::<UseUpstream>()
            .map_or(0, |u| u.0 % self.upstreams.len());
        let (name, svc) = &self.upstreams[i];
        let (name, mut svc) = (name.clone(), svc.clone());
        Box::pin(async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
            let mut stream = svc.call(req).await?;
            stream.meta_mut().extensions.insert(UpstreamName(name));
            Ok(stream)
        })
    }
}

/// A hedge policy for [`Upstreams`]: hedge `n` goes to the next upstream after the one the
/// original went to (wrapping), the request otherwise the same. With
/// [`HedgeDelay::Fixed`](crate::HedgeDelay::Fixed)`(Duration::ZERO)` every call races
/// them all at once ("always race", for a caller who pays for it).
#[derive(Debug, Clone, Copy, Default)]
pub struct NextUpstream;

impl HedgePolicy for NextUpstream {
    fn hedge(&self, original: &ChatRequest, hedge: u32) -> Option<ChatRequest> {
        let mut r = original.clone();
        let first = original
            .extensions()
            .get::<UseUpstream>()
            .map_or(0, |u| u.0);
        r.extensions_mut()
            .insert(UseUpstream(first + hedge as usize));
        Some(r)
    }
}
