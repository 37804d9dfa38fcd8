//! The smallest llm-layers stack, over a scripted mock (no API key, no network):
//!
//! ```text
//! cargo run -p example-minimal
//! ```
//!
//! The first provider answers a 502, the second is slow, the third is fast: retry moves on
//! from the 502, the hedge races the slow attempt after 300 ms, and the fast one wins.

use std::time::Duration;

use http::StatusCode;
use llm_layers::core::{BoxError, ChatRequest, LlmError, Message};
use llm_layers::hedge::{HedgeDelay, HedgeLayer};
use llm_layers::mock::{MockChat, Script};
use llm_layers::retry::RetryLayer;
use llm_layers::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// Runs one call through the stack; returns the answer and who served it.
async fn run(mock: MockChat) -> Result<(String, String), BoxError> {
    mock.push(Script::error(LlmError::status(
        StatusCode::BAD_GATEWAY,
        None,
    )));
    mock.push(Script::tokens(MS * 2_000, 3, MS * 10).provider("Slow"));
    mock.push(Script::tokens(MS * 100, 3, MS * 10).provider("Fast"));
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::total(Duration::from_secs(30)))
        .layer(RetryLayer::new(2))
        .layer(
            HedgeLayer::builder()
                .delay(HedgeDelay::Fixed(MS * 300))
                .build()?,
        )
        .layer(TimeoutLayer::first_token(Duration::from_secs(10)))
        .service(mock);
    let stream = svc
        .oneshot(ChatRequest::new("any/model", vec![Message::user("hi")]))
        .await?;
    let provider = stream.meta().provider.clone().unwrap_or_default();
    let answer = stream.collect().await?;
    let text = answer.choices[0]
        .message
        .content
        .clone()
        .unwrap_or_default();
    Ok((text, provider))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mock = MockChat::new();
    let (text, provider) = run(mock.clone()).await?;
    println!(
        "{text:?} from {provider} after {} upstream calls",
        mock.calls()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(start_paused = true)]
    async fn the_fast_provider_wins_after_a_retry_and_a_hedge() {
        let mock = llm_layers::mock::MockChat::new();
        let (text, provider) = super::run(mock.clone()).await.unwrap();
        assert_eq!((text.as_str(), provider.as_str()), ("t0 t1 t2 ", "Fast"));
        assert_eq!(mock.calls(), 3);
        assert_eq!(mock.cancelled(), 1, "the slow attempt was dropped");
    }
}
