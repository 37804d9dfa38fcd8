//! Overhead of each layer, and of the full stack, per call and per chunk, over an instant
//! scripted inner service, side by side with the bare service.
//!
//! `cargo bench -p llm-layers-bench --bench layers`
//!
//! Per chunk = (time at 101 chunks - time at 1 chunk) / 100, for each arm.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use llm_layers_bench::request;
use llm_layers_breaker::BreakerLayer;
use llm_layers_core::{ChatStream, LlmError, Priority};
use llm_layers_hedge::{HedgeDelay, HedgeLayer};
use llm_layers_latency::{LatencyLayer, LatencyStore, Outcome, Scope};
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{Key, Limit, RateLimitLayer};
use llm_layers_resume::ResumeLayer;
use llm_layers_retry::RetryLayer;
use llm_layers_router::RouterLayer;
use llm_layers_timeout::TimeoutLayer;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

type Svc = BoxCloneService<llm_layers_core::ChatRequest, ChatStream, LlmError>;

async fn drain(svc: Svc) -> usize {
    let mut s = svc.oneshot(request(8)).await.unwrap();
    let mut n = 0;
    while let Some(c) = s.next().await {
        c.unwrap();
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let timeout = TimeoutLayer::builder()
        .first_token(Duration::from_secs(30))
        .idle(Duration::from_secs(30))
        .total(Duration::from_secs(300))
        .build()
        .unwrap();
    let retry = RetryLayer::builder().seed(1).build().unwrap();
    let store = LatencyStore::new();
    let latency = LatencyLayer::builder()
        .scope(Scope::Attempt)
        .store(store.clone())
        .build()
        .unwrap();
    let hedge = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(Duration::from_secs(5)))
        .build()
        .unwrap();
    let ratelimit = RateLimitLayer::builder()
        .concurrency(10_000, Key::global(), Priority(1))
        .requests(Limit::new(1_000_000_000, Duration::from_secs(1)).key(Key::model()))
        .build()
        .unwrap();
    let breaker = BreakerLayer::builder().build().unwrap();
    let router = RouterLayer::builder(store.clone()).build().unwrap();
    let per_call = LatencyLayer::builder().scope(Scope::Call).build().unwrap();
    // Mid-stream resume: on, it watches every chunk; in the stack, off by default as in the
    // gateway (a request turns it on).
    let resume = ResumeLayer::new();
    let resume_off = ResumeLayer::builder().on_by_default(false).build().unwrap();
    // The gateway's stack, outermost first.
    let full = |mock: MockChat| -> Svc {
        BoxCloneService::new(
            ServiceBuilder::new()
                .layer(per_call.clone())
                .layer(ratelimit.clone())
                .layer(router.clone())
                .layer(
                    TimeoutLayer::builder()
                        .total(Duration::from_secs(300))
                        .build()
                        .unwrap(),
                )
                .layer(resume_off.clone())
                .layer(retry.clone())
                .layer(hedge.clone())
                .layer(breaker.clone())
                .layer(
                    TimeoutLayer::builder()
                        .first_token(Duration::from_secs(30))
                        .idle(Duration::from_secs(30))
                        .build()
                        .unwrap(),
                )
                .layer(latency.clone())
                .service(mock),
        )
    };
    let mut g = c.benchmark_group("layers");
    for chunks in [1usize, 101] {
        let mock = MockChat::with_default(Script::tokens(Duration::ZERO, chunks, Duration::ZERO));
        let arms: [(&str, Svc); 10] = [
            ("bare", BoxCloneService::new(mock.clone())),
            ("timeout", BoxCloneService::new(timeout.layer(mock.clone()))),
            ("retry", BoxCloneService::new(retry.layer(mock.clone()))),
            ("latency", BoxCloneService::new(latency.layer(mock.clone()))),
            ("hedge", BoxCloneService::new(hedge.layer(mock.clone()))),
            (
                "ratelimit",
                BoxCloneService::new(ratelimit.layer(mock.clone())),
            ),
            ("breaker", BoxCloneService::new(breaker.layer(mock.clone()))),
            ("router", BoxCloneService::new(router.layer(mock.clone()))),
            ("resume", BoxCloneService::new(resume.layer(mock.clone()))),
            ("full_stack", full(mock.clone())),
        ];
        for (name, svc) in arms {
            g.bench_function(format!("{name}/{chunks}_chunks"), |b| {
                b.to_async(&rt).iter(|| drain(svc.clone()))
            });
        }
    }
    g.finish();

    // One call's record into the store: the (model, provider) key and the model key.
    c.bench_function("latency_store/record", |b| {
        b.iter(|| {
            store.record(
                ("openai/gpt-4o", Some("OpenAI")),
                Some(Duration::from_millis(850)),
                Some(42.0),
                Outcome::Ok,
            )
        })
    });
    // Retry and hedge clone the request per attempt: the body is shared, not copied.
    let mut big = request(8);
    big.body_mut().messages = (0..20)
        .map(|i| {
            llm_layers_core::Message::user(format!("message {i}: {}", "lorem ipsum ".repeat(40)))
        })
        .collect();
    c.bench_function("chat_request/clone (20 messages, shared body)", |b| {
        b.iter(|| big.clone())
    });
    c.bench_function(
        "chat_request/deep copy of the body (what a naive clone costs)",
        |b| b.iter(|| big.body().clone()),
    );
    c.bench_function("latency_store/ttft_quantile", |b| {
        b.iter(|| store.ttft_quantile("openai/gpt-4o", None, 0.95))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
