//! `cargo run -p example-axum` (on a mock upstream when `OPENROUTER_API_KEY` is not set), then
//! `curl -N localhost:3000/ask -d 'Why layers?'`.

use example_axum::{AppState, app, stack};
use llm_layers::mock::{MockServer, Scenario};

#[tokio::main]
async fn main() -> Result<(), llm_layers::core::BoxError> {
    let key = std::env::var("OPENROUTER_API_KEY").ok();
    // With no key, a mock OpenRouter on loopback (real time, OpenRouter's fat tail).
    let mock = match key {
        Some(_) => None,
        None => Some(MockServer::start(Scenario::fat_tail()).await?),
    };
    let url = mock
        .as_ref()
        .map_or("https://openrouter.ai/api/v1", |m| m.base_url());
    let state = AppState {
        greeting: "hello from the app that was here first",
        model: "openai/gpt-4o-mini".to_owned(),
        llm: stack(url, key.as_deref().unwrap_or("sk-or-v1-mock"))?,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "http://127.0.0.1:3000/ask (mock upstream: {})",
        mock.is_some()
    );
    axum::serve(listener, app(state)).await?;
    Ok(())
}
