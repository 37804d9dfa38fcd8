//! What the gateway tests share: a gateway on a mock we hold, a client, requests and
//! readers of answers.
#![allow(dead_code, unreachable_pub)]
#![allow(unused_imports)]

pub use llm_layers_core::sync::lock;
pub use std::io::{Read, Write};
pub use std::net::TcpListener as StdListener;
pub use std::sync::mpsc;
pub use std::time::Duration;

pub use bytes::Bytes;
pub use http_body_util::{BodyExt, Full};
pub use hyper::body::Incoming;
pub use hyper_util::client::legacy::Client;
pub use hyper_util::client::legacy::connect::HttpConnector;
pub use hyper_util::rt::{TokioExecutor, TokioIo};
pub use llm_layers_core::{ChatBody, Message};
pub use llm_layers_gateway::{Config, Gateway, start};
pub use llm_layers_mock::{
    Dist, Faults, MockServer, Scenario, StatusFault, answer_tag, answer_token, expected_answer,
};
pub use serde_json::{Value, json};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        mock_time_scale: 0.0,
        first_token_timeout: Some(Duration::from_millis(500)),
        shutdown_grace: Duration::from_millis(200),
        ..Config::default()
    }
}

/// A gateway in front of `scenario` served by a mock we hold.
pub async fn gateway_on(scenario: Scenario, mut cfg: Config) -> (Gateway, MockServer) {
    let mock = MockServer::start(scenario).await.unwrap();
    cfg.api_key = Some("sk-or-v1-test".into());
    cfg.base_url = mock.base_url().to_owned();
    (start(cfg, None).await.unwrap(), mock)
}

/// One provider that sends its first token at once, then one every `gap_ms`: streams that
/// stay open.
pub fn open_stream_scenario(gap_ms: f64) -> Scenario {
    let mut s = Scenario::healthy();
    s.providers.truncate(1);
    s.providers[0].ttft = Dist::Fixed { ms: 0.0 };
    s.providers[0].gap = Dist::Fixed { ms: gap_ms };
    s
}

/// A gateway with no idle limit in front of [`open_stream_scenario`].
pub async fn gateway_with_open_streams(gap_ms: f64) -> (Gateway, MockServer) {
    let cfg = Config {
        idle_timeout: None,
        ..config()
    };
    gateway_on(open_stream_scenario(gap_ms), cfg).await
}

pub async fn post(
    c: &HttpClient,
    gw: &Gateway,
    body: impl Into<Bytes>,
) -> hyper::Response<Incoming> {
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-anything")
        .body(Full::new(body.into()))
        .unwrap();
    c.request(req).await.unwrap()
}

pub async fn json_of(r: hyper::Response<Incoming>) -> (u16, Value, Option<String>) {
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
pub fn events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

pub fn body_of(v: &Value) -> ChatBody {
    serde_json::from_value(v.clone()).unwrap()
}

pub fn assert_openai_error(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some(), "{v}");
    assert!(!v.to_string().contains("sk-or-v1"), "no key in errors: {v}");
}

/// Opens a stream, shuts the gateway down while it is in flight, and returns the HTTP
/// version it was served in and its last event.
pub async fn shut_down_mid_stream(c: &HttpClient, gw: Gateway) -> (hyper::Version, Value) {
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": true});
    let r = post(c, &gw, m.to_string()).await;
    let version = r.version();
    // Its headers came at its first token: the stream is in flight from here.
    let reader = tokio::spawn(async move { r.into_body().collect().await.unwrap().to_bytes() });
    // shutdown returns only once every connection has ended.
    gw.shutdown().await.unwrap();
    let evs = events(&reader.await.unwrap());
    (version, serde_json::from_str(evs.last().unwrap()).unwrap())
}

/// A keyed gateway: `post` with a chosen `Authorization` and headers.
pub async fn post_as(
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

pub const KEYS: &str = r#"{"keys": [
    {"tenant": "acme", "key": "sk-gw-acme-0000000000", "models": ["mock/*"], "max_tokens": 2},
    {"tenant": "lowly", "key": "sk-gw-lowly-000000000", "priority": "low", "requests_per_minute": 6},
    {"tenant": "ops", "key": "sk-gw-ops-00000000000", "admin": true},
    {"tenant": "gone", "key": "sk-gw-gone-0000000000", "revoked": true}
]}"#;

/// A client that speaks HTTP/2 with prior knowledge (h2c), as a service mesh does.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// The text a streamed or whole answer carries.
pub async fn answer_text(r: hyper::Response<Incoming>, stream: bool) -> String {
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
pub fn streamed_content(evs: &[String]) -> String {
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
