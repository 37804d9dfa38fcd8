//! Gateway keys and tenants: who may call, as whom, for which models, within which limits.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_low_priority_is_shed_when_full() {
    // Six requests a minute per model, burst 1: the second one would wait 10 s > 5 s.
    let gw = start(
        Config {
            mock_preset: "healthy".into(),
            requests_per_minute: 6,
            ..config()
        },
        None,
    )
    .await
    .unwrap();
    let c = client();
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    assert_eq!(json_of(post(&c, &gw, m.to_string()).await).await.0, 200);
    let (status, v, retry) = json_of(post(&c, &gw, m.to_string()).await).await;
    assert_eq!(status, 429);
    assert_openai_error(&v);
    assert_eq!(retry.as_deref(), Some("10"));
    gw.shutdown().await.unwrap();

    // One slot; a slow stream holds it; a low-priority call is shed at once.
    let s = open_stream_scenario(1_000.0);
    let (gw, _mock) = gateway_on(
        s,
        Config {
            max_concurrency: 1,
            idle_timeout: None,
            ..config()
        },
    )
    .await;
    let held = json!({"model": "m", "messages": [{"role": "user", "content": "hold"}], "max_tokens": 3, "stream": true});
    let r = post(&c, &gw, held.to_string()).await;
    // Its headers came at its first token: it holds the one slot from here to its end.
    let reader = tokio::spawn(async move { r.into_body().collect().await.unwrap().to_bytes() });
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .header("x-priority", "low")
        .body(Full::new(Bytes::from(m.to_string())))
        .unwrap();
    let (status, v, _) = json_of(c.request(req).await.unwrap()).await;
    assert_eq!(status, 429, "{v}");
    assert_openai_error(&v);
    assert!(
        events(&reader.await.unwrap()).contains(&"[DONE]".to_owned()),
        "the held stream finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keys_are_checked_before_the_body_and_decide_tenant_model_and_caps() {
    let keys = llm_layers_gateway::keys::Keys::from_json(KEYS).unwrap();
    let (gw, mock) = gateway_on(
        Scenario::healthy().with_time_scale(0.0),
        Config { keys, ..config() },
    )
    .await;
    let c = client();
    // No key, a wrong key, a revoked key: 401 before the body is even parsed, no upstream call.
    for key in [
        None,
        Some("sk-gw-acme-0000000001"),
        Some("sk-gw-gone-0000000000"),
    ] {
        let (status, v, text) = post_as(&c, &gw, key, &[], "{ not json").await;
        assert_eq!(status, 401, "{key:?}: {v}");
        assert_openai_error(&v);
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(!text.contains("sk-gw"), "no key in an error body: {text}");
    }
    assert_eq!(mock.counters().requests(), 0);
    // A key limited to mock/* gets 403 for another model; its max_tokens is capped to 2.
    let other = json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let (status, v, _) = post_as(
        &c,
        &gw,
        Some("sk-gw-acme-0000000000"),
        &[],
        other.to_string(),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "model_not_allowed");
    let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "capped"}], "max_tokens": 50,
        "provider": {"only": ["nobody"]}});
    let (status, v, _) = post_as(&c, &gw, Some("sk-gw-acme-0000000000"), &[], m.to_string()).await;
    assert_eq!(
        status, 200,
        "routing fields stripped (only: nobody would be a 404): {v}"
    );
    let body = ChatBody {
        messages: vec![Message::user("capped")],
        ..ChatBody::default()
    };
    assert_eq!(
        v["choices"][0]["message"]["content"],
        expected_answer(&body, 2)
    );
    // The key's limit binds whatever x-tenant the caller names.
    let hi = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let (status, _, _) = post_as(
        &c,
        &gw,
        Some("sk-gw-lowly-000000000"),
        &[("x-tenant", "a")],
        hi.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, v, _) = post_as(
        &c,
        &gw,
        Some("sk-gw-lowly-000000000"),
        &[("x-tenant", "b")],
        hi.to_string(),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    // /healthz stays open and says the gateway is keyed; /metrics wants an admin key.
    let h = c
        .request(
            hyper::Request::get(format!("http://{}/healthz", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, v, _) = json_of(h).await;
    assert_eq!(
        (status, v["auth"].as_str()),
        (200, Some("gateway keys required"))
    );
    for (key, want) in [
        (None, 401),
        (Some("sk-gw-acme-0000000000"), 403),
        (Some("sk-gw-ops-00000000000"), 404),
    ] {
        let mut r = hyper::Request::get(format!("http://{}/metrics", gw.addr()));
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        let (status, _, _) =
            json_of(c.request(r.body(Full::default()).unwrap()).await.unwrap()).await;
        // 404: the admin gets through; this test gateway has no recorder installed.
        assert_eq!(status, want, "{key:?}");
    }
    gw.shutdown().await.unwrap();
}

/// A low-priority key cannot raise itself with `x-priority: high`: when full, it is shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_key_cannot_raise_itself() {
    let s = open_stream_scenario(1_000.0);
    let (gw, _mock) = gateway_on(
        s,
        Config {
            keys: llm_layers_gateway::keys::Keys::from_json(KEYS).unwrap(),
            max_concurrency: 1,
            idle_timeout: None,
            ..config()
        },
    )
    .await;
    let c = client();
    let held = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hold"}], "max_tokens": 3, "stream": true});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-gw-ops-00000000000")
        .body(Full::new(Bytes::from(held.to_string())))
        .unwrap();
    let r = c.request(req).await.unwrap();
    // Its headers came at its first token: it holds the one slot from here to its end.
    let reader = tokio::spawn(async move { r.into_body().collect().await.unwrap().to_bytes() });
    let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let (status, v, _) = post_as(
        &c,
        &gw,
        Some("sk-gw-lowly-000000000"),
        &[("x-priority", "high")],
        m.to_string(),
    )
    .await;
    assert_eq!(status, 429, "shed as low priority: {v}");
    assert!(events(&reader.await.unwrap()).contains(&"[DONE]".to_owned()));
}

/// `/status.json` shows what the stack learned: the dead provider's breaker open, the learned
/// order without it; `/status` is the page that polls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_breaker_trips_and_the_learned_order() {
    let mut s = Scenario::healthy();
    s.providers.truncate(2);
    s.providers[0].ttft = Dist::Fixed { ms: 1.0 };
    s.providers[1].name = "Down".into();
    s.providers[1].slug = "down".into();
    s.providers[1].faults.status.push(StatusFault {
        code: 502,
        rate: 1.0,
        retry_after_s: None,
    });
    let (gw, _mock) = gateway_on(s, config()).await;
    let c = client();
    for i in 0..60 {
        let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": format!("s{i}")}], "max_tokens": 1});
        let (status, v, _) = json_of(post(&c, &gw, m.to_string()).await).await;
        assert_eq!(status, 200, "{v}");
    }
    let get = |path: &str| {
        hyper::Request::get(format!("http://{}{path}", gw.addr()))
            .body(Full::default())
            .unwrap()
    };
    // Orders and rankings are cached for 250 ms: read until the page shows what was
    // measured (at most 5 s), rather than sleeping a guess.
    let (mut v, mut model) = (Value::Null, Value::Null);
    for _ in 0..250 {
        let (status, page, _) = json_of(c.request(get("/status.json")).await.unwrap()).await;
        assert_eq!(status, 200);
        v = page;
        model = v["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "mock/echo")
            .cloned()
            .unwrap_or_else(|| panic!("{v}"));
        // The store's quantiles and counts are cached too: wait for the cache to cover the
        // calls (they all finished before the first read).
        if model["learned_order"] == json!(["alpha"])
            && model["rankings"][0]["from"] == "prior + measured"
            && model["rankings"][0]["samples"].as_u64() >= Some(10)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(model["learned_order"], json!(["alpha"]), "{model}");
    // The mock published its stats: priors next to what was measured, and the router's
    // ranking says which it stands on.
    assert_eq!(model["rankings"][0]["provider"], "Alpha", "{model}");
    assert_eq!(model["rankings"][0]["from"], "prior + measured", "{model}");
    let provider = |name: &str| {
        model["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {model}"))
    };
    assert_eq!(provider("Down")["breaker"]["state"], "open", "{model}");
    assert_eq!(provider("Down")["success_rate"], 0.0);
    assert!(
        provider("Alpha")["samples"].as_u64().unwrap() >= 10,
        "{model}"
    );
    assert!(
        provider("Alpha")["measured_ttft_ms"]["p50"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(provider("Alpha")["prior_ttft_ms"]["p50"], 1.0, "{model}");
    assert!(
        !provider("Alpha")["recent_ttft_ms"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        v["configuration"]
            .as_str()
            .unwrap()
            .contains("429 handling")
    );
    let page = c.request(get("/status")).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("/status.json"));
    // Each budgeted tenant's spend has its table (filled from `budgets` in the JSON).
    assert!(html.contains(r#"<div id="budgets">"#) && html.contains("s.budgets"));
}

/// A writer that keeps what the log subscriber writes.
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Neither the gateway key nor the upstream key reaches a log line, at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_the_logs() {
    let buf = LogBuf::default();
    let writer = buf.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .try_init();
    let (gw, _mock) = gateway_on(
        Scenario::healthy().with_time_scale(0.0),
        Config {
            keys: llm_layers_gateway::keys::Keys::from_json(KEYS).unwrap(),
            ..config()
        },
    )
    .await;
    let c = client();
    let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    for key in ["sk-gw-ops-00000000000", "sk-gw-ops-00000000001"] {
        let _ = post_as(&c, &gw, Some(key), &[], m.to_string()).await;
    }
    gw.shutdown().await.unwrap();
    let logs = String::from_utf8_lossy(&lock(&buf.0)).into_owned();
    assert!(!logs.is_empty(), "the subscriber saw the calls");
    assert!(!logs.contains("sk-gw-ops"), "a gateway key in the logs");
    assert!(
        !logs.contains("sk-or-v1-test"),
        "the upstream key in the logs"
    );
}

/// A keys file's tenant becomes a metric label and a rate-limit key: one that is empty, over
/// 128 bytes or holds a space or a control character is refused with the file, by name.
#[test]
fn a_tenant_that_cannot_be_a_label_is_refused() {
    use llm_layers_gateway::keys::Keys;
    let file = |tenant: &str| {
        json!({"keys": [{"tenant": tenant, "key": "sk-gw-aaaaaaaaaaaaaaaa"}]}).to_string()
    };
    for bad in ["", "two words", "tab\there", "bell\u{7}", &"t".repeat(129)] {
        let e = Keys::from_json(&file(bad)).unwrap_err();
        assert!(e.contains("tenant"), "{bad:?}: {e}");
        assert!(
            Keys::from_pairs(&format!("{bad}=sk-gw-aaaaaaaaaaaaaaaa")).is_err(),
            "{bad:?}"
        );
    }
    for good in ["acme", "team-7.eu", &"t".repeat(128)] {
        assert!(Keys::from_json(&file(good)).is_ok(), "{good:?}");
    }
}

/// A key's allow-list: `author/*` admits that author's models, never the bare prefix; and a
/// cap on output tokens applies to a request that set none (it gets the cap), to one that set
/// only `max_completion_tokens` (kept as the only field), and to reasoning budgets over it.
#[test]
fn a_key_admits_its_models_and_caps_every_output_field() {
    use llm_layers_core::ChatRequest;
    use llm_layers_gateway::keys::Keys;
    let keys = Keys::from_json(
        &json!({"keys": [{"tenant": "acme", "key": "sk-gw-aaaaaaaaaaaaaaaa",
                          "models": ["openai/*"], "max_tokens": 16}]})
        .to_string(),
    )
    .unwrap();
    let k = keys.iter().next().unwrap();
    assert!(k.allows_model("openai/gpt-4o"));
    assert!(!k.allows_model("openai/"), "the bare prefix is no model");
    assert!(!k.allows_model("anthropic/claude"));
    let apply = |body: Value| {
        let mut req: ChatRequest = serde_json::from_value(body).unwrap();
        k.apply(&mut req).unwrap();
        serde_json::to_value(req.body()).unwrap()
    };
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let none = apply(json!({"model": "openai/gpt-4o", "messages": msgs}));
    assert_eq!(none["max_tokens"], 16, "{none}");
    let newer =
        apply(json!({"model": "openai/gpt-4o", "messages": msgs, "max_completion_tokens": 99}));
    assert_eq!(newer["max_completion_tokens"], 16, "{newer}");
    assert!(
        newer.get("max_tokens").is_none(),
        "only the field it sent: {newer}"
    );
    let reasoning = apply(json!({"model": "openai/gpt-4o", "messages": msgs,
        "reasoning": {"max_tokens": 99}, "thinking": {"budget_tokens": 8}}));
    assert_eq!(reasoning["reasoning"]["max_tokens"], 16);
    assert_eq!(
        reasoning["thinking"]["budget_tokens"], 8,
        "under the cap: kept"
    );
}

/// A key is 16 characters at least, in either form of configuration; a keys file entry gives
/// exactly one of `key` and `key_sha256`; a `max_tokens` of 0 is no cap.
#[test]
fn keys_are_long_enough_given_once_and_a_zero_cap_is_none() {
    use llm_layers_core::ChatRequest;
    use llm_layers_gateway::keys::Keys;
    let (k16, k15) = ("k".repeat(16), "k".repeat(15));
    assert!(Keys::from_pairs(&format!("acme={k16}")).is_ok());
    let e = Keys::from_pairs(&format!("acme={k15}")).unwrap_err();
    assert!(e.contains("shorter than 16"), "{e}");
    let file = |entry: Value| json!({"keys": [entry]}).to_string();
    assert!(Keys::from_json(&file(json!({"tenant": "acme", "key": k16}))).is_ok());
    let e = Keys::from_json(&file(json!({"tenant": "acme", "key": k15}))).unwrap_err();
    assert!(e.contains("shorter than 16"), "{e}");
    let hash = "0".repeat(64);
    for both_or_none in [
        json!({"tenant": "acme", "key": k16, "key_sha256": hash}),
        json!({"tenant": "acme"}),
    ] {
        let e = Keys::from_json(&file(both_or_none)).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
    }
    let keys = Keys::from_json(&file(
        json!({"tenant": "acme", "key": k16, "max_tokens": 0}),
    ))
    .unwrap();
    let k = keys.iter().next().unwrap();
    assert_eq!(k.max_tokens, None);
    let mut req: ChatRequest = serde_json::from_value(json!({"model": "m",
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99}))
    .unwrap();
    k.apply(&mut req).unwrap();
    assert_eq!(req.body().max_tokens, Some(99));
}
