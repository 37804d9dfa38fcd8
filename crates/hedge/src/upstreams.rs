//! [`Upstreams`]: several upstream services (OpenRouter and a provider's own endpoint, two
//! keys' worth of OpenRouter, a second aggregator) as one, so a hedge can race them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use llm_layers_core::{ChatRequest, ChatStream, LlmError, UpstreamName};
use llm_layers_latency::{LatencyStore, Outcome};
use tokio::time::Instant;
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
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
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
///     .build()?
///     .layer(Upstreams::new([("openrouter", slow), ("direct", fast)])?);
/// let stream = race.oneshot(ChatRequest::new("m", vec![Message::user("hi")])).await?;
/// let winner = stream.meta().extensions.get::<UpstreamName>().map(|u| u.0.to_string());
/// assert_eq!(winner.as_deref(), Some("direct"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Upstreams<S> {
    upstreams: Arc<[(Arc<str>, S)]>,
    learn: Option<LatencyStore>,
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
            learn: None,
        })
    }

    /// Records each attempt's time to first token in `store` under (model, upstream name)
    /// (an attempt dropped before its first token as a censored sample), for
    /// [`ChooseUpstream`] to read.
    #[must_use]
    pub fn record_into(mut self, store: LatencyStore) -> Self {
        self.learn = Some(store);
        self
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
        let learn = self.learn.clone();
        Box::pin(async move {
            let model = learn.as_ref().map(|_| req.model().to_owned());
            let mut pending = Pending {
                learn: learn
                    .as_ref()
                    .zip(model.as_deref())
                    .map(|(s, m)| (s, m, &*name)),
                start: Instant::now(),
            };
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
            let result = svc.call(req).await;
            let learned = pending.learn.take();
            if let Some((store, model, up)) = learned {
                let ttft = Instant::now().saturating_duration_since(pending.start);
                let outcome = match &result {
                    Ok(_) => Outcome::Ok,
                    Err(e) => Outcome::of(e),
                };
                store.record(
                    (model, Some(up)),
                    result.is_ok().then_some(ttft),
                    None,
                    outcome,
                );
            }
            drop(pending);
            let mut stream = result?;
            stream
                .meta_mut()
                .extensions
                .insert(UpstreamName(name.clone()));
            Ok(stream)
        })
    }
}

/// An attempt not answered yet: dropped before its first token, it is a censored sample.
struct Pending<'a> {
    learn: Option<(&'a LatencyStore, &'a str, &'a str)>,
    start: Instant,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some((store, model, up)) = self.learn.take() {
            store.record(
                (model, Some(up)),
                Some(Instant::now().saturating_duration_since(self.start)),
                None,
                Outcome::Censored,
            );
        }
    }
}

/// Chooses the upstream a call starts on: the one with the lowest median TTFT for its model
/// in the store an [`Upstreams`] records into ([`Upstreams::record_into`]; one that lost
/// most of its races ranks after those that won theirs), an upstream with fewer than the
/// store's minimum of attempts first (so each gets measured), and a share of
/// calls (`explore`, counted exactly) on the others so a change shows. Sets
/// [`UseUpstream`]; a caller's own is kept. Put it above the hedge, so [`NextUpstream`]
/// races the *other* upstream.
#[derive(Debug, Clone)]
pub struct ChooseUpstreamLayer {
    inner: Arc<Chooser>,
}

#[derive(Debug)]
struct Chooser {
    store: LatencyStore,
    names: Vec<Arc<str>>,
    explore_every: u64,
    calls: std::sync::atomic::AtomicU64,
}

impl ChooseUpstreamLayer {
    /// Chooses among `names` (as given to [`Upstreams::new`], in order), exploring one
    /// call in `explore_every` (0: never).
    pub fn new<'a>(
        store: LatencyStore,
        names: impl IntoIterator<Item = &'a str>,
        explore_every: u64,
    ) -> Self {
        ChooseUpstreamLayer {
            inner: Arc::new(Chooser {
                store,
                names: names.into_iter().map(Arc::from).collect(),
                explore_every,
                calls: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }
}

impl Chooser {
    fn choose(&self, model: &str) -> usize {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let min = self.store.min_samples().max(1);
        let mut best = (0usize, std::time::Duration::MAX);
        for (i, name) in self.names.iter().enumerate() {
            match self.store.stats(model, Some(name)) {
                Some(s) if s.ttft_samples + s.censored >= min => {
                    // Losing most of its races (given up before its first token) says it
                    // is slower than one that wins them, whatever its few samples say.
                    let score = if s.censored > s.ttft_samples {
                        std::time::Duration::MAX / 2 + s.ttft_p50
                    } else {
                        s.ttft_p50
                    };
                    if score < best.1 {
                        best = (i, score);
                    }
                }
                _ => return i,
            }
        }
        if self.explore_every > 0 && n % self.explore_every == self.explore_every - 1 {
            (best.0 + 1 + (n / self.explore_every) as usize % (self.names.len() - 1).max(1))
                % self.names.len()
        } else {
            best.0
        }
    }
}

impl<S> tower_layer::Layer<S> for ChooseUpstreamLayer {
    type Service = ChooseUpstream<S>;

    fn layer(&self, inner: S) -> ChooseUpstream<S> {
        ChooseUpstream {
            inner,
            chooser: self.inner.clone(),
        }
    }
}

/// Sets each call's [`UseUpstream`] (see [`ChooseUpstreamLayer`]).
#[derive(Debug, Clone)]
pub struct ChooseUpstream<S> {
    inner: S,
    chooser: Arc<Chooser>,
}

impl<S> Service<ChatRequest> for ChooseUpstream<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    type Response = ChatStream;
    type Error = LlmError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LlmError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ChatRequest) -> S::Future {
        if req.extensions().get::<UseUpstream>().is_none() && !self.chooser.names.is_empty() {
            let i = self.chooser.choose(req.model());
            req.extensions_mut().insert(UseUpstream(i));
        }
        self.inner.call(req)
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
