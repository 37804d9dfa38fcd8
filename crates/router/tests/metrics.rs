//! The router's decision counter: one handle per (tier, reason, order), counted on every
//! routed call with the labels the first call registered.

use std::time::Duration;

use llm_layers_core::{ChatRequest, Message};
use llm_layers_latency::LatencyStore;
use llm_layers_router::{CandidateConfig, LearnedOrderConfig, RouterLayer, SlaConfig, TierConfig};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

fn decisions(rec: &DebuggingRecorder) -> Vec<(Vec<(String, String)>, u64)> {
    let mut out: Vec<_> = rec
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "llm_router_decisions_total")
        .map(|(k, _, _, v)| {
            let mut labels: Vec<_> = k
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let DebugValue::Counter(n) = v else {
                panic!("a counter")
            };
            (labels, n)
        })
        .collect();
    out.sort();
    out
}

fn labels(tier: &str, reason: &str, order: &str) -> Vec<(String, String)> {
    let mut l = vec![
        ("order".to_owned(), order.to_owned()),
        ("reason".to_owned(), reason.to_owned()),
        ("tier".to_owned(), tier.to_owned()),
    ];
    l.sort();
    l
}

#[tokio::test(start_paused = true)]
async fn every_routed_call_is_counted_under_its_own_labels() {
    let rec = DebuggingRecorder::new();
    let _g = metrics::set_default_local_recorder(&rec);
    let router = RouterLayer::builder(LatencyStore::new())
        .tier(TierConfig {
            name: "fast".into(),
            models: vec![CandidateConfig::Model("a".into())],
            sla: SlaConfig {
                ttft_ms: 1000,
                ttft_quantile: 0.95,
                min_success_rate: 0.9,
            },
            fallback_models: false,
            objective: Default::default(),
        })
        .explore(0.0)
        .learned_order(LearnedOrderConfig {
            enabled: false,
            ..Default::default()
        })
        .build()
        .unwrap();
    for model in [
        "openai/gpt-4o",
        "tier:fast",
        "openai/gpt-4o",
        "tier:fast",
        "x/y",
    ] {
        let mut r = ChatRequest::new(model, vec![Message::user("hi")]);
        router.route(&mut r).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    let mut want = vec![
        (labels("", "concrete", "unchanged"), 3),
        (labels("fast", "unmeasured", "unchanged"), 2),
    ];
    want.sort();
    assert_eq!(decisions(&rec), want);
}
