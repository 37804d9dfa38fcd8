//! Speed at a price over the wire: the mock's `priced` preset (Swift fastest and dearest,
//! Steady mid-priced and inside the SLA, Thrifty cheapest and outside it) behind the
//! gateway, a tier whose objective is `cheapest`, and the `x-llm-objective` header.

mod common;
use common::*;

use llm_layers_router::RouterConfig;

/// The preset at 1/100 of real time: Swift TTFT p50 2.5 ms, Steady 6 ms (p95 ≈ 11 ms),
/// Thrifty 15 ms (p95 ≈ 40 ms); the tier's SLA is a p95 of 25 ms, so only Thrifty misses it
/// whatever the machine adds.
fn priced_gateway_config() -> Config {
    let router: RouterConfig = serde_json::from_value(json!({
        "tiers": [{"name": "thrifty", "models": ["mock/echo"],
                   "sla": {"ttft_ms": 25, "ttft_quantile": 0.95}, "objective": "cheapest"}]
    }))
    .unwrap();
    Config {
        router,
        first_token_timeout: Some(Duration::from_secs(2)),
        ..config()
    }
}

fn call(model: &str, i: usize) -> String {
    json!({"model": model, "stream": false, "max_tokens": 4,
        "messages": [{"role": "user", "content": format!("price {i}")}]})
    .to_string()
}

/// Calls `model` `n` times (one at a time) with `headers`: how many upstream requests each
/// endpoint got (Swift, Steady, Thrifty) and what the mock billed.
async fn calls(
    c: &HttpClient,
    gw: &Gateway,
    mock: &MockServer,
    (model, headers): (&str, &[(&str, &str)]),
    n: usize,
) -> ([u64; 3], f64) {
    let slugs = ["swift", "steady", "thrifty"];
    let before: Vec<u64> = slugs
        .iter()
        .map(|s| mock.counters().requests_to(s))
        .collect();
    let billed = mock.counters().billed_usd();
    for i in 0..n {
        let (status, body, _) = post_as(c, gw, None, headers, call(model, i)).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut to = [0; 3];
    for (k, s) in slugs.iter().enumerate() {
        to[k] = mock.counters().requests_to(s) - before[k];
    }
    (to, mock.counters().billed_usd() - billed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheapest_tier_sends_its_calls_to_the_cheapest_endpoint_inside_its_sla() {
    let scenario = Scenario::priced().with_time_scale(0.01);
    let (gw, mock) = gateway_on(scenario, priced_gateway_config()).await;
    let c = client();
    // Warm-up: the published stats (with each endpoint's price) arrive in the background,
    // and each endpoint is measured.
    let _ = calls(&c, &gw, &mock, ("tier:thrifty", &[]), 40).await;
    let (to, cheap_cost) = calls(&c, &gw, &mock, ("tier:thrifty", &[]), 60).await;
    assert!(
        to[1] >= 54 && to[0] <= 3,
        "cheapest within the SLA: Swift / Steady / Thrifty {to:?}"
    );
    // The call's own objective wins over the tier's: fastest goes to Swift, at 4× the price.
    let fastest = [("x-llm-objective", "fastest")];
    let _ = calls(&c, &gw, &mock, ("tier:thrifty", &fastest), 20).await;
    let (to, fast_cost) = calls(&c, &gw, &mock, ("tier:thrifty", &fastest), 60).await;
    assert!(to[0] >= 50, "fastest: Swift / Steady / Thrifty {to:?}");
    assert!(
        fast_cost > 2.0 * cheap_cost,
        "Swift is dearer: {fast_cost} against {cheap_cost}"
    );
}

#[tokio::test]
async fn a_bad_objective_is_refused_before_anything_is_sent() {
    let (gw, mock) = gateway_on(Scenario::priced().with_time_scale(0.01), config()).await;
    let c = client();
    for bad in ["cheap", "weighted=-1", "weighted=nan", "FASTEST"] {
        let (status, body, _) = post_as(
            &c,
            &gw,
            None,
            &[("x-llm-objective", bad)],
            call("mock/echo", 0),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_openai_error(&body);
        assert_eq!(body["error"]["param"], "x-llm-objective", "{body}");
    }
    assert_eq!(
        mock.counters().requests(),
        0,
        "nothing reached the upstream"
    );
    // A good one on a concrete model with no SLA: once the prices are in, the cheapest
    // endpoint not failing.
    let cheapest = [("x-llm-objective", "cheapest")];
    let _ = calls(&c, &gw, &mock, ("mock/echo", &cheapest), 20).await;
    let (to, _) = calls(&c, &gw, &mock, ("mock/echo", &cheapest), 20).await;
    assert_eq!(to, [0, 0, 20], "Swift / Steady / Thrifty");
}
