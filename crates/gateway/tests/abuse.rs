//! The abuse matrix: what a caller, a tenant or a stranger sends never takes the gateway
//! down, past its limits, or costs another tenant. One test per row, each asserting the
//! outcome (a 4xx naming the field, a bound held, another tenant unaffected).
//!
//! Rows that live elsewhere, by concern: silent and half-spoken sockets, the connection cap
//! and the HTTP/2 idle limit (`connections.rs`); no secret in any output of a broken
//! configuration (`config.rs`); the rate limiter's own guards (units spent when sent, no slot
//! held while waiting, `crates/ratelimit`); the key ring's blame (`crates/openrouter`);
//! another replica's model-wide trip and our own connect failures (`crates/breaker`).

mod common;
use common::*;

use llm_layers_gateway::keys::Keys;
use llm_layers_gateway::upstreams::{DialectName, KeyConfig, UpstreamConfig};

const TENANTS: &str = r#"{"keys": [
    {"tenant": "mallory", "key": "sk-gw-mallory-0000000", "requests_per_minute": 60},
    {"tenant": "alice", "key": "sk-gw-alice-000000000"},
    {"tenant": "trickle", "key": "sk-gw-trickle-0000000", "requests_per_minute": 6},
    {"tenant": "capped", "key": "sk-gw-capped-00000000", "max_tokens": 16,
     "models": ["mock/*", "openai/*"], "allow_routing": true}
]}"#;

const MALLORY: &str = "sk-gw-mallory-0000000";
const ALICE: &str = "sk-gw-alice-000000000";
const TRICKLE: &str = "sk-gw-trickle-0000000";
const CAPPED: &str = "sk-gw-capped-00000000";

/// A gateway with [`TENANTS`] in front of `scenario`, through one upstream with two API keys.
async fn two_keys_on(scenario: Scenario, mut cfg: Config) -> (Gateway, MockServer) {
    let mock = MockServer::start(scenario).await.unwrap();
    cfg.api_key = Some("unused".into());
    cfg.keys = Keys::from_json(TENANTS).unwrap();
    cfg.upstreams = vec![UpstreamConfig {
        name: "openrouter".into(),
        dialect: DialectName::Openrouter,
        base_url: mock.base_url().to_owned(),
        keys: ["main", "backup"]
            .into_iter()
            .map(|n| KeyConfig {
                name: n.into(),
                env: None,
                key: Some(format!("sk-or-v1-{n}-0000000000")),
            })
            .collect(),
        model_map: Default::default(),
        race: Vec::new(),
    }];
    (start(cfg, None).await.unwrap(), mock)
}

fn chat(text: &str) -> Value {
    json!({"model": "mock/echo", "messages": [{"role": "user", "content": text}], "max_tokens": 3})
}

async fn healthz(c: &HttpClient, gw: &Gateway) -> (u16, Value) {
    let r = c
        .get(format!("http://{}/healthz", gw.addr()).parse().unwrap())
        .await
        .unwrap();
    let (status, v, _) = json_of(r).await;
    (status, v)
}

/// One tenant's input flagged by moderation (a `403`) or too large for the balance (a
/// `402` about the request) is that tenant's error, passed on; no upstream key is retired
/// for it, and another tenant's next 20 calls all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_403_or_402_retires_no_key_and_costs_another_tenant_nothing() {
    let mut s = Scenario::healthy().with_time_scale(0.0);
    s.moderation_flag = Some("FLAG-ME".into());
    s.affordable_tokens = Some(1_000);
    let (gw, mock) = two_keys_on(s, config()).await;
    let c = client();
    for _ in 0..3 {
        let (status, v, _) =
            post_as(&c, &gw, Some(MALLORY), &[], chat("FLAG-ME").to_string()).await;
        assert_eq!(status, 403, "{v}");
        assert_openai_error(&v);
        let mut big = chat("big");
        big["max_tokens"] = json!(100_000);
        let (status, v, _) = post_as(&c, &gw, Some(MALLORY), &[], big.to_string()).await;
        assert_eq!(status, 402, "{v}");
        assert_openai_error(&v);
    }
    assert_eq!(
        mock.counters().requests(),
        6,
        "each refusal sent once, never rotated"
    );
    for i in 0..20 {
        let (status, v, _) = post_as(
            &c,
            &gw,
            Some(ALICE),
            &[],
            chat(&format!("alice {i}")).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, h) = healthz(&c, &gw).await;
    assert_eq!((status, h["status"].as_str()), (200, Some("ok")), "{h}");
    let by_key = mock.counters().requests_by_key();
    assert!(
        by_key.values().all(|n| *n >= 10),
        "both keys serve: {by_key:?}"
    );
}

/// Every upstream key refused (401): the last one is kept in turn, so no caller can take
/// them all out, and `/healthz` says degraded and why (no key text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_refused_by_the_upstream_make_healthz_degraded_and_say_why() {
    let mut s = Scenario::healthy().with_time_scale(0.0);
    for n in ["main", "backup"] {
        s.key_statuses
            .insert(format!("sk-or-v1-{n}-0000000000"), 401);
    }
    let (gw, _mock) = two_keys_on(s, config()).await;
    let c = client();
    let (status, h) = healthz(&c, &gw).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(status, 200);
    for i in 0..3 {
        let (status, v, _) = post_as(
            &c,
            &gw,
            Some(ALICE),
            &[],
            chat(&format!("a{i}")).to_string(),
        )
        .await;
        assert_eq!(status, 502, "the gateway's key, not the caller's: {v}");
        assert_openai_error(&v);
    }
    let (status, h) = healthz(&c, &gw).await;
    assert_eq!(
        (status, h["status"].as_str()),
        (200, Some("degraded")),
        "{h}"
    );
    let reason = h["reason"].as_str().unwrap();
    assert!(reason.contains("main") && reason.contains("backup"), "{h}");
    assert!(!h.to_string().contains("sk-or-v1"), "{h}");
}

/// A model id of 1 MiB (and every other over-long field) is refused with a `400` naming the
/// field before any state is touched: nothing reaches the upstream, no bucket, label or
/// breaker is made of it, and `/metrics` stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_fields_are_refused_before_any_state_and_metrics_stay_small() {
    // The one test of this binary that installs the process's metrics recorder.
    let handle = llm_layers_gateway::install_metrics().unwrap();
    let mock = MockServer::start(Scenario::healthy().with_time_scale(0.0))
        .await
        .unwrap();
    let cfg = Config {
        max_body_bytes: 4 << 20,
        requests_per_minute: 6_000,
        api_key: Some("sk-or-v1-test".into()),
        base_url: mock.base_url().to_owned(),
        ..config()
    };
    let gw = start(cfg, Some(handle)).await.unwrap();
    let c = client();
    let huge = "m".repeat(1 << 20);
    for i in 0..20 {
        let body =
            json!({"model": format!("{huge}{i}"), "messages": [{"role": "user", "content": "x"}]});
        let (status, v, _) = json_of(post(&c, &gw, body.to_string()).await).await;
        assert_eq!(status, 400, "{v}");
        assert_openai_error(&v);
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "string_above_max_length");
        assert!(
            v.to_string().len() < 1024,
            "the error does not echo the field"
        );
    }
    let rows = [
        (json!({"models": vec!["mock/echo"; 17]}), "models"),
        (json!({"user": "u".repeat(10_000)}), "user"),
        (json!({"n": 1_000}), "n"),
        (json!({"stop": vec!["s"; 50]}), "stop"),
        (
            json!({"tools": vec![json!({"type": "function"}); 500]}),
            "tools",
        ),
    ];
    for (extra, param) in rows {
        let mut body = chat("x");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v, _) = json_of(post(&c, &gw, body.to_string()).await).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{v}"
        );
    }
    let long_tenant = "t".repeat(4096);
    let (status, v, _) = post_as(
        &c,
        &gw,
        None,
        &[("x-tenant", &long_tenant)],
        chat("x").to_string(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("x-tenant")),
        "{v}"
    );
    let (status, v, _) = post_as(
        &c,
        &gw,
        None,
        &[("x-priority", "urgent")],
        chat("x").to_string(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("x-priority")),
        "{v}"
    );
    assert_eq!(
        mock.counters().requests(),
        0,
        "nothing reached the upstream"
    );
    // A call that passes, so the page has every series; then no id made it there.
    let (status, _, _) = json_of(post(&c, &gw, chat("fine").to_string()).await).await;
    assert_eq!(status, 200);
    let r = c
        .get(format!("http://{}/metrics", gw.addr()).parse().unwrap())
        .await
        .unwrap();
    let text = r.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("mock/echo"), "the page has the served model");
    assert!(!text.contains(&huge[..256]), "no refused id in /metrics");
    assert!(text.len() < 1 << 20, "/metrics is {} bytes", text.len());
}

/// A key capped at 16 output tokens cannot get more through a look-alike field: every
/// output-token field is capped in the body sent, shared by the `n` choices; a key allowed
/// `openai/*` reaches no other model through `models`, and no paid variant (`:online`)
/// without an entry for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_fields_cannot_pass_a_keys_caps_or_allow_list() {
    let (gw, mock) = two_keys_on(Scenario::healthy().with_time_scale(0.0), config()).await;
    let c = client();
    let body = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "caps"}],
        "max_completion_tokens": 1, "max_tokens": 100_000, "n": 8,
        "reasoning": {"max_tokens": 50_000}});
    let (status, v, _) = post_as(&c, &gw, Some(CAPPED), &[], body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let sent: Value = serde_json::from_slice(mock.counters().bodies().last().unwrap()).unwrap();
    assert_eq!(sent["max_tokens"], 2, "16 shared by 8 choices: {sent}");
    assert_eq!(sent["max_completion_tokens"], 1, "{sent}");
    assert_eq!(sent["reasoning"]["max_tokens"], 2, "{sent}");
    let requests = mock.counters().requests();
    for (body, param) in [
        (
            json!({"model": "openai/gpt-4o", "models": ["anthropic/claude-opus-4"], "messages": [{"role": "user", "content": "x"}]}),
            "models",
        ),
        (
            json!({"model": "openai/gpt-4o:online", "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "mock/echo", "n": 17, "messages": [{"role": "user", "content": "x"}]}),
            "n",
        ),
    ] {
        let (status, v, _) = post_as(&c, &gw, Some(CAPPED), &[], body.to_string()).await;
        assert!(matches!(status, 400 | 403), "{body}: {v}");
        assert_eq!(v["error"]["param"].as_str(), Some(param), "{v}");
        assert_openai_error(&v);
    }
    assert_eq!(
        mock.counters().requests(),
        requests,
        "none of them was sent"
    );
}

/// A key limited to 60 calls a minute (burst 10) that sends 30 streaming calls and leaves
/// each before its first token is admitted no more than its limit allows, at once or one
/// after the other: a request sent is a request spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_before_their_first_token_still_count_against_the_limit() {
    let mut s = Scenario::healthy();
    s.providers.truncate(1);
    s.providers[0].ttft = Dist::Fixed { ms: 10_000.0 };
    let cfg = Config {
        first_token_timeout: Some(Duration::from_secs(30)),
        hedge_quantile: 0.0,
        ..config()
    };
    let (gw, mock) = two_keys_on(s, cfg).await;
    let c = client();
    let mut calls = Vec::new();
    for i in 0..30 {
        let body = json!({"model": "mock/echo", "stream": true, "max_tokens": 3,
            "messages": [{"role": "user", "content": format!("leave {i}")}]});
        let (c, addr) = (c.clone(), gw.addr());
        calls.push(tokio::spawn(async move {
            let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", format!("Bearer {MALLORY}"))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            tokio::time::timeout(Duration::from_millis(300), c.request(req)).await
        }));
    }
    for call in calls {
        assert!(call.await.unwrap().is_err(), "left before the first token");
    }
    assert!(
        mock.counters()
            .wait_until(Duration::from_secs(10), |c| c.requests() > 0
                && c.cancelled_streams() == c.requests())
            .await
    );
    let admitted = mock.counters().requests();
    assert!(
        (1..=11).contains(&admitted),
        "{admitted} admitted: the burst is 10, plus one a second"
    );
    // One after the other, each left after 0.3 s, on a key of 6 a minute (burst 1): the
    // first is sent and spent; a call that left does not give its unit back, so the next
    // ones are refused (the bucket is 10 s from its next unit), not sent.
    let before = mock.counters().requests();
    let mut refused = 0;
    for i in 0..6 {
        let body = json!({"model": "mock/echo", "stream": true, "max_tokens": 3,
            "messages": [{"role": "user", "content": format!("trickle {i}")}]});
        let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
            .header("authorization", format!("Bearer {TRICKLE}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(300), c.request(req)).await {
            Err(_left) => {}
            Ok(r) => {
                let (status, v, _) = json_of(r.unwrap()).await;
                assert_eq!(status, 429, "{v}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        mock.counters().requests() - before,
        1,
        "one call's worth was sent"
    );
    assert_eq!(refused, 5);
}

/// A tenant waiting on its own bucket holds no global slot: with 4 slots and one tenant's
/// 30 calls waiting on its bucket (a minute's limit of 60 refills one a second; a call
/// waits at most 5 s), another tenant's low-priority call is served, not shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_waiting_on_its_own_bucket_holds_no_global_slot() {
    let cfg = Config {
        max_concurrency: 4,
        ..config()
    };
    let (gw, _mock) = two_keys_on(Scenario::healthy().with_time_scale(0.0), cfg).await;
    let c = client();
    // Mallory spends her burst (10) ...
    for i in 0..10 {
        let (status, v, _) = post_as(
            &c,
            &gw,
            Some(MALLORY),
            &[],
            chat(&format!("burst {i}")).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    // ... then sends 30 more, which wait on her bucket (one unit a second, each for at most
    // 5 s) while every slot is free for the taking.
    let mut greedy = Vec::new();
    for i in 0..30 {
        let (c, addr) = (c.clone(), gw.addr());
        greedy.push(tokio::spawn(async move {
            let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", format!("Bearer {MALLORY}"))
                .body(Full::new(Bytes::from(chat(&format!("g{i}")).to_string())))
                .unwrap();
            let r = c.request(req).await.unwrap();
            r.status().as_u16()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        greedy.iter().filter(|g| !g.is_finished()).count() >= 25,
        "most of mallory's calls are still waiting"
    );
    for i in 0..5 {
        let (status, v, _) = post_as(
            &c,
            &gw,
            Some(ALICE),
            &[("x-priority", "low")],
            chat(&format!("polite {i}")).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    for g in greedy {
        g.abort();
    }
}

/// This replica cannot connect to its upstream (DNS, TCP, TLS): `/healthz` says it is sick,
/// with a `503` a load balancer acts on, and the model is not opened by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_connect_says_it_is_sick() {
    let closed = StdListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/api/v1", closed.local_addr().unwrap());
    drop(closed);
    let gw = start(
        Config {
            api_key: Some("sk-or-v1-test".into()),
            base_url: dead,
            max_retries: 0,
            priors: false,
            ..config()
        },
        None,
    )
    .await
    .unwrap();
    let c = client();
    for i in 0..4 {
        let (status, v, _) = json_of(post(&c, &gw, chat(&format!("c{i}")).to_string()).await).await;
        assert_eq!(status, 502, "{v}");
        assert_openai_error(&v);
    }
    let (status, h) = healthz(&c, &gw).await;
    assert_eq!((status, h["status"].as_str()), (503, Some("sick")), "{h}");
}
