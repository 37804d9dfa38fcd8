//! Overhead of each layer, and of the full stack, per call and per chunk, over an instant
//! scripted inner service, side by side with the bare service.
//!
//! `cargo bench -p llm-layers-bench --bench layers`
//!
//! Per chunk = (time at 101 chunks - time at 1 chunk) / 100, for each arm.
//!
//! `-- tracing/`: the full stack with traces off (no subscriber) and on (the gateway's
//! OpenTelemetry layer).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use llm_layers_bench::{Svc, layer_arms, request};
use llm_layers_latency::{LatencyStore, Outcome};
use llm_layers_mock::{MockChat, Script};
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

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
    let mut g = c.benchmark_group("layers");
    for chunks in [1usize, 101] {
        let mock = MockChat::with_default(Script::tokens(Duration::ZERO, chunks, Duration::ZERO));
        let arms = layer_arms(mock);
        for (name, svc) in arms {
            g.bench_function(format!("{name}/{chunks}_chunks"), |b| {
                b.to_async(&rt).iter(|| drain(svc.clone()))
            });
        }
    }
    g.finish();

    // Traces: the full stack with no subscriber (a library user's default, and the
    // gateway's when no OTLP endpoint is set: spans are disabled callsites), and with the
    // gateway's OpenTelemetry layer on (every span built, attributed and queued for a batch
    // export, here to a port where nothing listens).
    let mut g = c.benchmark_group("tracing");
    let otel = llm_layers_gateway::otel::Tracing::to_endpoint(
        "http://127.0.0.1:9/v1/traces",
        rt.handle().clone(),
    )
    .expect("a valid endpoint");
    for chunks in [1usize, 101] {
        let mock = MockChat::with_default(Script::tokens(Duration::ZERO, chunks, Duration::ZERO));
        let (_, full) = layer_arms(mock)
            .pop()
            .expect("the full stack is the last arm");
        g.bench_function(format!("off/{chunks}_chunks"), |b| {
            b.to_async(&rt).iter(|| drain(full.clone()))
        });
        let subscriber = tracing_subscriber::registry().with(otel.layer());
        let _on = tracing::subscriber::set_default(subscriber);
        g.bench_function(format!("otel/{chunks}_chunks"), |b| {
            b.to_async(&rt).iter(|| drain(full.clone()))
        });
    }
    g.finish();
    drop(otel);

    // One call's record into the store: the (model, provider) key and the model key.
    let store = LatencyStore::new();
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
