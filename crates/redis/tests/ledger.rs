//! The budgets' ledger in Redis: one counter for every replica, settled to what calls cost,
//! and its share of a budget when Redis is down.

use llm_layers_core::ledger::{Ledger, Window};
use llm_layers_redis::RedisLedger;
use llm_layers_redis::testing::RedisServer;

const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reserve_from_one_counter_and_settle_to_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (
        RedisLedger::new(&server.connect("a"), 2),
        RedisLedger::new(&server.connect("b"), 2),
    );
    let held = a.reserve("acme", Window::Day, 60, 100, NOW).await.unwrap();
    assert!(!held.local);
    // The other replica sees it: 60 + 50 > 100.
    let refused = b
        .reserve("acme", Window::Day, 50, 100, NOW)
        .await
        .unwrap_err();
    assert_eq!(refused.spent, 60);
    assert_eq!(refused.period.ends, NOW + 86_400);
    // It cost 20: 40 comes back, and b's call fits.
    a.settle("acme", held, -40).await;
    assert_eq!(b.spent("acme", Window::Day, NOW).await, 20);
    let held = b.reserve("acme", Window::Day, 50, 100, NOW).await.unwrap();
    // A settle never takes a window below zero.
    b.settle("acme", held, -1_000).await;
    assert_eq!(a.spent("acme", Window::Day, NOW).await, 0);
    // Another tenant, another window: apart.
    assert!(
        a.reserve("globex", Window::Day, 100, 100, NOW)
            .await
            .is_ok()
    );
    assert!(
        a.reserve("acme", Window::Day, 100, 100, NOW + 86_400)
            .await
            .is_ok()
    );
    // The counter lives to its window's end and a day more (for late settles).
    let ttl: i64 = server
        .cli(&["TTL", "llm:spend:globex:day:20454"])
        .and_then(|t| t.trim().trim_start_matches(':').parse().ok())
        .unwrap_or(-3);
    assert!((86_400..=2 * 86_400).contains(&ttl), "ttl {ttl}");
}

/// Redis unreachable: each replica spends at most its share of the budget (limit ÷
/// replicas), settled where it was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_store_gives_each_replica_its_share() {
    let redis = llm_layers_redis::testing::unreachable();
    let l = RedisLedger::new(&redis, 4);
    let held = l.reserve("acme", Window::Day, 25, 100, NOW).await.unwrap();
    assert!(held.local, "taken from the local share");
    assert!(
        l.reserve("acme", Window::Day, 1, 100, NOW).await.is_err(),
        "100 ÷ 4 spent"
    );
    l.settle("acme", held, -20).await;
    assert_eq!(l.spent("acme", Window::Day, NOW).await, 5);
    assert!(redis.fallbacks() >= 2);
}
