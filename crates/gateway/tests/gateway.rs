//! The gateway end to end over real HTTP: OpenAI request shapes in, the mock upstream behind.

use llm_layers_core::sync::lock;
use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use llm_layers_core::{ChatBody, Message};
use llm_layers_gateway::{Config, Gateway, start};
use llm_layers_mock::{
    Dist, Faults, MockServer, Scenario, StatusFault, answer_tag, answer_token, expected_answer,
};
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        mock_time_scale: 0.0,
        first_token_timeout: Some(Duration::from_millis(500)),
        shutdown_grace: Duration::from_millis(200),
        ..Config::default()
    }
}

/// A gateway in front of `scenario` served by a mock we hold.
async fn gateway_on(scenario: Scenario, mut cfg: Config) -> (Gateway, MockServer) {
    let mock = MockServer::start(scenario).await.unwrap();
    cfg.api_key = Some("sk-or-v1-test".into());
    cfg.base_url = mock.base_url().to_owned();
    (start(cfg, None).await.unwrap(), mock)
}

/// One provider that sends its first token at once, then one every `gap_ms`: streams that
/// stay open.
fn open_stream_scenario(gap_ms: f64) -> Scenario {
    let mut s = Scenario::healthy();
    s.providers.truncate(1);
    s.providers[0].ttft = Dist::Fixed { ms: 0.0 };
    s.providers[0].gap = Dist::Fixed { ms: gap_ms };
    s
}

/// A gateway with no idle limit in front of [`open_stream_scenario`].
async fn gateway_with_open_streams(gap_ms: f64) -> (Gateway, MockServer) {
    let cfg = Config {
        idle_timeout: None,
        ..config()
    };
    gateway_on(open_stream_scenario(gap_ms), cfg).await
}

async fn post(c: &HttpClient, gw: &Gateway, body: impl Into<Bytes>) -> hyper::Response<Incoming> {
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-anything")
        .body(Full::new(body.into()))
        .unwrap();
    c.request(req).await.unwrap()
}

async fn json_of(r: hyper::Response<Incoming>) -> (u16, Value, Option<String>) {
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        retry,
    )
}

/// Splits an SSE body into its data payloads.
fn events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

fn body_of(v: &Value) -> ChatBody {
    serde_json::from_value(v.clone()).unwrap()
}

fn assert_openai_error(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some(), "{v}");
    assert!(!v.to_string().contains("sk-or-v1"), "no key in errors: {v}");
}

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

/// Opens a stream, shuts the gateway down while it is in flight, and returns the HTTP
/// version it was served in and its last event.
async fn shut_down_mid_stream(c: &HttpClient, gw: Gateway) -> (hyper::Version, Value) {
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": true});
    let r = post(c, &gw, m.to_string()).await;
    let version = r.version();
    let reader = tokio::spawn(async move { r.into_body().collect().await.unwrap().to_bytes() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // shutdown returns only once every connection has ended.
    gw.shutdown().await.unwrap();
    let evs = events(&reader.await.unwrap());
    (version, serde_json::from_str(evs.last().unwrap()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_renders_the_genai_histograms() {
    // The one test of this binary that installs the process-wide recorder.
    let handle = llm_layers_gateway::install_metrics().unwrap();
    let _ = HANDLE.set(handle.clone());
    let mut cfg = config();
    cfg.mock_preset = "healthy".into();
    let gw = start(cfg, Some(handle)).await.unwrap();
    let c = client();
    let m = json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true});
    post(&c, &gw, m.to_string())
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/metrics", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for needle in [
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket{",
        "gen_ai_client_operation_duration_seconds_bucket{",
        "le=\"20.48\"",
        "gen_ai_request_model=\"openai/gpt-4o-mini\"",
        "llm_scope=\"attempt\"",
        "llm_scope=\"call\"",
        "openrouter_provider=\"",
        "llm_client_calls_total{",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("sk-or-v1"), "no key in metrics");
    gw.shutdown().await.unwrap();
    grafana_queries_name_only_exported_metrics(handle_again()).await;
}

/// The process-wide recorder's handle (installed by the test above).
fn handle_again() -> metrics_exporter_prometheus::PrometheusHandle {
    HANDLE.get().cloned().expect("installed")
}

static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Every metric the Grafana dashboard queries is in a `/metrics` scrape of a gateway that saw
/// a dead provider, a hung one and a throttled one (so breakers, hedges and holds all fire).
async fn grafana_queries_name_only_exported_metrics(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) {
    let mut s = Scenario::healthy();
    s.providers[0].ttft = Dist::Fixed { ms: 1.0 };
    s.providers[1].name = "Down".into();
    s.providers[1].slug = "down".into();
    s.providers[1].faults.status.push(StatusFault {
        code: 502,
        rate: 1.0,
        retry_after_s: None,
    });
    s.providers[2].name = "Busy".into();
    s.providers[2].slug = "busy".into();
    s.providers[2].faults.status.push(StatusFault {
        code: 429,
        rate: 1.0,
        retry_after_s: Some(1),
    });
    let mut stuck = s.providers[0].clone();
    stuck.name = "Stuck".into();
    stuck.slug = "stuck".into();
    stuck.faults.hang_after_headers = 1.0;
    s.providers.push(stuck);
    let mock = MockServer::start(s).await.unwrap();
    let cfg = Config {
        api_key: Some("sk-or-v1-test".into()),
        base_url: mock.base_url().to_owned(),
        first_token_timeout: Some(Duration::from_secs(5)),
        ..config()
    };
    let gw = start(cfg, Some(handle)).await.unwrap();
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..48 {
        let (c, addr) = (c.clone(), gw.addr());
        set.spawn(async move {
            let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": format!("g{i}")}], "max_tokens": 1});
            let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(m.to_string())))
                .unwrap();
            json_of(c.request(req).await.unwrap()).await.0
        });
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), 200);
    }
    // Calls that name the dead provider first, one after another: its breaker opens.
    for i in 0..8 {
        let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": format!("d{i}")}],
            "max_tokens": 1, "provider": {"order": ["down"]}});
        assert_eq!(json_of(post(&c, &gw, m.to_string()).await).await.0, 200);
    }
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/metrics", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let dashboard: Value =
        serde_json::from_str(include_str!("../grafana/llm-layers.json")).unwrap();
    let mut queries = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", Value::String(q)) => out.push(q.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut queries);
    // Labels: what a `by (...)` groups on, what a matcher compares, label_values' second
    // argument. Every other `gen_ai_*` / `llm_*` word of a query is a metric name.
    let mut labels = std::collections::BTreeSet::new();
    for q in &queries {
        for group in q
            .split("by (")
            .skip(1)
            .chain(q.split("label_values(").skip(1))
        {
            let list = group.split(')').next().unwrap_or("");
            let skip = usize::from(q.contains("label_values(") && group.contains(','));
            for l in list.split(',').skip(skip) {
                labels.insert(l.trim().to_owned());
            }
        }
        for part in q.split(['{', ',']) {
            if let Some((l, _)) = part.split_once(['=', '!']) {
                labels.insert(l.trim().to_owned());
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for q in &queries {
        for token in q.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')) {
            if (token.starts_with("gen_ai_") || token.starts_with("llm_"))
                && !labels.contains(token)
            {
                names.insert(token.to_owned());
            }
        }
    }
    assert!(names.len() >= 9, "{names:?}");
    for name in &names {
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "the dashboard queries {name}, which /metrics does not export:\n{text}"
        );
    }
    gw.shutdown().await.unwrap();
}

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
    let reader = tokio::spawn(async move { r.into_body().collect().await.unwrap().to_bytes() });
    tokio::time::sleep(Duration::from_millis(100)).await;
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

#[test]
fn flags_win_over_the_environment_and_bad_values_are_refused() {
    let env = |k: &str| match k {
        "UPSTREAM_H2C" => Some("on".to_owned()),
        "LEARNED_ORDER" => Some("off".to_owned()),
        "MAX_RETRIES" => Some("5".to_owned()),
        _ => None,
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let c = Config::from_args_env(args(&[]), env).unwrap();
    assert!(c.upstream_h2c);
    assert!(!c.router.learned_order.enabled);
    assert_eq!(c.max_retries, 5);
    let c =
        Config::from_args_env(args(&["--upstream-h2c", "off", "--max-retries=1"]), env).unwrap();
    assert!(!c.upstream_h2c);
    assert_eq!(c.max_retries, 1);
    let e = Config::from_args_env(args(&["--upstream-h2c", "maybe"]), |_| None).unwrap_err();
    assert!(
        e.contains("--upstream-h2c") && e.contains("on or off"),
        "{e}"
    );
    assert!(
        !Config::default().upstream_h2c,
        "HTTP/1.1 or ALPN by default"
    );
}

#[test]
fn the_configuration_never_shows_the_api_key() {
    let c = Config::from_args_env(Vec::new(), |k| match k {
        "OPENROUTER_API_KEY" => Some("sk-or-v1-secret-value".to_owned()),
        "REDIS_URL" => Some("redis://:hunter2-secret-value@10.0.0.1:6379/0".to_owned()),
        _ => None,
    })
    .unwrap();
    assert!(c.redis_url.is_some());
    assert!(c.api_key.is_some());
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret-value"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(!c.describe().contains("secret-value"));
    assert!(c.describe().contains("429 handling"));
}

/// A keyed gateway: `post` with a chosen `Authorization` and headers.
async fn post_as(
    c: &HttpClient,
    gw: &Gateway,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (u16, Value, String) {
    let mut req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    for (h, v) in headers {
        req = req.header(*h, *v);
    }
    let r = c
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

const KEYS: &str = r#"{"keys": [
    {"tenant": "acme", "key": "sk-gw-acme-0000000000", "models": ["mock/*"], "max_tokens": 2},
    {"tenant": "lowly", "key": "sk-gw-lowly-000000000", "priority": "low", "requests_per_minute": 6},
    {"tenant": "ops", "key": "sk-gw-ops-00000000000", "admin": true},
    {"tenant": "gone", "key": "sk-gw-gone-0000000000", "revoked": true}
]}"#;

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
    let reader = tokio::spawn(async move { r.into_body().collect().await.unwrap().to_bytes() });
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    // Orders are cached for 250 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let get = |path: &str| {
        hyper::Request::get(format!("http://{}{path}", gw.addr()))
            .body(Full::default())
            .unwrap()
    };
    let (status, v, _) = json_of(c.request(get("/status.json")).await.unwrap()).await;
    assert_eq!(status, 200);
    let model = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "mock/echo")
        .unwrap_or_else(|| panic!("{v}"));
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
    assert!(provider("Alpha")["samples"].as_u64().unwrap() >= 10);
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
    assert!(String::from_utf8_lossy(&html).contains("/status.json"));
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

/// A config file with two upstreams: OpenRouter (slow today) and a provider's own strict
/// OpenAI-compatible endpoint racing it for one model. Settings in the file give way to the
/// environment and flags; the raced model is answered by the faster upstream, the others by
/// OpenRouter; no key text in the configuration's `Debug`, `/metrics` or `/status.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_races_two_upstreams_and_flags_override_it() {
    let mut slow = Scenario::healthy();
    for p in &mut slow.providers {
        p.ttft = Dist::Fixed { ms: 1_500.0 };
    }
    let openrouter = MockServer::start(slow).await.unwrap();
    let mut fast = Scenario::healthy();
    fast.strict_openai = true;
    fast.models.push("gpt-4o-mini".into());
    let direct = MockServer::start(fast).await.unwrap();
    let dir = std::env::temp_dir().join(format!("llm-layers-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[settings]
listen = "127.0.0.1:0"
max-retries = 3
resume = true

[[upstreams]]
name = "openrouter"
base_url = "{}"
keys = [{{ name = "main", key = "sk-or-v1-file-secret-0001" }}]

[[upstreams]]
name = "direct"
dialect = "openai-compatible"
base_url = "{}"
keys = [{{ name = "direct-key", key = "sk-direct-file-secret-0002" }}]
model_map = {{ "openai/gpt-4o-mini" = "gpt-4o-mini" }}
race = ["openai/gpt-4o-mini"]
"#,
            openrouter.base_url(),
            direct.base_url()
        ),
    )
    .unwrap();
    let env = |k: &str| (k == "MAX_RETRIES").then(|| "2".to_owned());
    let args = vec![
        "--config".to_owned(),
        path.display().to_string(),
        "--max-retries=1".to_owned(),
    ];
    let cfg = Config::from_args_env(args, env).unwrap();
    assert_eq!(
        cfg.max_retries, 1,
        "flags win over the environment and the file"
    );
    assert!(cfg.resume, "the file's settings apply");
    assert_eq!(cfg.upstreams.len(), 2);
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("file-secret"), "{debug}");
    let e = Config::from_args_env(
        vec![
            "--config".into(),
            path.display().to_string(),
            "--max-retries".into(),
            "x".into(),
        ],
        |_| None,
    )
    .unwrap_err();
    assert!(e.contains("--max-retries"), "{e}");

    let gw = start(
        Config {
            first_token_timeout: Some(Duration::from_secs(5)),
            ..cfg
        },
        None,
    )
    .await
    .unwrap();
    let c = client();
    let raced = json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "r"}], "max_tokens": 2});
    let (status, v, _) = json_of(post(&c, &gw, raced.to_string()).await).await;
    assert_eq!(status, 200, "{v}");
    let plain = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "p"}], "max_tokens": 2});
    let (status, v, _) = json_of(post(&c, &gw, plain.to_string()).await).await;
    assert_eq!(status, 200, "{v}");
    // The raced model reached the strict endpoint, with nothing OpenRouter-only in it; the
    // other model only OpenRouter.
    assert!(direct.counters().requests() >= 1);
    let sent: Value = serde_json::from_slice(direct.counters().bodies().last().unwrap()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert!(openrouter.counters().requests() >= 1);
    for path in ["/metrics", "/status.json"] {
        let r = c
            .request(
                hyper::Request::get(format!("http://{}{path}", gw.addr()))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        let text =
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(!text.contains("file-secret"), "{path}: {text}");
    }
    gw.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
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

/// Two gateways given one Redis are one gateway to a limit: a call to the first spends the
/// bucket the second sees (without Redis each would admit its own). A gateway whose Redis
/// is unreachable starts and serves from local state, and says so on the status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_share_one_limit_and_a_dead_redis_is_local_state() {
    let Some(server) = llm_layers_redis::testing::RedisServer::start() else {
        return;
    };
    let shared = || Config {
        mock_preset: "healthy".into(),
        // Six a minute per model, burst 1: the second call anywhere would wait 10 s > 5 s.
        requests_per_minute: 6,
        redis_url: Some(server.url()),
        replicas: 2,
        ..config()
    };
    let (a, b) = (
        start(shared(), None).await.unwrap(),
        start(shared(), None).await.unwrap(),
    );
    let c = client();
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    assert_eq!(json_of(post(&c, &a, m.to_string()).await).await.0, 200);
    let (status, v, retry) = json_of(post(&c, &b, m.to_string()).await).await;
    assert_eq!(
        status, 429,
        "the other replica spent the shared bucket: {v}"
    );
    assert_openai_error(&v);
    assert!(retry.is_some());
    let status_of = |gw: &Gateway| format!("http://{}/status.json", gw.addr());
    let get = |url: String| {
        let c = c.clone();
        async move {
            let r = c
                .request(
                    hyper::Request::get(url)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            json_of(r).await.1
        }
    };
    let st = get(status_of(&a)).await;
    assert_eq!(st["shared_state"]["healthy"], json!(true), "{st}");
    assert!(
        !st.to_string().contains(&server.url()),
        "the Redis URL is never shown"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // Nothing listens there: the gateway starts, serves, and says it is on local state.
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let alone = start(
        Config {
            mock_preset: "healthy".into(),
            redis_url: Some(format!("redis://127.0.0.1:{port}")),
            ..config()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(json_of(post(&c, &alone, m.to_string()).await).await.0, 200);
    let st = get(status_of(&alone)).await;
    assert_eq!(st["shared_state"]["healthy"], json!(false), "{st}");
    alone.shutdown().await.unwrap();
}

/// A client that speaks HTTP/2 with prior knowledge (h2c), as a service mesh does.
fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// The text a streamed or whole answer carries.
async fn answer_text(r: hyper::Response<Incoming>, stream: bool) -> String {
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    if !stream {
        let v: Value = serde_json::from_slice(&body).unwrap();
        return v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let evs = events(&body);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    streamed_content(&evs)
}

/// The content of choice 0 over a stream's events (each JSON but a last `[DONE]`).
fn streamed_content(evs: &[String]) -> String {
    let chunks = evs.strip_suffix(&["[DONE]".to_owned()]).unwrap_or(evs);
    chunks
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_http1_or_h2c_on_the_same_port() {
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), config()).await;
    for (name, c) in [("http/1.1", client()), ("h2c", h2c_client())] {
        for stream in [true, false] {
            let m = json!({"model": "m", "messages": [{"role": "user", "content": format!("{name} {stream}")}], "max_tokens": 4, "stream": stream});
            let r = post(&c, &gw, m.to_string()).await;
            let want = if name == "h2c" {
                hyper::Version::HTTP_2
            } else {
                hyper::Version::HTTP_11
            };
            assert_eq!(r.version(), want, "{name}");
            let text = answer_text(r, stream).await;
            assert_eq!(
                text,
                expected_answer(&body_of(&m), 4),
                "{name} stream={stream}"
            );
        }
    }
}

/// A connection whose first write sends one byte, and whose next write waits 50 ms: the
/// gateway sees a lone `P`, which could start the HTTP/2 preface or `POST`.
struct SplitFirstWrite {
    tcp: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    writes: usize,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::rt::Read for SplitFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SplitFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.writes += 1;
        let buf = match this.writes {
            1 => &buf[..1],
            2 => {
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                if pause.as_mut().poll(cx).is_pending() {
                    this.writes -= 1;
                    return std::task::Poll::Pending;
                }
                buf
            }
            _ => buf,
        };
        std::pin::Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_or_a_request_that_arrives_in_pieces_is_served() {
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), config()).await;
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "in pieces"}], "max_tokens": 3, "stream": true});
    let req = || {
        hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(m.to_string())))
            .unwrap()
    };
    let open = || async {
        SplitFirstWrite {
            tcp: hyper_util::rt::TokioIo::new(
                tokio::net::TcpStream::connect(gw.addr()).await.unwrap(),
            ),
            writes: 0,
            pause: None,
        }
    };
    // HTTP/2: "P", then the rest of the preface.
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), open().await)
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = send.send_request(req()).await.unwrap();
    assert_eq!(r.version(), hyper::Version::HTTP_2);
    assert_eq!(answer_text(r, true).await, expected_answer(&body_of(&m), 3));
    // HTTP/1.1: "P", then "OST /v1/chat/completions ...".
    let (mut send, conn) = hyper::client::conn::http1::handshake(open().await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = send.send_request(req()).await.unwrap();
    assert_eq!(r.version(), hyper::Version::HTTP_11);
    assert_eq!(answer_text(r, true).await, expected_answer(&body_of(&m), 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_stream_in_flight_at_shutdown_is_cut_with_an_error_event() {
    let (gw, _mock) = gateway_with_open_streams(60_000.0).await;
    let (version, last) = shut_down_mid_stream(&h2c_client(), gw).await;
    assert_eq!(version, hyper::Version::HTTP_2);
    assert_eq!(last["error"]["code"], "server_shutting_down");
}

#[test]
fn worker_threads_pick_the_runtime() {
    use tokio::runtime::RuntimeFlavor;
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let env = |k: &str| (k == "WORKER_THREADS").then(|| "3".to_owned());
    // The default: one worker per core.
    let c = Config::from_args_env(args(&[]), |_| None).unwrap();
    assert_eq!(c.worker_threads, 0);
    let rt = c.runtime().unwrap();
    assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
    // The environment, then the flag, which wins.
    let c = Config::from_args_env(args(&[]), env).unwrap();
    assert_eq!(c.runtime().unwrap().metrics().num_workers(), 3);
    let c = Config::from_args_env(args(&["--worker-threads", "1"]), env).unwrap();
    let rt = c.runtime().unwrap();
    assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
    assert!(
        c.describe().contains("1 (single-threaded runtime)"),
        "{}",
        c.describe()
    );
    // A single-threaded gateway serves like any other.
    rt.block_on(async {
        let mut cfg = config();
        cfg.worker_threads = 1;
        cfg.mock_preset = "healthy".into();
        let gw = start(cfg, None).await.unwrap();
        let m = json!({"model": "m", "messages": [{"role": "user", "content": "one thread"}], "max_tokens": 3, "stream": true});
        let text = answer_text(post(&client(), &gw, m.to_string()).await, true).await;
        assert_eq!(text, expected_answer(&body_of(&m), 3));
        gw.shutdown().await.unwrap();
    });
    for bad in ["many", "-1", "100000"] {
        let flag = format!("--worker-threads={bad}");
        let e = Config::from_args_env(args(&[&flag]), |_| None).unwrap_err();
        assert!(e.contains("--worker-threads"), "{e}");
    }
}

/// A client that connects and says nothing, trickles a request head or leaves a keep-alive
/// connection idle loses its connection after `--header-read-timeout-ms`, not before; one that
/// sends its request in time is served.
#[tokio::test(start_paused = true)]
async fn silent_trickling_and_idle_clients_are_cut_at_the_head_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = Config {
        header_read_timeout: Duration::from_secs(5),
        ..config()
    };
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), cfg).await;
    let silent = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut trickle = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    trickle
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut conns = [("silent", silent), ("trickling", trickle)];
    // Still open just before the limit...
    for (name, s) in &mut conns {
        let mut buf = [0u8; 64];
        let early =
            tokio::time::timeout_at(started + Duration::from_millis(4_900), s.read(&mut buf)).await;
        assert!(early.is_err(), "{name}: closed before the head timeout");
    }
    // ...and closed after it (hyper may say 408 first).
    for (name, s) in &mut conns {
        let mut buf = Vec::new();
        tokio::time::timeout_at(started + Duration::from_secs(6), s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name}: still open a second after the head timeout"))
            .unwrap();
        let closed_at = tokio::time::Instant::now().saturating_duration_since(started);
        assert!(closed_at >= Duration::from_secs(5), "{name}: {closed_at:?}");
        let said = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || said.starts_with("HTTP/1.1 408"),
            "{name}: {said}"
        );
    }
    // A client that sends its request in time is served; its keep-alive connection may then
    // sit idle for as long, and no longer.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "in time"}], "max_tokens": 3, "stream": true});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(m.to_string())))
        .unwrap();
    let text = answer_text(send.send_request(req).await.unwrap(), true).await;
    assert_eq!(text, expected_answer(&body_of(&m), 3));
    let idle = tokio::time::Instant::now();
    let mut conn = conn;
    let early = tokio::time::timeout_at(idle + Duration::from_millis(4_900), &mut conn).await;
    assert!(early.is_err(), "an idle keep-alive connection closed early");
    tokio::time::timeout_at(idle + Duration::from_secs(6), conn)
        .await
        .expect("an idle keep-alive connection outlived the head timeout")
        .unwrap()
        .unwrap();
}
