//! The cost of one admission decision: llm-layers' GCRA `MemoryStore` side by side with
//! `governor`'s keyed limiter, uncontended and with 64 tasks on one key and on 64 keys.
//!
//! `cargo bench -p llm-layers-bench --bench ratelimit`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use llm_layers_bench::per_op_concurrent;
use llm_layers_ratelimit::{BucketKey, LimitId, MemoryStore, Rate};

const TASKS: usize = 64;
const PER_TASK: usize = 2_000;

fn bench(c: &mut Criterion) {
    // Rates so high that every decision admits: we time the decision, not the waiting.
    let rate = Rate {
        amount: 1_000_000_000,
        period: Duration::from_secs(1),
        burst: 1_000_000_000,
    };
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap());
    let keys: Vec<Arc<str>> = (0..TASKS)
        .map(|i| Arc::from(format!("tenant-{i}")))
        .collect();

    let ours = Arc::new(MemoryStore::new(100_000));
    let theirs = Arc::new(RateLimiter::<Arc<str>, _, _>::keyed(quota));
    let key0 = BucketKey {
        limit: LimitId::Requests(0),
        name: Arc::from("requests"),
        key: keys[0].clone(),
    };
    let mut g = c.benchmark_group("admission");
    g.bench_function("llm-layers/uncontended", |b| {
        b.iter(|| {
            ours.take_now(&key0, 1, &rate, tokio::time::Instant::now())
                .is_ok()
        })
    });
    g.bench_function("governor/uncontended", |b| {
        b.iter(|| theirs.check_key(&keys[0]).is_ok())
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for (name, distinct) in [("one_key", false), ("64_keys", true)] {
        let (ours, keys2, rate2) = (ours.clone(), keys.clone(), rate);
        g.bench_function(format!("llm-layers/{TASKS}_tasks_{name}"), |b| {
            b.iter_custom(|iters| {
                per_op_concurrent(&rt, iters, TASKS, PER_TASK, |t| {
                    let (s, k) = (ours.clone(), keys2[if distinct { t } else { 0 }].clone());
                    async move {
                        let key = BucketKey {
                            limit: LimitId::Requests(0),
                            name: Arc::from("requests"),
                            key: k,
                        };
                        for _ in 0..PER_TASK {
                            let _ = s.take_now(&key, 1, &rate2, tokio::time::Instant::now());
                        }
                    }
                })
            })
        });
        let (theirs, keys3) = (theirs.clone(), keys.clone());
        g.bench_function(format!("governor/{TASKS}_tasks_{name}"), |b| {
            b.iter_custom(|iters| {
                per_op_concurrent(&rt, iters, TASKS, PER_TASK, |t| {
                    let (l, k) = (theirs.clone(), keys3[if distinct { t } else { 0 }].clone());
                    async move {
                        for _ in 0..PER_TASK {
                            let _ = l.check_key(&k);
                        }
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
