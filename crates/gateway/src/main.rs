//! `llm-gateway`: an OpenAI-compatible server in front of OpenRouter.
//!
//! ```text
//! llm-gateway                                           # no key: the built-in mock upstream
//! OPENROUTER_API_KEY=sk-or-... llm-gateway --listen 0.0.0.0:8080
//! llm-gateway --check-config --config gateway.toml      # check, print what is in force, exit 0/1
//! llm-gateway --help
//! ```

use std::process::ExitCode;

use llm_layers_gateway::{CliExit, Config, serve_reloading};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check-config");
    let config = match Config::from_args_env(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(CliExit::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(CliExit::Error(e)) => {
            eprintln!("llm-gateway: {e}");
            return ExitCode::from(if check { 1 } else { 2 });
        }
    };
    if config.check_only {
        return match config.check(|k| std::env::var(k).ok()) {
            Ok(()) => {
                println!("{}", config.describe());
                println!("configuration valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("llm-gateway: invalid configuration: {e}");
                ExitCode::from(1)
            }
        };
    }
    let rt = match config.runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llm-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs as the environment filters them; traces (the `otel` feature) when an OTLP
    // endpoint is set, whatever the log filter says.
    let logs = tracing_subscriber::fmt::layer().with_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,tower_http=warn".into()),
    );
    let subscriber = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "otel")]
    let traces = match llm_layers_gateway::otel::Tracing::from_env(
        |k| std::env::var(k).ok(),
        rt.handle().clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("llm-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(feature = "otel")]
    let subscriber = subscriber.with(traces.as_ref().map(|t| t.layer()));
    subscriber.init();
    // On SIGHUP: the same flags, the environment and files as they are now (the stack the
    // reload builds checks the rest).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reread = move || {
        Config::from_args_env(args.clone(), |k| std::env::var(k).ok()).map_err(|e| e.to_string())
    };
    let served = rt.block_on(serve_reloading(config, Some(reread)));
    // The spans still queued go out before the process ends (the export runs on the
    // runtime, so the wait does not).
    #[cfg(feature = "otel")]
    if let Some(t) = traces {
        let _ = rt.block_on(tokio::task::spawn_blocking(move || drop(t)));
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
