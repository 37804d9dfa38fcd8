//! Memory per open stream through the gateway.

use super::*;

/// Opens `n` streams through the gateway to a mock that goes quiet after the first token,
/// and reports the gateway's resident set per open stream.
/// `h2c`: HTTP/2 to the upstream; `h2_client`: HTTP/2 from the client too (prior knowledge,
/// [`PER_H2_CONNECTION`] streams per connection). `wrap`: a profiler to run the gateway under.
pub(crate) async fn memory(
    n: usize,
    h2c: bool,
    h2_client: bool,
    wrap: Option<&str>,
) -> Result<(), String> {
    let (mock, mock_url) = Proc::spawn(&["--child-mock", "idle"], &[], "ready ")?;
    let max = (n + 100).to_string();
    // The gateway's defaults hold 4,096 connections and 128 streams per HTTP/2 connection
    // (what one abusive peer may take); this bench holds more on purpose.
    let per_h2 = PER_H2_CONNECTION.to_string();
    let (gw, gw_addr) = gateway_under(
        wrap,
        &mock_url,
        &[
            "--max-concurrency",
            &max,
            "--max-connections",
            &max,
            "--max-streams-per-connection",
            &per_h2,
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
        headers: Vec::new(),
    };
    let c = if h2_client {
        Conns::H2(h2_connections(&gw_addr, n.max(200)).await?)
    } else {
        Conns::Pool(Box::new(client()))
    };
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
    let upstream = match (h2c, h2_client) {
        (true, true) => "client and upstream HTTP/2 (h2c), streams multiplexed on both sides",
        (true, false) => "upstream HTTP/2 (h2c), one shared connection",
        _ => "upstream HTTP/1.1, a connection per stream",
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
    if let Some(w) = wrap {
        println!(
            "(the gateway ran under {w:?}: its RSS above is the wrapper's; the profile's peak is these streams)"
        );
    }
    println!(
        "mock    RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per open stream (for comparison)",
        mock_before as f64 / 1024.0,
        mock_after as f64 / 1024.0,
        per(mock_before, mock_after)
    );
    Ok(())
}

/// Streams held open, each past its first token.
pub(crate) struct Held {
    pub(crate) opened: usize,
    pub(crate) close: tokio::sync::watch::Sender<bool>,
    pub(crate) tasks: tokio::task::JoinSet<()>,
}

impl Held {
    pub(crate) fn close(mut self) {
        let _ = self.close.send(true);
        self.tasks.abort_all();
    }
}

/// Streams per client HTTP/2 connection: under the 200 a hyper server allows at once.
pub(crate) const PER_H2_CONNECTION: usize = 190;

/// How the client reaches the gateway: a pool of HTTP/1.1 connections, or HTTP/2 connections
/// made here ([`PER_H2_CONNECTION`] streams each; hyper's pooled client would queue every
/// stream past a server's limit on its one connection).
pub(crate) enum Conns {
    Pool(Box<HttpClient>),
    H2(Vec<hyper::client::conn::http2::SendRequest<Full<Bytes>>>),
}

/// Enough prior-knowledge HTTP/2 connections to `addr` for `n` streams.
async fn h2_connections(
    addr: &str,
    n: usize,
) -> Result<Vec<hyper::client::conn::http2::SendRequest<Full<Bytes>>>, String> {
    let mut out = Vec::new();
    for _ in 0..n.div_ceil(PER_H2_CONNECTION) {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("h2 connect {addr}: {e}"))?;
        let (send, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .map_err(|e| format!("h2 handshake {addr}: {e}"))?;
        tokio::spawn(conn);
        out.push(send);
    }
    Ok(out)
}

/// Opens `n` streams, at most 256 connecting at once, and waits until each has its first
/// token (or failed). `seq` makes the prompts distinct from earlier calls.
pub(crate) async fn open_streams(c: &Conns, t: &Target, n: usize, seq: u64) -> Held {
    let (close, closed) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let req = request(t, body(seq + i as u64, true));
        let send = match c {
            Conns::Pool(c) => Ok(HttpClient::clone(c)),
            Conns::H2(conns) => Err(conns[i / PER_H2_CONNECTION % conns.len()].clone()),
        };
        let (ready, gate, mut closed) = (ready_tx.clone(), gate.clone(), closed.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let open = async {
                let resp = match send {
                    Ok(c) => c.request(req).await.map_err(|e| format!("{e:?}"))?,
                    Err(mut h2) => h2.send_request(req).await.map_err(|e| format!("{e:?}"))?,
                };
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
