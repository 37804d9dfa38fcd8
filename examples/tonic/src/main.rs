//! `tonic-chat`: the llm-layers stack behind gRPC.
//!
//! ```text
//! cargo run -p example-tonic                  # no key: the built-in mock upstream
//! cargo run -p example-tonic -- --listen 127.0.0.1:50051
//! ```

use std::net::SocketAddr;

use example_tonic::{ChatServer, ChatService, stack};
use llm_layers_mock::{MockServer, Scenario};
use llm_layers_openrouter::OpenRouter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs a value")?.parse()?,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: tonic-chat [--listen ADDR]"
                )
                .into());
            }
        }
    }
    let key = std::env::var("OPENROUTER_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let mut _mock = None;
    let (base, key) = match key {
        Some(k) => (
            std::env::var("OPENROUTER_BASE_URL")
                .unwrap_or_else(|_| llm_layers_openrouter::DEFAULT_BASE_URL.into()),
            k,
        ),
        None => {
            let m = MockServer::start(Scenario::healthy()).await?;
            println!(
                "no OPENROUTER_API_KEY: serving from the built-in mock at {}",
                m.base_url()
            );
            let url = m.base_url().to_owned();
            _mock = Some(m);
            (url, "sk-or-v1-mock".to_owned())
        }
    };
    let leaf = OpenRouter::builder().api_key(key).base_url(base).build()?;
    println!("gRPC llmlayers.chat.v1.Chat on {listen}");
    tonic::transport::Server::builder()
        .add_service(ChatServer::new(ChatService::new(stack(leaf)?)))
        .serve_with_shutdown(listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
