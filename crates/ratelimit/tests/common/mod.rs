//! What the rate limiter's tests share.

use std::time::Duration;

use llm_layers_core::{ChatRequest, Message};
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{Limit, Mode, RateLimit, RateLimitLayer};
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
