//! Per-call cost of the OpenRouter leaf against the mock on loopback, side by side with a
//! bare hyper client doing the same HTTP exchange (POST the same bytes, read the whole body,
//! no parsing). The ratio is what the leaf adds: serialization, SSE decoding, the commit,
//! collecting the answer.
//!
//! `cargo bench -p llm-layers-bench --bench leaf`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_layers_bench::request;
use llm_layers_mock::{MockServer, Scenario};
use llm_layers_openrouter::OpenRouter;
use tower::ServiceExt;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut scenario = Scenario::healthy().with_time_scale(0.0);
    scenario.providers.truncate(1);
    let server = rt.block_on(MockServer::start(scenario)).unwrap();
    let leaf = OpenRouter::builder()
        .api_key("sk-or-v1-bench")
        .base_url(server.base_url())
        .build()
        .unwrap();
    let bare = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!("{}/chat/completions", server.base_url());

    let mut g = c.benchmark_group("leaf_call");
    for tokens in [1u32, 32] {
        let req = request(tokens);
        let body = Bytes::from(serde_json::to_vec(&req).unwrap());
        g.bench_function(format!("bare_hyper/{tokens}_tokens"), |b| {
            b.to_async(&rt).iter(|| {
                let r = hyper::Request::post(&url)
                    .header("authorization", "Bearer sk-or-v1-bench")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let bare = bare.clone();
                async move {
                    let resp = bare.request(r).await.unwrap();
                    resp.into_body().collect().await.unwrap().to_bytes().len()
                }
            })
        });
        g.bench_function(format!("openrouter_leaf/{tokens}_tokens"), |b| {
            b.to_async(&rt).iter(|| {
                let leaf = leaf.clone();
                let req = req.clone();
                async move { leaf.oneshot(req).await.unwrap().collect().await.unwrap() }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
