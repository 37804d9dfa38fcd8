//! The cost of one rate-limit decision with the state shared through Redis, side by side
//! with the in-process store: `MemoryStore`, `RedisStore` exact (one script per decision)
//! and leased (a script per lease), one caller and 64 concurrent callers, against a real
//! `redis-server` on loopback started by the bench (skipped with a message when there is
//! none).
//!
//! `cargo bench -p llm-layers-bench --bench shared_store`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use llm_layers_bench::per_op_concurrent;
use llm_layers_ratelimit::{BucketKey, LimitId, MemoryStore, Rate, Store, Take};
use llm_layers_redis::testing::RedisServer;
use llm_layers_redis::{LimitMode, Redis};

const TASKS: usize = 64;
const PER_TASK: usize = 200;

async fn decide(store: &dyn Store, key: &BucketKey, rate: &Rate) -> bool {
    match store.take(key, 1, rate, tokio::time::Instant::now()) {
        Take::Ready(r) => r.is_ok(),
        Take::Pending(p) => p.await.is_ok(),
    }
}

fn bench(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // So high that every decision admits: we time the decision, not the waiting.
    let rate = Rate {
        amount: 1_000_000_000,
        period: Duration::from_secs(1),
        burst: 1_000_000_000,
    };
    let key = BucketKey {
        limit: LimitId::Requests(0),
        name: Arc::from("requests:tenant"),
        key: Arc::from("tenant-0"),
    };
    let stores: Vec<(&str, Arc<dyn Store>)> = rt.block_on(async {
        let redis = Redis::builder(server.url())
            .budget(Duration::from_secs(1))
            .build()
            .unwrap();
        let exact = redis.limit_store().mode(LimitMode::Exact).build().unwrap();
        let lease = redis.limit_store().mode(LimitMode::Lease).build().unwrap();
        vec![
            (
                "memory",
                Arc::new(MemoryStore::new(100_000)) as Arc<dyn Store>,
            ),
            ("redis_exact", Arc::new(exact)),
            ("redis_lease", Arc::new(lease)),
        ]
    });
    let mut g = c.benchmark_group("shared_decision");
    g.measurement_time(Duration::from_secs(3));
    for (name, store) in &stores {
        g.bench_function(format!("{name}/one_caller"), |b| {
            b.to_async(&rt).iter(|| decide(&**store, &key, &rate))
        });
        g.bench_function(format!("{name}/{TASKS}_callers"), |b| {
            b.iter_custom(|iters| {
                per_op_concurrent(&rt, iters, TASKS, PER_TASK, |_| {
                    let (s, k) = (store.clone(), key.clone());
                    async move {
                        for _ in 0..PER_TASK {
                            decide(&*s, &k, &rate).await;
                        }
                    }
                })
            })
        });
    }
    g.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
