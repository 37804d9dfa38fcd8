//! The open-loop generator: requests on a fixed schedule, latency into HDR histograms.

use super::*;

/// Where requests go.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    /// Parsed once: every request of a row shares it.
    pub(crate) url: http::Uri,
    pub(crate) auth: Option<HeaderValue>,
    /// More headers every request carries (another gateway's routing headers).
    pub(crate) headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Its process, for CPU and peak RSS, when known.
    pub(crate) pid: Option<u32>,
}

/// One row's results.
pub(crate) struct Outcome {
    pub(crate) latency: Histogram<u64>,
    pub(crate) lag: Histogram<u64>,
    pub(crate) sent: u64,
    pub(crate) errors: u64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

pub(crate) fn body(i: u64, stream: bool) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"openai/gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"load {i}"}}]}}"#
    ))
}

pub(crate) fn request(t: &Target, body: Bytes) -> Request<Full<Bytes>> {
    let mut r = Request::post(t.url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a parsed URI and a static header make a valid request");
    if let Some(a) = &t.auth {
        r.headers_mut().insert(header::AUTHORIZATION, a.clone());
    }
    for (k, v) in &t.headers {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r
}

/// Whether `chunk` holds a content delta with text (`"content":"x`), the first token.
pub(crate) fn has_token(chunk: &[u8]) -> bool {
    const NEEDLE: &[u8] = br#""content":""#;
    memchr::memmem::find_iter(chunk, NEEDLE)
        .any(|at| chunk.get(at + NEEDLE.len()).is_some_and(|&b| b != b'"'))
}

/// One call: `Ok(latency)` (to the first token when streaming, to the whole body when not)
/// or `Err` when anything but a complete answer came back.
pub(crate) async fn call(
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
pub(crate) async fn open_loop(
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

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Whether process `pid` still runs (its CPU and RSS can be read).
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
