//! `llm-layers-mock`: serve a mock OpenRouter for manual runs and benchmarks.
//!
//! ```text
//! llm-layers-mock [--preset NAME | --scenario FILE] [--listen ADDR] [--time-scale X] [--seed N]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use llm_layers_mock::{MockServer, Scenario};

const USAGE: &str = "usage: llm-layers-mock [--preset healthy|fat_tail|outage|rate_limited|chaos|all_down | --scenario FILE.json|FILE.toml] [--listen 127.0.0.1:8090] [--time-scale X] [--seed N]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-layers-mock: {e}");
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut scenario = Scenario::healthy();
    let mut listen: SocketAddr = "127.0.0.1:8090".parse().map_err(|e| format!("{e}"))?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--preset" => {
                let name = value()?;
                scenario = Scenario::preset(&name).ok_or_else(|| {
                    format!("unknown preset {name:?}; known: {:?}", Scenario::PRESETS)
                })?;
            }
            "--scenario" => {
                scenario = Scenario::from_file(std::path::Path::new(&value()?))
                    .map_err(|e| e.to_string())?;
            }
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--time-scale" => {
                scenario.time_scale = value()?.parse().map_err(|e| format!("--time-scale: {e}"))?
            }
            "--seed" => scenario.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    scenario.validate().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let server = MockServer::bind(listen, scenario)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "mock OpenRouter listening; OPENROUTER_BASE_URL={}",
            server.base_url()
        );
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        Ok(())
    })
}
