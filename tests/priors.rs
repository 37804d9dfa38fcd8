//! Priors end to end: the mock publishes endpoint stats from its preset, the OpenRouter leaf
//! fetches them, a `PriorFeed` puts them in the store, and the router and breaker act on
//! them before a single call went through; a fetch that fails never fails a call.

use std::sync::Arc;
use std::time::Duration;

use llm_layers::breaker::BreakerLayer;
use llm_layers::core::{ChatRequest, Message, ProviderPlan};
use llm_layers::latency::{LatencyStore, PriorFeed};
use llm_layers::openrouter::OpenRouter;
use llm_layers::router::{LearnedOrderConfig, RouterLayer};
use llm_layers_mock::{MockServer, Scenario, StatusFault};

fn leaf(server: &MockServer) -> OpenRouter {
    OpenRouter::builder()
        .api_key("sk-or-v1-test")
        .base_url(server.base_url())
        .build()
        .unwrap()
}

fn feed(store: &LatencyStore, leaf: &OpenRouter) -> PriorFeed {
    let leaf = leaf.clone();
    PriorFeed::builder(
        store.clone(),
        Arc::new(move |model: String| {
            let leaf = leaf.clone();
            Box::pin(async move { leaf.endpoint_stats(&model).await })
        }),
    )
    .build()
    .unwrap()
}

fn first_provider(router: &RouterLayer) -> Option<String> {
    let mut r = ChatRequest::new("mock/echo", vec![Message::user("hi")]);
    router.route(&mut r).unwrap();
    r.body()
        .provider
        .as_ref()
        .and_then(|p| p.order.as_ref())
        .map(|o| o[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_stats_rank_providers_before_the_first_call() {
    let server = MockServer::start(Scenario::fat_tail()).await.unwrap();
    let leaf = leaf(&server);
    let published = leaf.endpoint_stats("mock/echo").await.unwrap();
    assert_eq!(published.len(), 4);
    let sloth = published
        .iter()
        .find(|e| e.provider_name == "Sloth")
        .unwrap();
    assert_eq!(sloth.tag.as_deref(), Some("sloth"));
    let l = sloth.latency_last_30m.unwrap();
    assert!(
        (l.p50.unwrap() - 8.0).abs() < 1e-6 && (l.p99.unwrap() - 45.0).abs() < 0.01,
        "{l:?}"
    );
    // Ids that are not `author/slug` never reach the upstream; unknown models are its 404.
    assert!(leaf.endpoint_stats("../admin").await.is_err());
    assert_eq!(
        leaf.endpoint_stats("mock/nope")
            .await
            .unwrap_err()
            .status_code(),
        Some(http::StatusCode::NOT_FOUND)
    );

    let store = LatencyStore::new();
    let feed = feed(&store, &leaf);
    let router = RouterLayer::builder(store.clone())
        .learned_order(LearnedOrderConfig {
            explore: 0.0,
            ..Default::default()
        })
        .priors(feed.clone())
        .build()
        .unwrap();
    // The first call starts the fetch in the background and never waits for it: it routes
    // with whatever is known by then (nothing, unless the fetch on the other worker thread
    // already landed: a race this test does not pin down), never to the slow provider.
    let first = first_provider(&router);
    assert_ne!(first.as_deref(), Some("sloth"));
    for _ in 0..1000 {
        if !feed.endpoints("mock/echo").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(feed.endpoints("mock/echo").len(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await; // the order cache
    let mut firsts = std::collections::HashMap::<String, usize>::new();
    for _ in 0..300 {
        *firsts.entry(first_provider(&router).unwrap()).or_default() += 1;
    }
    // The three fast providers share the calls; the slow one is never first.
    assert_eq!(firsts.get("sloth"), None, "{firsts:?}");
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    let s = store.stats("mock/echo", Some("Sloth")).unwrap();
    assert_eq!((s.ttft_samples, s.prior_weight), (0, 1.0));
    let mut r = ChatRequest::new("mock/echo", vec![Message::user("hi")]);
    router.route(&mut r).unwrap();
    let plan = r.extensions().get::<ProviderPlan>().unwrap();
    assert!(["Alpha", "Beta", "Gamma"].contains(&plan.first.as_deref().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_published_as_failing_starts_half_open_and_a_failed_fetch_changes_nothing() {
    let mut s = Scenario::healthy();
    s.providers[2].faults.status.push(StatusFault {
        code: 502,
        rate: 1.0,
        retry_after_s: None,
    });
    let server = MockServer::start(s).await.unwrap();
    let leaf = leaf(&server);
    let store = LatencyStore::new();
    let breaker = BreakerLayer::builder().build().unwrap();
    let b = breaker.clone();
    let feed = PriorFeed::builder(store.clone(), {
        let leaf = leaf.clone();
        Arc::new(move |model: String| {
            let leaf = leaf.clone();
            Box::pin(async move { leaf.endpoint_stats(&model).await })
        })
    })
    .on_endpoints(Arc::new(move |model, endpoints| {
        b.suspect_low_uptime(model, endpoints, 90.0);
    }))
    .build()
    .unwrap();
    assert_eq!(feed.refresh("mock/echo").await.unwrap(), 3);
    let snapshot = breaker.snapshot();
    let gamma = snapshot
        .iter()
        .find(|b| b.provider.as_deref() == Some("gamma"))
        .unwrap();
    assert_eq!(gamma.state, llm_layers::breaker::State::HalfOpen);
    assert_eq!(snapshot.len(), 1, "the healthy ones are untouched");

    // An upstream without the endpoint (or down): an error, and the store has no priors.
    let store = LatencyStore::new();
    let broken = PriorFeed::builder(
        store.clone(),
        Arc::new(|_m: String| {
            Box::pin(async {
                Err(llm_layers::core::LlmError::new(
                    llm_layers::core::ErrorKind::Connect,
                ))
            })
        }),
    )
    .build()
    .unwrap();
    assert!(broken.refresh("mock/echo").await.is_err());
    assert!(store.providers("mock/echo").is_empty());
    broken.touch("mock/echo"); // within the retry pause: no new fetch, no panic
}
