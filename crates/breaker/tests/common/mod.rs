//! What the breaker's tests share: a request, scripts, a layer with short settings, a call.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub use std::time::Duration;

pub use http::StatusCode;
pub use llm_layers_breaker::{BreakerLayer, SlowCall, State};
pub use llm_layers_core::{ChatRequest, ErrorKind, LlmError, Message};
pub use llm_layers_mock::{MockChat, Script};
pub use tokio::time::Instant;
pub use tower::{Layer, ServiceExt};

pub const S: fn(u64) -> Duration = Duration::from_secs;

pub fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

pub fn ok(provider: &str) -> Script {
    Script::tokens(Duration::from_millis(100), 2, Duration::ZERO).provider(provider)
}

pub fn slow_ok(provider: &str) -> Script {
    Script::tokens(Duration::from_secs(1), 2, Duration::ZERO).provider(provider)
}

pub fn fail(provider: &str) -> Script {
    Script::error(LlmError::status(StatusCode::BAD_GATEWAY, None).with_provider(provider))
}

pub fn layer() -> BreakerLayer {
    BreakerLayer::builder()
        .consecutive_failures(3)
        .open_for(S(10))
        .max_open_for(S(300))
        .open_jitter(0.0)
        .build()
        .unwrap()
}

pub fn ignored(r: &ChatRequest) -> Vec<String> {
    r.body()
        .provider
        .as_ref()
        .and_then(|p| p.ignore.clone())
        .unwrap_or_default()
}

/// "Good" answers once (so the model has another provider), then "Bad" fails three times
/// in a row: with [`layer`]'s settings, bad is open for 10 s.
pub async fn trip_bad(svc: &llm_layers_breaker::Breaker<MockChat>, mock: &MockChat) {
    mock.push(ok("Good"));
    run(svc).await.unwrap();
    for _ in 0..3 {
        mock.push(fail("Bad"));
        assert!(run(svc).await.is_err());
    }
}

pub async fn run(svc: &llm_layers_breaker::Breaker<MockChat>) -> Result<(), LlmError> {
    let s = svc.clone().oneshot(req()).await?;
    s.collect().await.map(|_| ())
}

/// A table of `max_entries` that trips on one failure, open 10 s, unused entries idle after
/// 60 s.
pub fn small_table(max_entries: usize) -> BreakerLayer {
    BreakerLayer::builder()
        .max_entries(max_entries)
        .idle_ttl(S(60))
        .consecutive_failures(1)
        .open_for(S(10))
        .max_open_for(S(10))
        .open_jitter(0.0)
        .build()
        .unwrap()
}

/// The providers `b` has entries for, sorted.
pub fn providers(b: &BreakerLayer) -> Vec<String> {
    let mut p: Vec<String> = b
        .snapshot()
        .into_iter()
        .filter_map(|i| i.provider)
        .collect();
    p.sort();
    p
}
