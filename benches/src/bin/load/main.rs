//! Open-loop load: the mock OpenRouter alone against the gateway in front of the same mock,
//! then the gateway's memory per open stream.
//!
//! ```text
//! cargo run --release -p llm-layers-bench --bin load
//! cargo run --release -p llm-layers-bench --bin load -- --duration-s 5 --rates 1000,5000 --streams 2000
//! ```
//!
//! The mock (`healthy` preset at time scale 0: no delay) and the gateway run as two child
//! processes of this one (it re-executes itself), so the gateway's CPU time and peak RSS are
//! its own. Requests start on a fixed schedule (every millisecond, the ones then due),
//! whether or not earlier ones have finished, so a stall cannot hide its own tail latency
//! (no coordinated omission); each latency is measured from the moment its request was
//! handed to the client, and the table says how late the generator ran against its
//! schedule (`lag p99`). Latencies go into HDR histograms (µs, 3 significant digits).
//! Streaming rows measure the time to the first content token.
//!
//! Memory: `--streams N` streams (default 10,000) are opened through the gateway to a mock
//! that sends one token and then nothing for ten minutes; the gateway's resident set with all
//! of them open, less its resident set before, divided by the streams open. Twice: with an
//! HTTP/1.1 upstream (a connection per stream) and with h2c (one shared connection, as
//! OpenRouter's HTTPS upstream negotiates HTTP/2 by ALPN), then h2c on both sides (the
//! client's streams multiplexed too, as a service mesh's proxy sends them).
//!
//! Side by side with another gateway: start the mock (`llm-layers-mock --preset healthy
//! --time-scale 0 --listen 127.0.0.1:8090`), point the other gateway at it, and pass
//! `--mock-url http://127.0.0.1:8090/api/v1 --compare NAME=http://HOST:PORT/v1/chat/completions[@PID]`:
//! its rows follow ours, with its CPU and RSS when its PID is given.
//!
//! Flags: `--duration-s S` per row (10), `--rates R,R,...` (1000,2000,5000),
//! `--connections N` most connections of the load client at once (256; requests beyond wait
//! for one, and the wait counts in their latency, so an overloaded server is not flooded
//! with new connections), `--streams N` (10000; 0 skips), `--only load|memory`,
//! `--repeats N` (3: the targets' rows run interleaved N times, medians printed),
//! `--redis-url redis://HOST:PORT` (two more rows: the gateway with a request limit on its
//! memory store, and on that Redis), `--wrap-gateway CMD` (the memory rows' gateway runs
//! under `CMD`, a heap profiler such as `heaptrack`; it exits normally when its row ends, so
//! the profiler writes its profile, whose peak is the row's open streams).
//!
//! Targets: the mock alone, a bare pass-through proxy (the floor any gateway pays), the
//! gateway with no layer (`--stack leaf`: parsing and SSE re-encoding only) and the
//! gateway: the table shows what the layers cost and what the parse/re-encode costs.

mod memory;
mod open_loop;
mod opts;
mod procfs;
mod proxy;
mod report;

use llm_layers_core::sync::lock;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llm_layers_mock::{MockServer, Scenario};
use tokio::time::Instant;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

use memory::*;
use open_loop::*;
use opts::*;
use procfs::*;
use report::*;

const RAISED_NOFILE: &str = "LLM_LAYERS_LOAD_NOFILE";
const MOCK_KEY: &str = "sk-or-v1-load";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--child-mock") => child_mock(args.get(1).map_or("healthy", String::as_str)),
        Some("--child-gateway") => child_gateway(args[1..].to_vec()),
        Some("--child-proxy") => proxy::child_proxy(args.get(1).map_or("", String::as_str)),
        _ if std::env::var_os(RAISED_NOFILE).is_none() => reexec_with_more_files(&args),
        _ => parent(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ten thousand streams need about 20,000 descriptors in the gateway (one downstream, one
/// upstream socket each): raise the limit through the shell, which children inherit.
fn reexec_with_more_files(args: &[String]) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
        .arg(exe)
        .args(args)
        .env(RAISED_NOFILE, "1")
        .status()
        .map_err(|e| format!("cannot re-execute: {e}"))?;
    // The re-executed run has said what went wrong: pass its exit code on, say nothing more.
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The scenario of the memory run: one provider that sends its first token at once, then
/// nothing for ten minutes.
fn idle_scenario() -> Result<Scenario, String> {
    Scenario::from_json(
        r#"{"providers": [{"name": "Idle", "slug": "idle",
            "ttft": {"kind": "fixed", "ms": 0}, "gap": {"kind": "fixed", "ms": 600000}}],
            "default_tokens": 2}"#,
    )
    .map_err(|e| e.to_string())
}

fn child_mock(which: &str) -> Result<(), String> {
    let scenario = match which {
        "idle" => idle_scenario()?,
        _ => Scenario::healthy().with_time_scale(0.0),
    };
    runtime()?.block_on(async move {
        let server = MockServer::start(scenario)
            .await
            .map_err(|e| e.to_string())?;
        println!("ready {}", server.base_url());
        std::future::pending::<()>().await;
        Ok(())
    })
}

fn child_gateway(args: Vec<String>) -> Result<(), String> {
    if std::env::var_os(procfs::EXIT_ON_EOF).is_some() {
        // Run under a profiler: end normally when the parent is done, so it writes its profile.
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    let config = llm_layers_gateway::Config::from_args_env(args, |k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    config
        .runtime()
        .map_err(|e| e.to_string())?
        .block_on(llm_layers_gateway::serve(config))
        .map_err(|e| e.to_string())
}

fn parent(args: &[String]) -> Result<(), String> {
    let o = opts(args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if o.load {
        rt.block_on(load(&o))?;
    }
    if o.memory && o.streams > 0 {
        let wrap = o.wrap_gateway.as_deref();
        rt.block_on(memory(o.streams, false, false, wrap))?;
        rt.block_on(memory(o.streams, true, false, wrap))?;
        rt.block_on(memory(o.streams, true, true, wrap))?;
    }
    Ok(())
}

fn gateway(upstream: &str, extra: &[&str]) -> Result<(Proc, String), String> {
    gateway_under(None, upstream, extra)
}

/// The gateway as a child process, run under `wrapper` (a profiler) when given.
fn gateway_under(
    wrapper: Option<&str>,
    upstream: &str,
    extra: &[&str],
) -> Result<(Proc, String), String> {
    let mut args = vec!["--child-gateway", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::spawn_wrapped(
        wrapper,
        &args,
        &[
            ("OPENROUTER_BASE_URL", upstream),
            ("OPENROUTER_API_KEY", MOCK_KEY),
            ("RUST_LOG", "warn"),
        ],
        "llm-layers gateway on http://",
    )
}
