//! `gateway`: an OpenAI-compatible server in front of OpenRouter.
//!
//! ```text
//! cargo run -p example-gateway                       # no key: the built-in mock upstream
//! OPENROUTER_API_KEY=sk-or-... cargo run -p example-gateway -- --listen 0.0.0.0:8080
//! ```

use std::process::ExitCode;

use example_gateway::{Config, config::USAGE, start};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

fn main() -> ExitCode {
    let config = match Config::from_args_env(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gateway: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in llm_layers_latency::names::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
            .map_err(|e| e.to_string())?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let described = config.describe();
    let no_key = config.api_key.is_none();
    let preset = config.mock_preset.clone();
    let gateway = start(config, Some(handle)).await?;
    if no_key {
        println!(
            "no OPENROUTER_API_KEY: serving from the built-in mock upstream ({preset} preset) at {}",
            gateway.mock().map_or("?", |m| m.base_url())
        );
    }
    println!("{described}");
    println!(
        "llm-layers gateway on http://{}  (POST /v1/chat/completions, GET /v1/models, /healthz, /metrics)",
        gateway.addr()
    );
    shutdown_signal().await;
    println!("shutting down: draining in-flight streams");
    gateway.shutdown().await.map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
