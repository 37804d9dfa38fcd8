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
//! OpenRouter's HTTPS upstream negotiates HTTP/2 by ALPN).
//!
//! Side by side with another gateway: start the mock (`llm-layers-mock --preset healthy
//! --time-scale 0 --listen 127.0.0.1:8090`), point the other gateway at it, and pass
//! `--mock-url http://127.0.0.1:8090/api/v1 --compare NAME=http://HOST:PORT/v1/chat/completions[@PID]`:
//! its rows follow ours, with its CPU and RSS when its PID is given.
//!
//! Flags: `--duration-s S` per row (10), `--rates R,R,...` (1000,2000,5000),
//! `--connections N` most connections of the load client at once (256; requests beyond wait
//! for one, and the wait counts in their latency, so an overloaded server is not flooded
//! with new connections), `--streams N` (10000; 0 skips), `--only load|memory`.

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

const RAISED_NOFILE: &str = "LLM_LAYERS_LOAD_NOFILE";
const MOCK_KEY: &str = "sk-or-v1-load";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--child-mock") => child_mock(args.get(1).map_or("healthy", String::as_str)),
        Some("--child-gateway") => child_gateway(args[1..].to_vec()),
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
    let config = example_gateway::Config::from_args_env(args, |k| std::env::var(k).ok())?;
    runtime()?
        .block_on(example_gateway::serve(config))
        .map_err(|e| e.to_string())
}

/// A child process, killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    /// Starts this binary with `args` and waits for the stdout line that contains `marker`;
    /// returns the process and the word after the marker.
    fn spawn(args: &[&str], env: &[(&str, &str)], marker: &str) -> Result<(Proc, String), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(args)
            .env_remove("OPENROUTER_API_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {args:?}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let proc = Proc { child };
        let mut lines = BufReader::new(stdout).lines();
        let found = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split(marker).nth(1) {
                        break rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                    }
                }
                _ => return Err(format!("{args:?} ended before saying {marker:?}")),
            }
        };
        // Keep draining what it prints, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok((proc, found))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }
}

/// User + system CPU time of process `pid` so far, in seconds.
fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = read_proc(pid, "stat");
    // Fields after the command name's closing parenthesis start at field 3 (state);
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / clock_ticks()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    read_proc(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak resident set (`VmHWM`) of `pid` to the current one (Linux `clear_refs` 5).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/proc/PID/FILE`, or empty (and a word on stderr) when it cannot be read.
fn read_proc(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_else(|e| {
        eprintln!("load: cannot read /proc/{pid}/{file}: {e}");
        String::new()
    })
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

struct Opts {
    duration: Duration,
    rates: Vec<u64>,
    streams: usize,
    connections: usize,
    mock_url: Option<String>,
    others: Vec<Target>,
    load: bool,
    memory: bool,
}

fn opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        duration: Duration::from_secs(10),
        rates: vec![1000, 2000, 5000],
        streams: 10_000,
        connections: 256,
        mock_url: None,
        others: Vec::new(),
        load: true,
        memory: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--duration-s" => {
                o.duration =
                    Duration::from_secs_f64(v()?.parse().map_err(|e| format!("--duration-s: {e}"))?)
            }
            "--rates" => {
                o.rates = v()?
                    .split(',')
                    .map(|r| r.trim().parse().map_err(|e| format!("--rates: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--streams" => o.streams = v()?.parse().map_err(|e| format!("--streams: {e}"))?,
            "--connections" => {
                o.connections = v()?.parse().map_err(|e| format!("--connections: {e}"))?;
                if o.connections == 0 {
                    return Err("--connections must be at least 1".into());
                }
            }
            "--mock-url" => {
                let url = v()?;
                http_url("--mock-url", url)?;
                o.mock_url = Some(url.trim_end_matches('/').to_owned());
            }
            "--compare" => o.others.push(compare_target(v()?)?),
            "--only" => match v()?.as_str() {
                "load" => o.memory = false,
                "memory" => o.load = false,
                x => return Err(format!("--only: {x:?} is not load or memory")),
            },
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            x => return Err(format!("unknown argument {x:?}")),
        }
    }
    Ok(o)
}

/// An `http://` URL (the load client speaks plain HTTP), or a word on what is wrong with it.
fn http_url(flag: &str, url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{flag}: {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!("{flag}: {url:?} is not an http://HOST... URL"));
    }
    Ok(uri)
}

/// `NAME=URL` or `NAME=URL@PID`: another OpenAI-compatible gateway in front of the same mock,
/// its chat completions URL, and its process id for CPU and RSS.
fn compare_target(spec: &str) -> Result<Target, String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--compare: {spec:?} is not NAME=URL[@PID]"))?;
    let (url, pid) = match rest.rsplit_once('@') {
        Some((u, p)) => (
            u,
            Some(
                p.parse()
                    .map_err(|e| format!("--compare: pid {p:?}: {e}"))?,
            ),
        ),
        None => (rest, None),
    };
    Ok(Target {
        name: name.to_owned(),
        url: http_url("--compare", url)?,
        auth: Some(HeaderValue::from_static("Bearer sk-or-v1-load")),
        pid,
    })
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
        rt.block_on(memory(o.streams, false))?;
        rt.block_on(memory(o.streams, true))?;
    }
    Ok(())
}

fn gateway(upstream: &str, extra: &[&str]) -> Result<(Proc, String), String> {
    let mut args = vec!["--child-gateway", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::spawn(
        &args,
        &[
            ("OPENROUTER_BASE_URL", upstream),
            ("OPENROUTER_API_KEY", MOCK_KEY),
            ("RUST_LOG", "warn"),
        ],
        "llm-layers gateway on http://",
    )
}

/// Where requests go.
#[derive(Clone)]
struct Target {
    name: String,
    /// Parsed once: every request of a row shares it.
    url: http::Uri,
    auth: Option<HeaderValue>,
    /// Its process, for CPU and peak RSS, when known.
    pid: Option<u32>,
}

/// One row's results.
struct Outcome {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    sent: u64,
    errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

fn body(i: u64, stream: bool) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"openai/gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"load {i}"}}]}}"#
    ))
}

fn request(t: &Target, body: Bytes) -> Request<Full<Bytes>> {
    let mut r = Request::post(t.url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a parsed URI and a static header make a valid request");
    if let Some(a) = &t.auth {
        r.headers_mut().insert(header::AUTHORIZATION, a.clone());
    }
    r
}

/// Whether `chunk` holds a content delta with text (`"content":"x`), the first token.
fn has_token(chunk: &[u8]) -> bool {
    const NEEDLE: &[u8] = br#""content":""#;
    memchr::memmem::find_iter(chunk, NEEDLE)
        .any(|at| chunk.get(at + NEEDLE.len()).is_some_and(|&b| b != b'"'))
}

/// One call: `Ok(latency)` (to the first token when streaming, to the whole body when not)
/// or `Err` when anything but a complete answer came back.
async fn call(
    c: &HttpClient,
    req: Request<Full<Bytes>>,
    stream: bool,
    start: Instant,
) -> Result<Duration, ()> {
    let resp = c.request(req).await.map_err(|_| ())?;
    if resp.status() != StatusCode::OK {
        return Err(());
    }
    let mut body = resp.into_body();
    let mut first = None;
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ())?.into_data() else {
            continue;
        };
        if first.is_none() && has_token(&data) {
            first = Some(Instant::now().saturating_duration_since(start));
        }
        // Keep the last bytes to check how it ended.
        tail.extend_from_slice(&data);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 256);
        }
    }
    let done = Instant::now().saturating_duration_since(start);
    let ok = if stream {
        memchr::memmem::find(&tail, b"[DONE]").is_some()
            && memchr::memmem::find(&tail, br#""error":{"#).is_none()
    } else {
        memchr::memmem::find(&tail, br#""finish_reason":"stop""#).is_some()
    };
    match (ok, stream, first) {
        (true, true, Some(t)) => Ok(t),
        (true, false, _) => Ok(done),
        _ => Err(()),
    }
}

/// Sends `rate` requests a second for `duration` on a fixed schedule, whatever the answers,
/// over at most `connections` connections at once (a request waits for one, and its latency
/// counts the wait).
async fn open_loop(
    c: &HttpClient,
    t: &Target,
    stream: bool,
    rate: u64,
    duration: Duration,
    connections: usize,
) -> Outcome {
    let slots = Arc::new(tokio::sync::Semaphore::new(connections));
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let shared = Arc::new(Mutex::new(Outcome {
        latency: histogram(),
        lag: histogram(),
        sent: 0,
        errors: 0,
    }));
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut i = 0u64;
    while i < total {
        tick.tick().await;
        let now = Instant::now();
        let due = (((now - start).as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while i < due {
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let lag = now.saturating_duration_since(scheduled);
            let req = request(t, body(i, stream));
            let (c, shared, slots) = (c.clone(), shared.clone(), slots.clone());
            tasks.spawn(async move {
                let start = Instant::now();
                let _slot = slots.acquire_owned().await;
                let r = call(&c, req, stream, start).await;
                let mut o = lock(&shared);
                o.sent += 1;
                let _ = o.lag.record(lag.as_micros() as u64);
                match r {
                    Ok(d) => {
                        let _ = o.latency.record((d.as_micros() as u64).max(1));
                    }
                    Err(()) => o.errors += 1,
                }
            });
            i += 1;
        }
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let mut o = std::mem::replace(
        &mut *lock(&shared),
        Outcome {
            latency: histogram(),
            lag: histogram(),
            sent: 0,
            errors: 0,
        },
    );
    if drained.is_err() {
        // Still running after a minute: count them as failed.
        o.errors += total - o.sent;
        o.sent = total;
    }
    o
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Whether process `pid` still runs (its CPU and RSS can be read).
fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn load(o: &Opts) -> Result<(), String> {
    let (mock, mock_url) = match &o.mock_url {
        Some(url) => (None, url.clone()),
        None => {
            let (p, url) = Proc::spawn(&["--child-mock", "healthy"], &[], "ready ")?;
            (Some(p), url)
        }
    };
    let (gw, gw_addr) = gateway(&mock_url, &[])?;
    let mut targets = vec![
        Target {
            name: "mock".into(),
            url: http_url("--mock-url", &format!("{mock_url}/chat/completions"))?,
            auth: Some(HeaderValue::from_static("Bearer sk-or-v1-load")),
            pid: None,
        },
        Target {
            name: "gateway".into(),
            url: http_url("gateway", &format!("http://{gw_addr}/v1/chat/completions"))?,
            auth: None,
            pid: Some(gw.pid()),
        },
    ];
    for other in &o.others {
        targets.push(other.clone());
    }
    let c = client();
    // Warm every path (connections, the gateway's latency store): a second at the lowest
    // rate of the run, so a slower gateway does not start its rows behind.
    let warm_rate = o.rates.iter().copied().min().unwrap_or(100).min(1000);
    for t in &targets {
        for stream in [false, true] {
            let w = open_loop(
                &c,
                t,
                stream,
                warm_rate,
                Duration::from_secs(1),
                o.connections,
            )
            .await;
            if w.errors > 0 {
                eprintln!("load: warm-up against {} had {} errors", t.name, w.errors);
            }
        }
    }
    println!(
        "open-loop load, healthy preset at time scale 0 (no upstream delay), {:.0} s a row, at most {} client \
         connections; latency in ms (streams: to the first token); CPU is the target's user+system time over the row",
        o.duration.as_secs_f64(),
        o.connections
    );
    println!(
        "{:<6} {:>5} {:<10} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9} {:>9} | {:>8} {:>9} {:>9}",
        "mode",
        "rps",
        "target",
        "sent",
        "errors",
        "p50",
        "p99",
        "p99.9",
        "max",
        "lag p99",
        "added p50",
        "p99",
        "p99.9",
        "CPU s",
        "µs/req",
        "peak RSS"
    );
    for stream in [false, true] {
        for &rate in &o.rates {
            let mut base: Option<Outcome> = None;
            for t in &targets {
                let pid = t.pid.filter(|&p| pid_alive(p));
                let cpu0 = pid.map(proc_cpu_seconds);
                if let Some(p) = pid {
                    reset_peak(p);
                }
                let r = open_loop(&c, t, stream, rate, o.duration, o.connections).await;
                let cost = pid.zip(cpu0).map(|(p, c0)| {
                    let cpu = proc_cpu_seconds(p) - c0;
                    format!(
                        "{:>8.2} {:>9.1} {:>5.1} MiB",
                        cpu,
                        cpu * 1e6 / r.sent.max(1) as f64,
                        proc_status_kib(p, "VmHWM") as f64 / 1024.0
                    )
                });
                let added = |q| match &base {
                    Some(a) => format!("{:>9.3}", ms(&r.latency, q) - ms(&a.latency, q)),
                    None => format!("{:>9}", ""),
                };
                println!(
                    "{:<6} {:>5} {:<10} {:>7} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} | {} {} {} | {}",
                    if stream { "stream" } else { "whole" },
                    rate,
                    t.name,
                    r.sent,
                    r.errors,
                    ms(&r.latency, 0.5),
                    ms(&r.latency, 0.99),
                    ms(&r.latency, 0.999),
                    r.latency.max() as f64 / 1000.0,
                    ms(&r.lag, 0.99),
                    added(0.5),
                    added(0.99),
                    added(0.999),
                    cost.unwrap_or_default()
                );
                if base.is_none() {
                    base = Some(r);
                }
            }
        }
    }
    drop(gw);
    drop(mock);
    Ok(())
}

/// Opens `n` streams through the gateway to a mock that goes quiet after the first token,
/// and reports the gateway's resident set per open stream.
async fn memory(n: usize, h2c: bool) -> Result<(), String> {
    let (mock, mock_url) = Proc::spawn(&["--child-mock", "idle"], &[], "ready ")?;
    let max = (n + 100).to_string();
    let (gw, gw_addr) = gateway(
        &mock_url,
        &[
            "--max-concurrency",
            &max,
            "--idle-timeout-ms",
            "0",
            "--total-timeout-ms",
            "0",
            "--upstream-h2c",
            if h2c { "on" } else { "off" },
        ],
    )?;
    let target = Target {
        name: "gateway".into(),
        url: http_url("gateway", &format!("http://{gw_addr}/v1/chat/completions"))?,
        auth: None,
        pid: Some(gw.pid()),
    };
    let c = client();
    // Warm: a few hundred streams opened and closed, so the runtime's pools exist already.
    open_streams(&c, &target, 200, 0).await.close();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (gw_before, mock_before) = (gw.status_kib("VmRSS"), mock.status_kib("VmRSS"));
    let held = open_streams(&c, &target, n, 200).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (gw_after, mock_after) = (gw.status_kib("VmRSS"), mock.status_kib("VmRSS"));
    let opened = held.opened;
    held.close();
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / opened.max(1) as f64;
    let upstream = if h2c {
        "upstream HTTP/2 (h2c), one shared connection"
    } else {
        "upstream HTTP/1.1, a connection per stream"
    };
    println!();
    println!(
        "memory, {upstream}: {opened} of {n} streams open at once through the gateway (each after its first token, then idle)"
    );
    println!(
        "gateway RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per open stream",
        gw_before as f64 / 1024.0,
        gw_after as f64 / 1024.0,
        per(gw_before, gw_after)
    );
    println!(
        "mock    RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per open stream (for comparison)",
        mock_before as f64 / 1024.0,
        mock_after as f64 / 1024.0,
        per(mock_before, mock_after)
    );
    Ok(())
}

/// Streams held open, each past its first token.
struct Held {
    opened: usize,
    close: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Held {
    fn close(mut self) {
        let _ = self.close.send(true);
        self.tasks.abort_all();
    }
}

/// Opens `n` streams, at most 256 connecting at once, and waits until each has its first
/// token (or failed). `seq` makes the prompts distinct from earlier calls.
async fn open_streams(c: &HttpClient, t: &Target, n: usize, seq: u64) -> Held {
    let (close, closed) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let req = request(t, body(seq + i as u64, true));
        let (c, ready, gate, mut closed) =
            (c.clone(), ready_tx.clone(), gate.clone(), closed.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let open = async {
                let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
                if resp.status() != StatusCode::OK {
                    return Err(format!("status {}", resp.status()));
                }
                let mut body = resp.into_body();
                loop {
                    match body.frame().await {
                        Some(Ok(f)) if f.data_ref().is_some_and(|d| has_token(d)) => {
                            return Ok(body);
                        }
                        Some(Ok(_)) => {}
                        other => return Err(format!("stream ended before a token: {other:?}")),
                    }
                }
            };
            // A connection the kernel took with a SYN cookie but the server never accepted
            // would otherwise hang here (and hold its slot) for good.
            let opened = tokio::time::timeout(Duration::from_secs(30), open)
                .await
                .unwrap_or_else(|_| Err("no first token within 30 s".into()));
            drop(permit);
            let body = match opened {
                Ok(body) => body,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            // Hold the stream (and its connection) until told to close.
            let _ = closed.wait_for(|c| *c).await;
            drop(body);
        });
    }
    drop(ready_tx);
    let mut opened = 0;
    let mut failures = std::collections::HashSet::new();
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(e)) => {
                // Say what went wrong, once per kind.
                let kind: String = e.chars().take(60).collect();
                if failures.insert(kind) {
                    eprintln!("a stream did not open: {e}");
                }
            }
            None => break,
        }
    }
    Held {
        opened,
        close,
        tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_token_is_a_content_delta_with_text() {
        assert!(!has_token(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(has_token(
            br#"data: {"choices":[{"delta":{"content":""}}]}\n\ndata: {"choices":[{"delta":{"content":"hi"}}]}"#
        ));
        assert!(!has_token(b": OPENROUTER PROCESSING\n\n"));
    }

    #[test]
    fn compare_targets_parse_with_and_without_a_pid() {
        let t = compare_target("litellm=http://127.0.0.1:4000/v1/chat/completions@42").unwrap();
        assert_eq!(t.name, "litellm");
        assert_eq!(t.url, "http://127.0.0.1:4000/v1/chat/completions");
        assert!(
            compare_target("x=https://h/v1/chat/completions").is_err(),
            "plain HTTP only"
        );
        assert!(compare_target("x=not a url").is_err());
        assert_eq!(t.pid, Some(42));
        let t = compare_target("x=http://h/v1/chat/completions").unwrap();
        assert_eq!(t.pid, None);
        assert!(compare_target("no-equals-sign").is_err());
        assert!(compare_target("x=http://h@notapid").is_err());
    }

    #[test]
    fn flags_are_read_and_bad_ones_refused() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = opts(&args(&[
            "--rates",
            "100, 200",
            "--duration-s",
            "2.5",
            "--only",
            "load",
        ]))
        .unwrap();
        assert_eq!(o.rates, vec![100, 200]);
        assert_eq!(o.duration, Duration::from_millis(2500));
        assert!(o.load && !o.memory);
        assert_eq!(o.connections, 256);
        assert!(opts(&args(&["--connections", "0"])).is_err());
        assert!(opts(&args(&["--only", "everything"])).is_err());
        assert!(opts(&args(&["--rates"])).is_err());
        assert!(opts(&args(&["--what"])).is_err());
        assert!(opts(&args(&["--mock-url", "127.0.0.1:8090"])).is_err());
        let o = opts(&args(&["--mock-url", "http://127.0.0.1:8090/api/v1/"])).unwrap();
        assert_eq!(o.mock_url.as_deref(), Some("http://127.0.0.1:8090/api/v1"));
    }
}
