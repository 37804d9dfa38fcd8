//! Overhead of the timeout and retry layers per call and per chunk, over an instant
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
use llm_layers_core::{ChatStream, LlmError};
use llm_layers_mock::{MockChat, Script};
use llm_layers_retry::RetryLayer;
use llm_layers_timeout::TimeoutLayer;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

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
    let mut g = c.benchmark_group("layers");
    for chunks in [1usize, 101] {
        let mock = MockChat::with_default(Script::tokens(Duration::ZERO, chunks, Duration::ZERO));
        let arms: [(&str, Svc); 3] = [
            ("bare", BoxCloneService::new(mock.clone())),
            ("timeout", BoxCloneService::new(timeout.layer(mock.clone()))),
            ("retry", BoxCloneService::new(retry.layer(mock.clone()))),
        ];
        for (name, svc) in arms {
            g.bench_function(format!("{name}/{chunks}_chunks"), |b| {
                b.to_async(&rt).iter(|| drain(svc.clone()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
