//! `gateway`: an OpenAI-compatible server in front of OpenRouter.
//!
//! ```text
//! cargo run -p llm-layers-gateway                       # no key: the built-in mock upstream
//! OPENROUTER_API_KEY=sk-or-... cargo run -p llm-layers-gateway -- --listen 0.0.0.0:8080
//! ```

use std::process::ExitCode;

use llm_layers_gateway::{Config, config::USAGE, serve};

fn main() -> ExitCode {
    let config = match Config::from_args_env(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("llm-gateway: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    let rt = match config.runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llm-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
