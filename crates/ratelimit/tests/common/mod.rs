//! What the rate limiter's tests share.

use std::time::Duration;

use llm_layers_core::{ChatRequest, Message};
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{Key, Limit, Mode, RateLimit, RateLimitLayer};
use tower::Layer;

/// A call to `model`.
pub(crate) fn req(model: &str) -> ChatRequest {
    ChatRequest::new(model, vec![Message::user("hi")])
}

/// A service that answers at once, one token.
pub(crate) fn instant() -> MockChat {
    MockChat::with_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO))
}

/// One call per 4 s (burst 1) over [`instant`], a call waiting up to 10 s for its turn.
pub(crate) fn one_per_4s_waiting() -> RateLimit<MockChat> {
    RateLimitLayer::builder()
        .requests(
            Limit::new(1, Duration::from_secs(4))
                .burst(1)
                .mode(Mode::Wait(Duration::from_secs(10))),
        )
        .build()
        .unwrap()
        .layer(instant())
}

/// One global token limit of 1,000 per `period` (burst 1,000), refusing what does not fit,
/// over `mock`.
#[allow(dead_code)] // not every test file uses every helper
pub(crate) fn global_tokens(mock: &MockChat, period: Duration) -> RateLimit<MockChat> {
    RateLimitLayer::builder()
        .tokens(
            Limit::new(1000, period)
                .burst(1000)
                .key(Key::global())
                .mode(Mode::Reject),
        )
        .build()
        .unwrap()
        .layer(mock.clone())
}

/// A call to `m` asking for at most `n` output tokens.
#[allow(dead_code)]
pub(crate) fn asking(n: u32) -> ChatRequest {
    let mut r = req("m");
    r.body_mut().max_tokens = Some(n);
    r
}
