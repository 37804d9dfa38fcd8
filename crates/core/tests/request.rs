//! `ChatRequest` serde round trips: unknown fields survive, every provider field is modelled.

use llm_layers_core::{ChatRequest, Content, ProviderSort, slug_matches};
use serde_json::{Value, json};

#[test]
fn round_trip_keeps_unknown_fields_and_every_provider_field() {
    let input = json!({
        "model": "openai/gpt-4o:nitro",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:x"}}], "x_msg": 1},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "42"}
        ],
        "stream": true,
        "max_tokens": 100,
        "max_completion_tokens": 90,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "user": "u-1",
        "stream_options": {"include_usage": true},
        "models": ["a/b", "c/d"],
        "provider": {
            "order": ["openai", "azure"],
            "only": ["openai", "azure", "deepinfra/turbo"],
            "ignore": ["groq"],
            "allow_fallbacks": false,
            "require_parameters": true,
            "sort": {"by": "latency", "partition": "none"},
            "data_collection": "deny",
            "zdr": true,
            "quantizations": ["fp8", "bf16"],
            "max_price": {"prompt": "1.5", "completion": 2},
            "preferred_min_throughput": {"p50": 100},
            "preferred_max_latency": 3,
            "future_field": [1, 2]
        },
        "reasoning": {"effort": "high"},
        "plugins": [{"id": "web"}],
        "unknown_top": {"nested": true}
    });
    let req: ChatRequest = serde_json::from_value(input.clone()).unwrap();
    let p = req.body().provider.as_ref().unwrap();
    assert_eq!(
        p.order.as_deref(),
        Some(&["openai".to_owned(), "azure".to_owned()][..])
    );
    assert_eq!(p.allow_fallbacks, Some(false));
    assert!(matches!(p.sort, Some(ProviderSort::Object(_))));
    assert_eq!(p.zdr, Some(true));
    assert!(p.extra.contains_key("future_field"));
    assert!(matches!(
        req.body().messages[1].content,
        Some(Content::Parts(_))
    ));
    assert_eq!(req.body().max_output_tokens(), Some(90));
    let back: Value = serde_json::to_value(&req).unwrap();
    assert_eq!(back, input, "lossless round trip");
}

#[test]
fn sort_as_a_string_and_minimal_body() {
    let req: ChatRequest = serde_json::from_value(
        json!({"messages": [{"role": "user", "content": "x"}], "provider": {"sort": "price"}}),
    )
    .unwrap();
    assert_eq!(req.model(), "");
    assert!(
        matches!(req.body().provider.as_ref().unwrap().sort, Some(ProviderSort::Simple(ref s)) if s == "price")
    );
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({"messages": [{"role": "user", "content": "x"}], "provider": {"sort": "price"}})
    );
}

#[test]
fn clones_share_the_body_until_written() {
    let a: ChatRequest = serde_json::from_value(json!({"model": "m", "messages": []})).unwrap();
    let mut b = a.clone();
    assert!(std::sync::Arc::ptr_eq(a.shared_body(), b.shared_body()));
    b.body_mut().provider_mut().add_ignore("groq");
    b.body_mut().provider_mut().add_ignore("Groq");
    assert!(!std::sync::Arc::ptr_eq(a.shared_body(), b.shared_body()));
    assert!(a.body().provider.is_none());
    assert_eq!(
        b.body()
            .provider
            .as_ref()
            .unwrap()
            .ignore
            .as_ref()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn provider_allows_and_slug_matching() {
    let req: ChatRequest = serde_json::from_value(
        json!({"messages": [], "provider": {"only": ["deepinfra", "openai"], "ignore": ["openai/eu"]}}),
    )
    .unwrap();
    let p = req.body().provider.as_ref().unwrap();
    assert!(p.allows("deepinfra/turbo"));
    assert!(p.allows("openai"));
    assert!(!p.allows("openai/eu"));
    assert!(!p.allows("groq"));
    assert!(slug_matches("DeepInfra", "deepinfra"));
    assert!(!slug_matches("deep", "deepinfra"));
    assert!(!slug_matches("é", "e"));
}

#[tokio::test(start_paused = true)]
async fn deadline_only_tightens() {
    let mut req = ChatRequest::new("m", vec![]);
    let now = tokio::time::Instant::now();
    req.tighten_deadline(now + std::time::Duration::from_secs(10));
    req.tighten_deadline(now + std::time::Duration::from_secs(20));
    assert_eq!(
        req.deadline(),
        Some(now + std::time::Duration::from_secs(10))
    );
    req.tighten_deadline(now + std::time::Duration::from_secs(5));
    assert_eq!(req.time_left(now), Some(std::time::Duration::from_secs(5)));
}
