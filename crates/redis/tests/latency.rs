//! A fleet learns once: a replica started after 2,000 calls through the others routes like
//! them from its first call.

use std::time::Duration;

use llm_layers_core::{ChatRequest, Message};
use llm_layers_latency::{LatencyStore, Outcome};
use llm_layers_redis::LatencySync;
use llm_layers_redis::testing::RedisServer;
use llm_layers_router::RouterLayer;

fn replica(server: &RedisServer, name: &str) -> (LatencyStore, LatencySync, RouterLayer) {
    let redis = server.connect(name);
    let store = LatencyStore::builder().min_samples(20).build().unwrap();
    let sync = LatencySync::new(&redis, &store, Duration::from_secs(2));
    let router = RouterLayer::builder(store.clone()).seed(7).build().unwrap();
    (store, sync, router)
}

fn first_choice(router: &RouterLayer) -> Option<String> {
    let mut r = ChatRequest::new("m", vec![Message::user("hi")]);
    router.route(&mut r).unwrap();
    r.body()
        .provider
        .as_ref()
        .and_then(|p| p.order.as_ref())
        .and_then(|o| o.first().cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_routes_like_the_fleet_from_its_first_call() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let fleet: Vec<_> = (0..3).map(|i| replica(&server, &format!("r{i}"))).collect();
    // 2,000 calls through the fleet: Fast is fastest, Slow is slowest.
    for i in 0..2_000u64 {
        let (store, _, _) = &fleet[(i % 3) as usize];
        let (provider, ms) = match i % 4 {
            0 | 1 => ("Fast", 100 + i % 50),
            2 => ("Mid", 300 + i % 80),
            _ => ("Slow", 900 + i % 300),
        };
        store.record(
            ("m", Some(provider)),
            Some(Duration::from_millis(ms)),
            Some(40.0),
            Outcome::Ok,
        );
    }
    for (_, sync, _) in &fleet {
        sync.sync().await.unwrap();
    }
    for (_, sync, _) in &fleet {
        sync.sync().await.unwrap();
    }
    let (store, sync, router) = replica(&server, "new");
    assert_eq!(
        first_choice(&router),
        None,
        "knows nothing before its first sync"
    );
    let keys = sync.sync().await.unwrap();
    assert_eq!(keys, 4, "three providers and the model");
    let fleet_order = fleet[0].2.learned_order("m");
    assert_eq!(&*router.learned_order("m"), &*fleet_order);
    assert_eq!(fleet_order.first().map(String::as_str), Some("fast"));
    assert_eq!(first_choice(&router).as_deref(), Some("fast"));
    // It holds every call the fleet made, none of its own.
    let total: u64 = store.providers("m").iter().map(|(_, s)| s.calls).sum();
    assert_eq!(total, 2_000);
    assert!(store.export().is_empty());
}

/// A round reads the models this replica pushes and a turn of a few others, never the
/// whole fleet's summaries: what a round moves grows with what this replica serves. In a
/// few rounds it has met every model; a whole `sync` reads them all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_reads_its_own_models_and_a_few_others_not_the_whole_fleet() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (big, big_sync, _) = replica(&server, "big");
    for m in 0..40 {
        for i in 0..30u64 {
            big.record(
                (&format!("model-{m}"), Some("P")),
                Some(Duration::from_millis(100 + i)),
                Some(40.0),
                Outcome::Ok,
            );
        }
    }
    big_sync.sync().await.unwrap();
    let (small, small_sync, _) = replica(&server, "small");
    small.record(
        ("model-0", Some("P")),
        Some(Duration::from_millis(100)),
        Some(40.0),
        Outcome::Ok,
    );
    // Its own model and 16 of the others at most (each with a provider and the model).
    let first = small_sync.step().await.unwrap();
    assert!((1..=2 * 17).contains(&first), "{first} keys in one round");
    for _ in 0..4 {
        small_sync.step().await.unwrap();
    }
    let known = (0..40)
        .filter(|m| !small.providers(&format!("model-{m}")).is_empty())
        .count();
    assert_eq!(known, 40, "every model met in turn");
    let (_, fresh_sync, _) = replica(&server, "fresh");
    assert_eq!(
        fresh_sync.sync().await.unwrap(),
        80,
        "a whole sync reads all 40"
    );
}
