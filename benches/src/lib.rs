//! Shared pieces of the llm-layers benchmarks.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use llm_layers_breaker::BreakerLayer;
use llm_layers_core::{ChatRequest, ChatStream, LlmError, Message, Priority};
use llm_layers_hedge::{HedgeDelay, HedgeLayer};
use llm_layers_latency::{LatencyLayer, LatencyStore, Scope};
use llm_layers_mock::MockChat;
use llm_layers_ratelimit::{Key, Limit, RateLimitLayer};
use llm_layers_resume::ResumeLayer;
use llm_layers_retry::RetryLayer;
use llm_layers_router::RouterLayer;
use llm_layers_timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder};

/// A type-erased chat service, as the benches compare them.
pub type Svc = BoxCloneSyncService<ChatRequest, ChatStream, LlmError>;

/// A request like the gateway sends: one user message, streaming, `max_tokens` tokens.
pub fn request(max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::new(
        "openai/gpt-4o-mini",
        vec![Message::user("Write one short sentence about latency.")],
    );
    r.body_mut().stream = Some(true);
    r.body_mut().max_tokens = Some(max_tokens);
    r
}

/// An OpenRouter-like SSE body of `n` content events, each about 290 bytes, then `[DONE]`.
pub fn sse_body(n: usize) -> Bytes {
    let mut out = Vec::with_capacity(n * 300 + 64);
    out.extend_from_slice(b": OPENROUTER PROCESSING\n\n");
    for i in 0..n {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"gen-1700000000-AbCdEfGhIjKlMnOp\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"token {i:05} \"}},\"finish_reason\":null,\"native_finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(out)
}

/// The arms the per-layer benches compare, over `mock`: the bare service, each layer alone
/// (configured as the gateway configures it, limits never reached), and the gateway's whole
/// stack, outermost first, last.
pub fn layer_arms(mock: MockChat) -> Vec<(&'static str, Svc)> {
    let timeout = TimeoutLayer::builder()
        .first_token(Duration::from_secs(30))
        .idle(Duration::from_secs(30))
        .build()
        .expect("valid timeouts");
    let total = TimeoutLayer::builder()
        .total(Duration::from_secs(300))
        .build()
        .expect("valid timeout");
    let retry = RetryLayer::builder().seed(1).build().expect("valid retry");
    let store = LatencyStore::new();
    let latency = LatencyLayer::builder()
        .scope(Scope::Attempt)
        .store(store.clone())
        .build()
        .expect("valid latency");
    let hedge = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(Duration::from_secs(5)))
        .build()
        .expect("valid hedge");
    let ratelimit = RateLimitLayer::builder()
        .concurrency(10_000, Key::global(), Priority(1))
        .requests(Limit::new(1_000_000_000, Duration::from_secs(1)).key(Key::model()))
        .build()
        .expect("valid limits");
    let breaker = BreakerLayer::builder().build().expect("valid breaker");
    let router = RouterLayer::builder(store).build().expect("valid router");
    let per_call = LatencyLayer::builder()
        .scope(Scope::Call)
        .build()
        .expect("valid latency");
    // Mid-stream resume: on, it watches every chunk; in the stack, off by default as in the
    // gateway (a request turns it on).
    let resume = ResumeLayer::new();
    let resume_off = ResumeLayer::builder()
        .on_by_default(false)
        .build()
        .expect("valid resume");
    let full = ServiceBuilder::new()
        .layer(per_call)
        .layer(ratelimit.clone())
        .layer(router.clone())
        .layer(total)
        .layer(resume_off)
        .layer(retry.clone())
        .layer(hedge.clone())
        .layer(breaker.clone())
        .layer(timeout.clone())
        .layer(latency.clone())
        .service(mock.clone());
    vec![
        ("bare", Svc::new(mock.clone())),
        ("timeout", Svc::new(timeout.layer(mock.clone()))),
        ("retry", Svc::new(retry.layer(mock.clone()))),
        ("latency", Svc::new(latency.layer(mock.clone()))),
        ("hedge", Svc::new(hedge.layer(mock.clone()))),
        ("ratelimit", Svc::new(ratelimit.layer(mock.clone()))),
        ("breaker", Svc::new(breaker.layer(mock.clone()))),
        ("router", Svc::new(router.layer(mock.clone()))),
        ("resume", Svc::new(resume.layer(mock))),
        ("full_stack", Svc::new(full)),
    ]
}

/// Time per operation of `tasks` tasks run at once on `rt`, each doing `per_task` operations:
/// `task(t)` is task `t`'s whole loop. Repeated `iters` times (criterion's `iter_custom`).
pub fn per_op_concurrent<F>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    tasks: usize,
    per_task: usize,
    task: impl Fn(usize) -> F,
) -> Duration
where
    F: Future<Output = ()> + Send + 'static,
{
    // Not paused here: the wall time of the batch.
    let start = tokio::time::Instant::now();
    for _ in 0..iters {
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for t in 0..tasks {
                set.spawn(task(t));
            }
            while set.join_next().await.is_some() {}
        });
    }
    tokio::time::Instant::now().saturating_duration_since(start) / (tasks * per_task) as u32
}
