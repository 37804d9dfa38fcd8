//! Allocations per streamed chunk, counted by a global allocator, printed as a table.
//!
//! `cargo bench -p llm-layers-bench --bench alloc`
//!
//! Paths measured: the leaf's hot path after the commit (an SSE body decoded into
//! `ChatChunk`s by `SseChatDecoder`, the parser slicing the input), bare and under the
//! timeout layer's stream wrapper; then the gateway's whole stack
//! (`llm_layers_gateway::build_stack`) over an instant scripted service against that service
//! alone: what the stack adds per call and per chunk; then each layer alone, as the `layers`
//! bench times them (`llm_layers_bench::layer_arms`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use llm_layers_bench::{Svc, layer_arms, request, sse_body};
use llm_layers_core::decode::SseChatDecoder;
use llm_layers_core::{ChatStream, ResponseMeta};
use llm_layers_mock::{MockChat, Script};
use std::time::Duration;
use tower::ServiceExt;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The body cut into network-sized frames.
fn frames(body: &Bytes, size: usize) -> Vec<Result<Frame<Bytes>, Infallible>> {
    (0..body.len())
        .step_by(size)
        .map(|i| Ok(Frame::data(body.slice(i..(i + size).min(body.len())))))
        .collect()
}

async fn run(n: usize, frame: usize, timeout: bool) -> f64 {
    let body = sse_body(n);
    let fr = frames(&body, frame);
    let decoder = SseChatDecoder::new(StreamBody::new(futures_util::stream::iter(fr)));
    let mut stream = ChatStream::commit(decoder, ResponseMeta::default())
        .await
        .unwrap();
    if timeout {
        let now = tokio::time::Instant::now();
        stream = stream.wrap(|s| {
            llm_layers_timeout::TimeoutStream::new(
                s,
                Some(std::time::Duration::from_secs(30)),
                Some(now + std::time::Duration::from_secs(300)),
            )
        });
    }
    // Count only the steady state: after the commit.
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut chunks = 0u64;
    while let Some(c) = stream.next().await {
        drop(c.unwrap());
        chunks += 1;
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    (after - before) as f64 / chunks as f64
}

/// Allocations of `calls` calls of `chunks` tokens each through `svc`, in total.
async fn through(svc: &Svc, calls: usize) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..calls {
        let s = svc.clone().oneshot(request(16)).await.unwrap();
        drop(s.collect().await.unwrap());
    }
    ALLOCS.load(Ordering::Relaxed) - before
}

/// Allocations the gateway's stack adds per call and per chunk over the bare service.
async fn stack(calls: usize) -> (f64, f64) {
    let svc_of = |chunks: usize| {
        let mock = MockChat::with_default(Script::tokens(Duration::ZERO, chunks, Duration::ZERO));
        let config = llm_layers_gateway::Config::default();
        let full: Svc = llm_layers_gateway::build_stack(&config, mock.clone(), None).unwrap();
        (Svc::new(mock), full)
    };
    let (bare1, full1) = svc_of(1);
    let (bare101, full101) = svc_of(101);
    // Warm: label sets, store keys, buckets.
    for s in [&bare1, &full1, &bare101, &full101] {
        through(s, 50).await;
    }
    let per = |full: u64, bare: u64| (full as f64 - bare as f64) / calls as f64;
    let one = per(through(&full1, calls).await, through(&bare1, calls).await);
    let many = per(
        through(&full101, calls).await,
        through(&bare101, calls).await,
    );
    (one, (many - one) / 100.0)
}

/// Allocations per call each arm of [`layer_arms`] adds over the bare service (1 chunk).
async fn per_layer(calls: usize) -> Vec<(&'static str, f64)> {
    let mock = MockChat::with_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    let arms = layer_arms(mock);
    for (_, svc) in &arms {
        through(svc, 50).await;
    }
    let bare = through(&arms[0].1, calls).await;
    let mut out = Vec::new();
    for (name, svc) in &arms[1..] {
        out.push((
            *name,
            (through(svc, calls).await as f64 - bare as f64) / calls as f64,
        ));
    }
    out
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 200 } else { 20_000 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("allocations per streamed chunk ({n} chunks of ~290 B)");
    println!("{:<34} {:>10} {:>10}", "path", "1460 B", "16 KiB");
    for (name, timeout) in [
        ("decoder (leaf hot path)", false),
        ("decoder + timeout stream", true),
    ] {
        let a = rt.block_on(run(n, 1460, timeout));
        let b = rt.block_on(run(n, 16 * 1024, timeout));
        println!("{name:<34} {a:>10.2} {b:>10.2}");
    }
    let (per_call, per_chunk) = rt.block_on(stack(if quick { 100 } else { 5_000 }));
    println!();
    println!(
        "the gateway's stack (build_stack) over an instant scripted service, beyond the service alone"
    );
    println!(
        "{:<34} {:>10.1}",
        "allocations per call (1 chunk)", per_call
    );
    println!(
        "{:<34} {:>10.2}",
        "allocations per further chunk", per_chunk
    );
    println!();
    println!("each layer alone over the same service (the `layers` bench's arms)");
    println!("{:<34} {:>10}", "layer", "per call");
    for (name, n) in rt.block_on(per_layer(if quick { 100 } else { 5_000 })) {
        println!("{name:<34} {n:>10.1}");
    }
}
