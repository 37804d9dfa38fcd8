//! Racing two upstreams (OpenRouter and a provider's own OpenAI-compatible endpoint, both
//! mock servers): exactly one answer, from the first to commit; the other is cancelled.

use std::time::Duration;

use llm_layers::core::{ChatRequest, KeyId, Message, UpstreamName};
use llm_layers::hedge::{HedgeDelay, HedgeLayer, HedgeWinner, NextUpstream, Upstreams};
use llm_layers::openrouter::{Dialect, OpenRouter};
use llm_layers_mock::{Dist, MockServer, Scenario, expected_answer};
use tower::{Layer, ServiceExt};

fn upstream(ttft_ms: f64, seed: u64) -> Scenario {
    let mut s = Scenario::healthy().with_seed(seed);
    for p in &mut s.providers {
        p.ttft = Dist::Fixed { ms: ttft_ms };
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_two_upstreams_returns_one_exact_answer_and_cancels_the_other() {
    // OpenRouter is slow today (2 s to the first token); the direct endpoint answers in 50 ms.
    let openrouter = MockServer::start(upstream(2_000.0, 1)).await.unwrap();
    let mut direct_scenario = upstream(50.0, 2);
    direct_scenario.strict_openai = true;
    let direct = MockServer::start(direct_scenario).await.unwrap();
    let or_leaf = OpenRouter::builder()
        .api_key("sk-or-v1-test")
        .base_url(openrouter.base_url())
        .build()
        .unwrap();
    let direct_leaf = OpenRouter::builder()
        .api_keys([("direct-main", "sk-direct-test-0001")])
        .base_url(direct.base_url())
        .dialect(Dialect::OpenAiCompatible)
        .build()
        .unwrap();
    let upstreams = Upstreams::new([("openrouter", or_leaf), ("direct", direct_leaf)]).unwrap();
    let race = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(Duration::from_millis(200)))
        .policy(NextUpstream)
        .budget_ratio(1.0)
        .budget_floor(100)
        .build()
        .unwrap()
        .layer(upstreams);

    let mut r = ChatRequest::new("mock/echo", vec![Message::user("race me")]);
    r.body_mut().max_tokens = Some(3);
    r.body_mut().stream = Some(true);
    r.body_mut().provider_mut().order = Some(vec!["alpha".into()]);
    let expected = expected_answer(r.body(), 3);
    let stream = race.oneshot(r).await.unwrap();
    let meta = stream.meta().clone();
    assert_eq!(
        meta.extensions.get::<UpstreamName>().unwrap().0.as_ref(),
        "direct"
    );
    assert_eq!(meta.extensions.get::<HedgeWinner>().map(|w| w.0), Some(1));
    assert_eq!(
        meta.extensions.get::<KeyId>().unwrap().0.as_ref(),
        "direct-main"
    );
    let answer = stream.collect().await.unwrap();
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some(expected.as_str()),
        "one exact answer"
    );
    // The strict endpoint took the request (nothing OpenRouter-only was sent), and
    // OpenRouter's attempt was cancelled when the direct one committed.
    assert_eq!(direct.counters().requests(), 1);
    assert_eq!(direct.counters().completed_streams(), 1);
    assert_eq!(openrouter.counters().requests(), 1);
    assert!(
        openrouter
            .counters()
            .wait_until(Duration::from_secs(5), |c| c.cancelled_streams() == 1)
            .await
    );
    assert_eq!(openrouter.counters().cancelled_streams(), 1);
    assert_eq!(openrouter.counters().completed_streams(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_start_on_the_upstream_measured_faster() {
    use llm_layers::hedge::ChooseUpstreamLayer;
    use llm_layers::latency::LatencyStore;
    let openrouter = MockServer::start(upstream(400.0, 1)).await.unwrap();
    let direct = MockServer::start(upstream(20.0, 2)).await.unwrap();
    let leaf = |s: &MockServer| {
        OpenRouter::builder()
            .api_key("sk-test-key-0001")
            .base_url(s.base_url())
            .build()
            .unwrap()
    };
    // Snapshots recomputed on every read: each lost race counts from the next call on.
    let store = LatencyStore::builder()
        .min_samples(3)
        .refresh(Duration::ZERO)
        .build()
        .unwrap();
    let upstreams = Upstreams::new([("openrouter", leaf(&openrouter)), ("direct", leaf(&direct))])
        .unwrap()
        .record_into(store.clone());
    let svc = ChooseUpstreamLayer::new(store, ["openrouter", "direct"], 0).layer(
        HedgeLayer::builder()
            .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
            .policy(NextUpstream)
            .budget_ratio(1.0)
            .budget_floor(100)
            .build()
            .unwrap()
            .layer(upstreams),
    );
    let mut served = Vec::new();
    for i in 0..12 {
        let mut r = ChatRequest::new("mock/echo", vec![Message::user(format!("c{i}"))]);
        r.body_mut().max_tokens = Some(1);
        let s = svc.clone().oneshot(r).await.unwrap();
        served.push(
            s.meta()
                .extensions
                .get::<UpstreamName>()
                .unwrap()
                .0
                .to_string(),
        );
        s.collect().await.unwrap();
    }
    // Every call was answered by the direct endpoint (raced at 100 ms while OpenRouter was
    // being measured); after three lost races OpenRouter is no longer tried first.
    assert!(served.iter().all(|s| s == "direct"), "{served:?}");
    assert_eq!(openrouter.counters().requests(), 3);
    assert_eq!(direct.counters().requests(), 12);
}
