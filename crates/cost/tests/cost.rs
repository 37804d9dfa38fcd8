//! What a call cost, on paused time: the upstream's reported cost, else its usage at the
//! serving endpoint's price (the model's when the endpoint has none); a model with no price
//! has no cost; the attempts a hedge gave up, counted by the per-attempt latency layer and
//! priced at the model's prompt price.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llm_layers_core::price::{Cost, Price};
use llm_layers_core::{ChatChunk, ChatRequest, ChatStream, LlmError, Message, Usage};
use llm_layers_cost::{CostLayer, CostReport};
use llm_layers_hedge::{HedgeDelay, HedgeLayer};
use llm_layers_latency::{LatencyLayer, Scope};
use llm_layers_mock::{MockChat, Script};
use tower::{Layer, ServiceBuilder, ServiceExt};

const MODEL_PRICE: Price = Price {
    prompt: 0.000_001,
    completion: 0.000_002,
    request: 0.0,
    cache_read: None,
};
const DEAR: Price = Price {
    prompt: 0.000_004,
    completion: 0.000_012,
    request: 0.0,
    cache_read: None,
};

/// The model `m` at its own price, and at the endpoint `Dear`'s.
fn layer() -> CostLayer {
    CostLayer::new(
        |model: &str, provider: Option<&str>| match (model, provider) {
            ("m", Some("Dear")) => Some(DEAR),
            ("m", _) => Some(MODEL_PRICE),
            _ => None,
        },
    )
}

fn answer(provider: &str, usage: Usage) -> Script {
    slow_answer(provider, usage, Duration::ZERO)
}

fn slow_answer(provider: &str, usage: Usage, ttft: Duration) -> Script {
    Script::new()
        .provider(provider)
        .wait(ttft)
        .token("Hello")
        .finish("stop")
        .chunk(ChatChunk {
            usage: Some(usage),
            ..ChatChunk::default()
        })
}

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        ..Usage::default()
    }
}

async fn report_of(svc: MockChat, model: &str) -> CostReport {
    report_after(layer().layer(svc), model).await
}

/// The report of one call to `model` through `svc`, read after its stream ended.
async fn report_after<S>(svc: S, model: &str) -> CostReport
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = LlmError>,
{
    let stream = svc
        .oneshot(ChatRequest::new(model, vec![Message::user("hi")]))
        .await
        .unwrap();
    let report = stream
        .meta()
        .extensions
        .get::<CostReport>()
        .cloned()
        .unwrap();
    assert_eq!(report.cost(), None, "nothing before the usage chunk");
    stream.collect().await.unwrap();
    report
}

#[tokio::test(start_paused = true)]
async fn a_call_costs_what_was_reported_else_its_usage_at_the_serving_endpoints_price() {
    // Reported: the upstream's own figure, whatever the prices.
    let mut reported = usage(1000, 10);
    reported.extra.insert("cost".into(), serde_json::json!(0.5));
    let r = report_of(MockChat::with_default(answer("Dear", reported)), "m").await;
    assert_eq!(r.cost(), Some(Cost::Reported(0.5)));
    assert_eq!(r.attempts_usd(), Some(0.5));

    // Estimated at the serving endpoint's price: 1,000 × 4e-6 + 10 × 12e-6.
    let r = report_of(MockChat::with_default(answer("Dear", usage(1000, 10))), "m").await;
    let c = r.cost().unwrap();
    assert_eq!(c.source(), "estimated");
    assert!((c.usd() - 0.00412).abs() < 1e-12, "{c:?}");

    // An endpoint with no price of its own: the model's, 1,000 × 1e-6 + 10 × 2e-6.
    let r = report_of(
        MockChat::with_default(answer("Other", usage(1000, 10))),
        "m",
    )
    .await;
    assert!((r.cost().unwrap().usd() - 0.00102).abs() < 1e-12);

    // A model with no price: no cost, never 0.
    let r = report_of(
        MockChat::with_default(answer("Other", usage(1000, 10))),
        "x",
    )
    .await;
    assert_eq!(r.cost(), None);
    assert_eq!(r.attempts_usd(), None);
}

/// A hedge that lost was given up before its first token: counted by the per-attempt
/// latency layer below the hedge, and priced at the model's prompt price.
#[tokio::test(start_paused = true)]
async fn the_attempts_a_hedge_gave_up_are_priced_too() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let mock = MockChat::from_fn(move |_| {
        // The first attempt is slow to its first token; the hedge is quick.
        let slow = seen.fetch_add(1, Ordering::SeqCst) == 0;
        let ttft = if slow {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        };
        slow_answer("Cheap", usage(1000, 10), ttft)
    });
    let svc = ServiceBuilder::new()
        .layer(layer())
        .layer(
            HedgeLayer::builder()
                .delay(HedgeDelay::Fixed(Duration::from_millis(100)))
                .build()
                .unwrap(),
        )
        .layer(
            LatencyLayer::builder()
                .scope(Scope::Attempt)
                .build()
                .unwrap(),
        )
        .service(mock);
    let report = report_after(svc, "m").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the hedge was sent");
    assert_eq!(report.given_up(), 1, "the slow first attempt was given up");
    // Its own 1,000 × 1e-6 + 10 × 2e-6, and the given-up one's prompt, 1,000 × 1e-6.
    let all = report.attempts_usd().unwrap();
    assert!((all - 0.00202).abs() < 1e-12, "{all}");
}
