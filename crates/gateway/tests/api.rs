//! The OpenAI-compatible API end to end over real HTTP: request and answer shapes, errors,
//! streams that break, resume, cancellation, tiers, coalescing.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_shapes_stream_and_not_with_tools_and_unknown_fields() {
    let gw = start(
        Config {
            mock_preset: "healthy".into(),
            ..config()
        },
        None,
    )
    .await
    .unwrap();
    let c = client();
    let request = json!({
        "model": "openai/gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is the weather?"}]}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto",
        "temperature": 0.2,
        "max_tokens": 6,
        "logit_bias": {"50256": -100},
        "metadata": {"trace": "abc"},
        "stream": true,
        "stream_options": {"include_usage": true}
    });
    let expected = expected_answer(&body_of(&request), 6);

    // Streaming: OpenAI chunks, token by token, usage (asked for), then [DONE].
    let r = post(&c, &gw, request.to_string()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let evs = events(&body);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let tag = answer_tag(&body_of(&request));
    let tokens: Vec<String> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..6).map(|i| answer_token(&tag, i)).collect();
    assert_eq!(tokens, want, "every token once, in order");
    for ch in &chunks {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert!(ch["id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(ch["created"].as_u64().unwrap() > 0);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);

    // Without include_usage, no empty-choices chunk (clients index choices[0]).
    let mut no_usage = request.clone();
    no_usage.as_object_mut().unwrap().remove("stream_options");
    let body = post(&c, &gw, no_usage.to_string())
        .await
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    for e in events(&body).iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(!v["choices"].as_array().unwrap().is_empty(), "{e}");
    }

    // Non-streaming: one chat.completion body.
    let mut plain = request.clone();
    plain["stream"] = json!(false);
    let r = post(&c, &gw, plain.to_string()).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let (status, v, _) = json_of(r).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], expected);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_reach_the_upstream_unchanged() {
    // A one-shot upstream that records the body it got.
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 65536];
        loop {
            let n = s.read(&mut tmp).unwrap();
            buf.extend_from_slice(&tmp[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if buf.len() >= i + 4 + len {
                    tx.send(buf[i + 4..i + 4 + len].to_vec()).unwrap();
                    break;
                }
            }
        }
        let body = b"data: {\"id\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
    });
    let cfg = Config {
        api_key: Some("sk-or-v1-test".into()),
        base_url: format!("http://{addr}/api/v1"),
        ..config()
    };
    let gw = start(cfg, None).await.unwrap();
    let request = json!({
        "model": "x/y",
        "messages": [{"role": "user", "content": "hi", "name": "ann", "x_custom": [1]}],
        "logit_bias": {"1": 2}, "parallel_tool_calls": false, "reasoning": {"effort": "low"},
        "provider": {"order": ["a"], "new_knob": true}, "stream": true
    });
    let (status, _, _) = (
        post(&client(), &gw, request.to_string())
            .await
            .status()
            .as_u16(),
        (),
        (),
    );
    assert_eq!(status, 200);
    let sent: Value =
        serde_json::from_slice(&rx.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    assert_eq!(
        sent, request,
        "the upstream got exactly what the client sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_path_is_openai_shaped_with_the_right_status() {
    let gw = start(
        Config {
            mock_preset: "healthy".into(),
            max_body_bytes: 1024,
            ..config()
        },
        None,
    )
    .await
    .unwrap();
    let c = client();
    let (status, v, _) = json_of(post(&c, &gw, "{\"model\": \"m\", \"messages\": [").await).await;
    assert_eq!(status, 400);
    assert_openai_error(&v);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1 column"),
        "{v}"
    );
    let (status, v, _) = json_of(post(&c, &gw, "{\"model\": \"m\"}").await).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_value"))
    );
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let (status, v, _) = json_of(post(&c, &gw, big.to_string()).await).await;
    assert_eq!(status, 413);
    assert_openai_error(&v);
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/nope", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, v, _) = json_of(r).await;
    assert_eq!(status, 404);
    assert_openai_error(&v);
    let r = c
        .request(
            hyper::Request::delete(format!("http://{}/v1/chat/completions", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    gw.shutdown().await.unwrap();

    let msg =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let cases: &[(Faults, u16, Option<&str>)] = &[
        (
            Faults {
                status: vec![StatusFault {
                    code: 429,
                    rate: 1.0,
                    retry_after_s: Some(1),
                }],
                ..Faults::default()
            },
            429,
            Some("1"),
        ),
        (
            Faults {
                status: vec![StatusFault {
                    code: 502,
                    rate: 1.0,
                    retry_after_s: None,
                }],
                ..Faults::default()
            },
            502,
            None,
        ),
        (
            Faults {
                status: vec![StatusFault {
                    code: 503,
                    rate: 1.0,
                    retry_after_s: Some(2),
                }],
                ..Faults::default()
            },
            503,
            Some("2"),
        ),
        (
            Faults {
                status: vec![StatusFault {
                    code: 524,
                    rate: 1.0,
                    retry_after_s: None,
                }],
                ..Faults::default()
            },
            504,
            None,
        ),
        (
            Faults {
                status: vec![StatusFault {
                    code: 400,
                    rate: 1.0,
                    retry_after_s: None,
                }],
                ..Faults::default()
            },
            400,
            None,
        ),
        (
            Faults {
                status: vec![StatusFault {
                    code: 401,
                    rate: 1.0,
                    retry_after_s: None,
                }],
                ..Faults::default()
            },
            502,
            None,
        ),
        (
            Faults {
                hang_after_headers: 1.0,
                ..Faults::default()
            },
            504,
            None,
        ),
        (
            Faults {
                reset_before_headers: 1.0,
                ..Faults::default()
            },
            502,
            None,
        ),
        (
            Faults {
                error_200: 1.0,
                ..Faults::default()
            },
            502,
            None,
        ),
    ];
    for (faults, want, retry_after) in cases {
        let mut s = Scenario::healthy().with_time_scale(0.0);
        s.providers.truncate(1);
        s.providers[0].faults = faults.clone();
        let (gw, mock) = gateway_on(
            s,
            Config {
                max_retries: 0,
                ..config()
            },
        )
        .await;
        for stream in [false, true] {
            let mut m = msg.clone();
            m["stream"] = json!(stream);
            let (status, v, ra) = json_of(post(&c, &gw, m.to_string()).await).await;
            assert_eq!(status, *want, "{faults:?} stream={stream}: {v}");
            assert_openai_error(&v);
            assert_eq!(ra.as_deref(), *retry_after);
        }
        drop(mock);
        gw.shutdown().await.unwrap();
    }
}

/// A body that stops coming is cut by tower-http's `RequestBodyTimeoutLayer` with an
/// OpenAI-shaped 408, and nothing reaches the upstream.
#[tokio::test]
async fn a_stalled_request_body_gets_an_openai_shaped_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, mock) = gateway_on(
        Scenario::healthy().with_time_scale(0.0),
        Config {
            body_read_timeout: Duration::from_millis(100),
            ..config()
        },
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\nconnection: close\r\n\r\n{\"model\": ",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap();
    assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "request_timeout");
    assert_eq!(mock.counters().requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_first_token_ends_with_an_error_event_not_done() {
    let mut s = Scenario::healthy().with_time_scale(0.0);
    s.providers.truncate(1);
    s.providers[0].faults = Faults {
        truncate: 1.0,
        ..Faults::default()
    };
    let (gw, _mock) = gateway_on(s, config()).await;
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": true});
    let r = post(&client(), &gw, m.to_string()).await;
    assert_eq!(r.status(), 200);
    let evs = events(&r.into_body().collect().await.unwrap().to_bytes());
    assert!(!evs.contains(&"[DONE]".to_owned()), "{evs:?}");
    let last: Value = serde_json::from_str(evs.last().unwrap()).unwrap();
    assert_openai_error(&last);
    // The non-streaming call is retried whole (WholeAnswer) and still fails: an error body
    // (502 from the last attempt, or 503 once the breaker has opened the only provider).
    let mut plain = m.clone();
    plain["stream"] = json!(false);
    let (status, v, _) = json_of(post(&client(), &gw, plain.to_string()).await).await;
    assert!(status == 502 || status == 503, "{status}: {v}");
    assert_openai_error(&v);
}

/// `x-llm-resume: on` over the wire: streams that break after their first token are
/// continued (by prefill, or by instruction from a provider that refuses prefill), whatever
/// broke them (a reset, an error event with or without `[DONE]`, a hang cut by the idle
/// limit), and every answer is exactly the mock's, with one `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_streams_arrive_whole_over_sse() {
    let faults = [
        Faults {
            truncate: 0.15,
            ..Faults::default()
        },
        Faults {
            midstream_error: 0.15,
            ..Faults::default()
        },
        Faults {
            midstream_error_eof: 0.15,
            ..Faults::default()
        },
        Faults {
            hang_midstream: 0.15,
            ..Faults::default()
        },
    ];
    for (k, f) in faults.into_iter().enumerate() {
        resumed_over_sse(f, k % 2 == 0).await;
    }
}

async fn resumed_over_sse(faults: Faults, refuses_prefill: bool) {
    let mut s = Scenario::healthy().with_time_scale(0.0).with_seed(11);
    s.providers.truncate(1);
    s.providers[0].refuses_prefill = refuses_prefill;
    s.providers[0].faults = faults.clone();
    let (gw, mock) = gateway_on(
        s,
        Config {
            idle_timeout: Some(Duration::from_millis(300)),
            ..config()
        },
    )
    .await;
    let c = client();
    for i in 0..20 {
        let m = json!({"model": "m", "messages": [{"role": "user", "content": format!("resume {i}")}],
            "max_tokens": 8, "stream": true});
        let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
            .header("content-type", "application/json")
            .header("x-llm-resume", "on")
            .body(Full::new(Bytes::from(m.to_string())))
            .unwrap();
        let r = c.request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        let evs = events(&r.into_body().collect().await.unwrap().to_bytes());
        assert_eq!(
            evs.last().map(String::as_str),
            Some("[DONE]"),
            "{faults:?} {i}: {evs:?}"
        );
        let text = streamed_content(&evs);
        assert_eq!(text, expected_answer(&body_of(&m), 8), "{faults:?} {i}");
    }
    // Some broke and were continued: more upstream requests than calls.
    assert!(
        mock.counters().requests() > 20,
        "{}",
        mock.counters().requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream_stream() {
    let (gw, mock) = gateway_with_open_streams(2_000.0).await;
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": true});
    let r = post(&client(), &gw, m.to_string()).await;
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    assert_eq!(mock.counters().open_streams(), 1);
    drop(body);
    assert!(
        mock.counters()
            .wait_until(Duration::from_secs(10), |c| c.cancelled_streams() == 1
                && c.open_streams() == 0)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_on_chaos_are_never_corrupted() {
    let (gw, _mock) = gateway_on(
        Scenario::chaos().with_time_scale(0.01).with_seed(11),
        Config {
            // Far above the scaled draws (p99 8 ms), so a loaded machine does not make the
            // success count flaky; hangs are cut by it.
            first_token_timeout: Some(Duration::from_secs(2)),
            ..config()
        },
    )
    .await;
    let c = client();
    let addr = gw.addr();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let c = c.clone();
        tasks.spawn(async move {
            let m = json!({"model": "m", "messages": [{"role": "user", "content": format!("chaos {i}")}], "max_tokens": 12, "stream": true});
            let body = ChatBody { messages: vec![Message::user(format!("chaos {i}"))], ..ChatBody::default() };
            let tag = answer_tag(&body);
            let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(m.to_string())))
                .unwrap();
            let r = c.request(req).await.unwrap();
            let status = r.status().as_u16();
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            if status != 200 {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                assert_openai_error(&v);
                return "error";
            }
            let evs = events(&bytes);
            let mut tokens = Vec::new();
            let mut outcome = "truncated";
            for e in &evs {
                if e == "[DONE]" {
                    outcome = "ok";
                    break;
                }
                let v: Value = serde_json::from_str(e).unwrap();
                if v.get("error").is_some() {
                    assert_openai_error(&v);
                    outcome = "error_event";
                    break;
                }
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                    tokens.push(t.to_owned());
                }
            }
            let want: Vec<String> = (0..tokens.len() as u32).map(|k| answer_token(&tag, k)).collect();
            assert_eq!(tokens, want, "request {i}: a prefix of its own answer, in order, no repeats");
            if outcome == "ok" {
                assert_eq!(tokens.len(), 12, "request {i}: a clean end has every token");
            }
            assert_ne!(outcome, "truncated", "request {i}: never a silent truncation");
            outcome
        });
    }
    let mut counts = std::collections::HashMap::new();
    while let Some(r) = tasks.join_next().await {
        *counts.entry(r.unwrap()).or_insert(0) += 1;
    }
    assert!(counts.get("ok").copied().unwrap_or(0) >= 150, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_graceful_shutdown_cut() {
    let (gw, _mock) = gateway_with_open_streams(60_000.0).await;
    let c = client();
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/v1/models", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, v, _) = json_of(r).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/healthz", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A stream in flight when shutdown starts is cut with an error event after the grace.
    let (_, last) = shut_down_mid_stream(&c, gw).await;
    assert_eq!(last["error"]["code"], "server_shutting_down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_are_models_unknown_tiers_are_400_and_unknown_candidates_refused() {
    let router: llm_layers_router::RouterConfig = serde_json::from_value(json!({
        "tiers": [{"name": "fast", "models": ["mock/fast", "mock/echo"], "sla": {"ttft_ms": 2000}}]
    }))
    .unwrap();
    let gw = start(
        Config {
            mock_preset: "healthy".into(),
            router: router.clone(),
            ..config()
        },
        None,
    )
    .await
    .unwrap();
    let c = client();
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/v1/models", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let (_, v, _) = json_of(r).await;
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"tier:fast"), "{ids:?}");
    assert!(ids.contains(&"mock/echo"), "{ids:?}");

    let m = json!({"model": "tier:fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (status, v, _) = json_of(post(&c, &gw, m.to_string()).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "mock/fast", "cold: the tier's first candidate");

    let m = json!({"model": "tier:nope", "messages": [{"role": "user", "content": "hi"}]});
    let (status, v, _) = json_of(post(&c, &gw, m.to_string()).await).await;
    assert_eq!(status, 400);
    assert_openai_error(&v);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tier `nope`"),
        "{v}"
    );
    gw.shutdown().await.unwrap();

    // A tier naming a model the upstream does not serve is refused at start.
    let mut bad = router;
    bad.tiers[0]
        .models
        .push(llm_layers_router::CandidateConfig::Model(
            "no/such-model".into(),
        ));
    let e = start(
        Config {
            mock_preset: "healthy".into(),
            router: bad,
            ..config()
        },
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("unknown model `no/such-model`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_h2c_multiplexes_every_call_on_one_connection() {
    let (gw, mock) = gateway_on(
        Scenario::healthy().with_time_scale(0.0),
        Config {
            upstream_h2c: true,
            ..config()
        },
    )
    .await;
    let c = client();
    let ask = |i: usize| {
        let c = c.clone();
        let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("h2c {i}")}], "stream": i % 2 == 0});
        let addr = gw.addr();
        async move {
            let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let r = c.request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap();
        }
    };
    // One call opens the connection; then a burst shares it.
    ask(0).await;
    let burst: Vec<_> = (1..=40).map(|i| tokio::spawn(ask(i))).collect();
    for t in burst {
        t.await.unwrap();
    }
    assert_eq!(mock.counters().requests(), 41);
    assert_eq!(mock.counters().accepted_connections(), 1);
}

/// `--coalesce on`: identical concurrent temperature-0 calls share one upstream call, each
/// caller gets the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_serves_identical_calls_with_one_upstream_call() {
    let mut s = Scenario::healthy();
    for p in &mut s.providers {
        // Long enough that all four callers arrive while the first call runs.
        p.ttft = Dist::Fixed { ms: 1_500.0 };
    }
    let (gw, mock) = gateway_on(
        s,
        Config {
            coalesce: true,
            // No hedge: one upstream request is then exactly one upstream call.
            hedge_quantile: 0.0,
            first_token_timeout: Some(Duration::from_secs(5)),
            ..config()
        },
    )
    .await;
    let c = client();
    let body = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "same"}],
                      "max_tokens": 4, "temperature": 0});
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (c, gw_addr, body) = (c.clone(), gw.addr(), body.to_string());
        set.spawn(async move {
            let req = hyper::Request::post(format!("http://{gw_addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            json_of(c.request(req).await.unwrap()).await
        });
    }
    let mut texts = Vec::new();
    while let Some(r) = set.join_next().await {
        let (status, v, _) = r.unwrap();
        assert_eq!(status, 200, "{v}");
        texts.push(v["choices"][0]["message"]["content"].clone());
    }
    assert!(
        texts.iter().all(|t| t == &texts[0] && t.is_string()),
        "{texts:?}"
    );
    assert_eq!(
        mock.counters().requests(),
        1,
        "four callers, one upstream call"
    );
    gw.shutdown().await.unwrap();
}
