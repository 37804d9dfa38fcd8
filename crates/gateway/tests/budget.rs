//! Budgets over the wire: a tenant's USD per window is reserved before each call and charged
//! what the mock billed after; past it, OpenAI's `429 insufficient_quota`; other tenants see
//! nothing of it.

mod common;
use common::*;

use llm_layers_gateway::keys::Keys;

const BUDGET_KEYS: &str = r#"{"keys": [
    {"tenant": "acme", "key": "sk-gw-acme-0000000000", "budget": {"usd": 0.0004, "per": "day"}},
    {"tenant": "globex", "key": "sk-gw-globex-00000000"},
    {"tenant": "ops", "key": "sk-gw-ops-00000000000", "admin": true}
]}"#;

fn scenario() -> Scenario {
    let mut s = Scenario::healthy();
    s.models.push("openai/gpt-4o-mini".into());
    s
}

async fn budgeted_gateway() -> (Gateway, MockServer) {
    let cfg = Config {
        keys: Keys::from_json(BUDGET_KEYS).unwrap(),
        ..config()
    };
    gateway_on(scenario(), cfg).await
}

fn call(stream: bool, model: &str) -> String {
    json!({"model": model, "stream": stream, "max_tokens": 20,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "how much is this"}]})
    .to_string()
}

async fn spent(c: &HttpClient, gw: &Gateway, tenant: &str) -> f64 {
    let req = hyper::Request::get(format!("http://{}/status.json", gw.addr()))
        .header("authorization", "Bearer sk-gw-ops-00000000000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let b = v["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["tenant"] == tenant)
        .cloned()
        .unwrap_or(Value::Null);
    b["spent_usd"].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test]
async fn a_tenant_spends_its_budget_and_no_more_and_others_do_not_notice() {
    let (gw, mock) = budgeted_gateway().await;
    let c = client();
    let acme = Some("sk-gw-acme-0000000000");
    let mut billed = 0.0;
    let mut answered = 0;
    let refusal = loop {
        let stream = answered % 2 == 1;
        let (status, body, text) =
            post_as(&c, &gw, acme, &[], call(stream, "openai/gpt-4o-mini")).await;
        if status != 200 {
            break (status, body);
        }
        // What the mock billed this call: its usage's `cost`.
        let usage = if stream {
            let evs = events(text.as_bytes());
            serde_json::from_str::<Value>(&evs[evs.len() - 2]).unwrap()["usage"].clone()
        } else {
            body["usage"].clone()
        };
        billed += usage["cost"].as_f64().expect("the mock reports its cost");
        answered += 1;
        assert!(answered < 100, "the budget never ran out");
    };
    let (status, body) = refusal;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert!(
        answered >= 2,
        "a budget of several calls allowed {answered}"
    );
    // Charged what the mock billed (its answers, and the prompts of the attempts given up
    // before their first token), and never past the budget (each call reserved its worst
    // case first).
    let charged = spent(&c, &gw, "acme").await;
    let mock_billed = mock.counters().billed_usd();
    assert!(
        (charged - mock_billed).abs() <= mock_billed * 0.005,
        "charged {charged}, the mock billed {mock_billed} (answers {billed})"
    );
    assert!(
        charged >= billed - 1e-12,
        "charged {charged} below the answers' {billed}"
    );
    assert!(
        charged <= 0.0004 + 1e-12,
        "charged {charged} past the budget"
    );
    // The other tenant has no budget and does not notice.
    let (status, _, _) = post_as(
        &c,
        &gw,
        Some("sk-gw-globex-00000000"),
        &[],
        call(false, "openai/gpt-4o-mini"),
    )
    .await;
    assert_eq!(status, 200);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refusal_says_when_the_window_resets() {
    let (gw, _mock) = budgeted_gateway().await;
    let c = client();
    // max_tokens far past the budget: its worst case cannot fit, whatever was spent.
    let big = json!({"model": "openai/gpt-4o-mini", "max_tokens": 100_000,
        "messages": [{"role": "user", "content": "hi"}]});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("authorization", "Bearer sk-gw-acme-0000000000")
        .body(Full::new(Bytes::from(big.to_string())))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let v: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_openai_error(&v);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("per day"),
        "{v}"
    );
    // Nothing was sent upstream, and nothing is held.
    assert_eq!(spent(&c, &gw, "acme").await, 0.0);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_budgeted_key_cannot_call_a_model_without_a_price() {
    let (gw, mock) = budgeted_gateway().await;
    let c = client();
    let before = mock.counters().requests();
    let (status, body, _) = post_as(
        &c,
        &gw,
        Some("sk-gw-acme-0000000000"),
        &[],
        call(false, "nobody/unpriced"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "model_not_priced");
    assert_openai_error(&body);
    assert_eq!(mock.counters().requests(), before, "never sent");
    gw.shutdown().await.unwrap();
}

#[test]
fn a_budget_of_nothing_is_a_configuration_error() {
    for usd in ["0", "-1", "1e400"] {
        let text = format!(
            r#"{{"keys": [{{"tenant": "acme", "key": "sk-gw-acme-0000000000", "budget": {{"usd": {usd}, "per": "day"}}}}]}}"#
        );
        let e = Keys::from_json(&text).unwrap_err();
        assert!(e.contains("usd") || e.contains("number"), "{usd}: {e}");
    }
    let e = Keys::from_json(
        r#"{"keys": [{"tenant": "acme", "key": "sk-gw-acme-0000000000", "budget": {"usd": 5, "per": "week"}}]}"#,
    )
    .unwrap_err();
    assert!(e.contains("week") && e.contains("acme"), "{e}");
}

/// A stream the caller abandons is charged what it spent — its prompt and the output it
/// delivered — not the worst case it reserved, and not nothing: what the mock billed.
#[tokio::test]
async fn an_abandoned_stream_is_charged_what_it_delivered() {
    let mut s = open_stream_scenario(50.0);
    s.models.push("openai/gpt-4o-mini".into());
    let cfg = Config {
        keys: Keys::from_json(BUDGET_KEYS).unwrap(),
        idle_timeout: None,
        ..config()
    };
    let (gw, mock) = gateway_on(s, cfg).await;
    let c = client();
    let body = json!({"model": "openai/gpt-4o-mini", "stream": true, "max_tokens": 60,
        "messages": [{"role": "user", "content": "a long story"}]});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("authorization", "Bearer sk-gw-acme-0000000000")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    // The worst case is held while the stream runs: 60 tokens out, twice.
    let held = spent(&c, &gw, "acme").await;
    let worst_out = 2.0 * 60.0 * llm_layers_mock::PRICE.completion;
    assert!(held > worst_out, "held {held}");
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(body);
    drop(c);
    // Settled when the gateway sees the caller gone: below what was held, above zero.
    let c = client();
    let mut settled = held;
    for _ in 0..500 {
        settled = spent(&c, &gw, "acme").await;
        if settled < held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(settled < held / 4.0, "settled {settled} of {held}");
    assert!(settled > 0.0, "an abandoned stream is not free");
    // And it is what the mock billed once it saw the cancel (the prompt and the tokens it
    // sent), give or take the one token in flight when the caller left.
    for _ in 0..500 {
        if mock.counters().open_streams() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let billed = mock.counters().billed_usd();
    assert!(
        (settled - billed).abs() <= llm_layers_mock::PRICE.completion + 1e-12,
        "settled {settled}, the mock billed {billed}"
    );
    gw.shutdown().await.unwrap();
}

/// Four replicas on one Redis keep one budget per tenant, not four: eight tenants each try
/// three times their budget, calls spread over the replicas four at a time. Each tenant's
/// spend stays within its budget, is what the mock billed, and the refusals are OpenAI's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_one_redis_keep_one_budget_per_tenant() {
    let Some(server) = llm_layers_redis::testing::RedisServer::start() else {
        return;
    };
    const BUDGET: f64 = 0.0003;
    let mut keys = String::from(
        r#"{"keys": [{"tenant": "ops", "key": "sk-gw-ops-00000000000", "admin": true}"#,
    );
    for t in 0..8 {
        keys.push_str(&format!(
            r#", {{"tenant": "t{t}", "key": "sk-gw-tenant-{t}-000000", "budget": {{"usd": {BUDGET}, "per": "month"}}}}"#
        ));
    }
    keys.push_str("]}");
    let mock = MockServer::start(scenario()).await.unwrap();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let cfg = Config {
            keys: Keys::from_json(&keys).unwrap(),
            api_key: Some("sk-or-v1-test".into()),
            base_url: mock.base_url().to_owned(),
            redis_url: Some(server.url()),
            replicas: 4,
            ..config()
        };
        replicas.push(start(cfg, None).await.unwrap());
    }
    let replicas = std::sync::Arc::new(replicas);
    let mut tenants = Vec::new();
    for t in 0..8 {
        let replicas = replicas.clone();
        tenants.push(tokio::spawn(async move {
            let c = client();
            let key = format!("sk-gw-tenant-{t}-000000");
            let (mut billed, mut ok, mut refused) = (0.0, 0, 0);
            // Each call bills about 4.5e-5: 20 calls are three times the budget.
            for _round in 0..5 {
                let mut calls = Vec::new();
                for gw in replicas.iter() {
                    let c = c.clone();
                    let key = key.clone();
                    let addr = gw.addr();
                    calls.push(async move {
                        let req =
                            hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                                .header("authorization", format!("Bearer {key}"))
                                .body(Full::new(Bytes::from(call(false, "openai/gpt-4o-mini"))))
                                .unwrap();
                        json_of(c.request(req).await.unwrap()).await
                    });
                }
                for (status, v, _) in futures_util::future::join_all(calls).await {
                    match status {
                        200 => {
                            ok += 1;
                            billed += v["usage"]["cost"].as_f64().unwrap();
                        }
                        429 => {
                            assert_eq!(v["error"]["type"], "insufficient_quota", "{v}");
                            refused += 1;
                        }
                        s => panic!("{s}: {v}"),
                    }
                }
            }
            (billed, ok, refused)
        }));
    }
    let c = client();
    let mut charged_all = 0.0;
    for (t, task) in tenants.into_iter().enumerate() {
        let (billed, ok, refused) = task.await.unwrap();
        assert!(
            refused > 0,
            "t{t}: three times the budget was never refused"
        );
        // One budget, not four: at least half of it spent on answers.
        assert!(
            billed >= BUDGET / 2.0,
            "t{t}: billed only {billed} ({ok} calls)"
        );
        let charged = spent(&c, &replicas[t % 4], &format!("t{t}")).await;
        assert!(
            charged <= BUDGET + 1e-12,
            "t{t}: charged {charged} of {BUDGET}"
        );
        assert!(
            charged >= billed - 1e-12,
            "t{t}: charged {charged}, answers {billed}"
        );
        charged_all += charged;
    }
    // What the mock billed was charged: the answers, and the prompts of the attempts given
    // up before their first token (hedges that lost, attempts cut by the first-token
    // deadline). Within 0.5 %: a loser whose first token was already on its way would be
    // billed a token the gateway never sees (about 0.1 % of this run's bill each).
    let mock_billed = mock.counters().billed_usd();
    assert!(
        (charged_all - mock_billed).abs() <= mock_billed * 0.005,
        "charged {charged_all}, the mock billed {mock_billed}"
    );
    let replicas = std::sync::Arc::try_unwrap(replicas).ok().unwrap();
    for gw in replicas {
        gw.shutdown().await.unwrap();
    }
}

/// A stream resumed after its first attempt broke is charged what the mock billed for both
/// attempts: the broken one's prompt and the tokens it sent (which no usage reports), and
/// the continuation's reported cost.
#[tokio::test]
async fn a_resumed_stream_is_charged_both_attempts() {
    let mut s = scenario();
    s.time_scale = 0.01;
    for p in &mut s.providers {
        p.faults.truncate = 0.5;
    }
    let cfg = Config {
        keys: Keys::from_json(BUDGET_KEYS).unwrap(),
        // No hedge: every request the mock bills is one of these calls' attempts.
        hedge_budget: 0.0,
        ..config()
    };
    let (gw, mock) = gateway_on(s, cfg).await;
    let c = client();
    let mut resumed = 0;
    for i in 0..40 {
        let before = (spent(&c, &gw, "acme").await, mock.counters().billed_usd());
        let body = json!({"model": "openai/gpt-4o-mini", "stream": true, "max_tokens": 12,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": format!("a story {i}")}]});
        let (status, _, text) = post_as(
            &c,
            &gw,
            Some("sk-gw-acme-0000000000"),
            &[("x-llm-resume", "on")],
            body.to_string(),
        )
        .await;
        if status == 429 {
            break; // the budget is spent
        }
        assert_eq!(status, 200, "{text}");
        let evs = events(text.as_bytes());
        let Ok(usage) = serde_json::from_str::<Value>(&evs[evs.len() - 2]) else {
            continue; // a stream that ended in an error
        };
        let summary = &usage["llm_layers"];
        if summary["continuations"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        resumed += 1;
        let charged = spent(&c, &gw, "acme").await - before.0;
        let billed = mock.counters().billed_usd() - before.1;
        assert!(
            (charged - billed).abs() <= billed * 1e-6,
            "call {i}: charged {charged}, the mock billed {billed} ({usage})"
        );
        assert_eq!(summary["cost_source"], "estimated", "{summary}");
    }
    assert!(resumed >= 2, "only {resumed} calls were resumed");
    gw.shutdown().await.unwrap();
}

/// Identical calls of one tenant served by one upstream call (coalesced) are charged that
/// call once: the caller that started it pays, the ones that joined it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_calls_are_charged_once() {
    let cfg = Config {
        keys: Keys::from_json(BUDGET_KEYS).unwrap(),
        coalesce: true,
        ..config()
    };
    let (gw, mock) = gateway_on(scenario(), cfg).await;
    let c = client();
    let body = json!({"model": "openai/gpt-4o-mini", "max_tokens": 5, "temperature": 0.0,
        "messages": [{"role": "user", "content": "the same question"}]})
    .to_string();
    let calls = (0..3).map(|_| {
        post_as(
            &c,
            &gw,
            Some("sk-gw-acme-0000000000"),
            &[("x-llm-coalesce", "on")],
            body.clone(),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    for (status, v, _) in &answers {
        assert_eq!(*status, 200, "{v}");
    }
    assert!(
        mock.counters().requests() < 3,
        "the calls were served by one upstream call (and its hedges): {}",
        mock.counters().requests()
    );
    let charged = spent(&c, &gw, "acme").await;
    let billed = mock.counters().billed_usd();
    assert!(
        (charged - billed).abs() <= billed * 0.005,
        "charged {charged}, the mock billed {billed}"
    );
    gw.shutdown().await.unwrap();
}
