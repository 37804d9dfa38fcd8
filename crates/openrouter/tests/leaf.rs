//! The leaf over real HTTP on loopback, against the mock OpenRouter server.

use std::io::{Read, Write};
use std::net::TcpListener as StdListener;
use std::time::Duration;

use futures_util::StreamExt;
use llm_layers_core::{ChatRequest, ErrorKind, LlmError, Message, ProtocolKind};
use llm_layers_mock::{
    Dist, Faults, MockServer, Scenario, StatusFault, answer_tag, answer_token, expected_answer,
};
use llm_layers_openrouter::OpenRouter;
use tower::ServiceExt;

const KEY: &str = "sk-or-v1-secret-test-key-0123456789";

fn one_provider(faults: Faults) -> Scenario {
    let mut s = Scenario::healthy().with_time_scale(0.0);
    s.providers.truncate(1);
    s.providers[0].faults = faults;
    s
}

fn leaf(server: &MockServer) -> OpenRouter {
    OpenRouter::builder()
        .api_key(KEY)
        .base_url(server.base_url())
        .build()
        .unwrap()
}

fn req(text: &str) -> ChatRequest {
    let mut r = ChatRequest::new("mock/echo", vec![Message::user(text)]);
    r.body_mut().stream = Some(true);
    r.body_mut().max_tokens = Some(5);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_exact_content_and_commits_at_first_content() {
    let mut s = Scenario::healthy();
    s.providers.truncate(1);
    // A 300 ms wait with keep-alive comments every 50 ms before the first token.
    s.providers[0].ttft = Dist::Fixed { ms: 300.0 };
    s.providers[0].gap = Dist::Fixed { ms: 0.0 };
    s.keepalive_ms = 50.0;
    s.crlf = true;
    s.split_writes = true;
    let server = MockServer::start(s).await.unwrap();
    let r = req("hello");
    let stream = leaf(&server).oneshot(r.clone()).await.unwrap();
    let meta = stream.meta().clone();
    assert_eq!(meta.provider.as_deref(), Some("Alpha"));
    assert!(
        meta.generation_id
            .as_deref()
            .unwrap()
            .starts_with("gen-mock-")
    );
    let t = meta.timings;
    let (first_byte, first_token) = (t.first_byte.unwrap(), t.first_token.unwrap());
    assert!(
        first_token.saturating_duration_since(first_byte) >= Duration::from_millis(200),
        "a keep-alive comment is the first byte, not the first token: {t:?}"
    );
    let pending: Vec<_> = stream.pending().cloned().collect();
    assert_eq!(
        pending.len(),
        2,
        "the role-only chunk, then the first token"
    );
    assert_eq!(
        pending[1].content(),
        Some(&*answer_token(&answer_tag(r.body()), 0))
    );
    let done = stream.collect().await.unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some(&*expected_answer(r.body(), 5))
    );
    assert_eq!(done.usage.unwrap().completion_tokens, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_callers_are_streamed_upstream_or_served_json() {
    let server = MockServer::start(one_provider(Faults::default()))
        .await
        .unwrap();
    let mut r = req("json please");
    r.body_mut().stream = None;
    // Default: streamed upstream, collected by the caller.
    let done = leaf(&server)
        .oneshot(r.clone())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some(&*expected_answer(r.body(), 5))
    );
    // Off: one JSON body upstream.
    let json_leaf = OpenRouter::builder()
        .api_key(KEY)
        .base_url(server.base_url())
        .stream_upstream(false)
        .build()
        .unwrap();
    let done = json_leaf
        .oneshot(r.clone())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        done.choices[0].message.content.as_deref(),
        Some(&*expected_answer(r.body(), 5))
    );
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(done.provider.as_deref(), Some("Alpha"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_calls_through_clones_reuse_connections() {
    let server = MockServer::start(one_provider(Faults::default()))
        .await
        .unwrap();
    let leaf = leaf(&server);
    for i in 0..100 {
        let r = req(&format!("call {i}"));
        let done = leaf
            .clone()
            .oneshot(r.clone())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            done.choices[0].message.content.as_deref(),
            Some(&*expected_answer(r.body(), 5))
        );
    }
    let accepted = server.counters().accepted_connections();
    assert!(accepted <= 3, "100 calls opened {accepted} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_multiplexes_concurrent_streams_on_one_connection() {
    let mut s = one_provider(Faults::default());
    s.providers[0].ttft = Dist::Fixed { ms: 100.0 };
    s.time_scale = 1.0;
    let server = MockServer::start(s).await.unwrap();
    let leaf = OpenRouter::builder()
        .api_key(KEY)
        .base_url(server.base_url())
        .http2_prior_knowledge(true)
        .build()
        .unwrap();
    // A cold burst may open a second connection: hyper-util's pool looks for an idle
    // connection and for an HTTP/2 connect in flight in two steps, and on a multi-thread
    // runtime the first connect can finish between them. Warm-up makes the count exact.
    assert_eq!(leaf.warm_up(1).await.unwrap(), 1);
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let leaf = leaf.clone();
            tokio::spawn(async move {
                leaf.oneshot(req(&format!("h2 {i}")))
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    assert_eq!(server.counters().accepted_connections(), 1);
    assert!(
        server.counters().max_open_streams() > 1,
        "streams overlapped"
    );
}

fn status_fault(code: u16, retry_after_s: Option<u64>) -> Faults {
    Faults {
        status: vec![StatusFault {
            code,
            rate: 1.0,
            retry_after_s,
        }],
        ..Faults::default()
    }
}

async fn first_error(faults: Faults) -> LlmError {
    let server = MockServer::start(one_provider(faults)).await.unwrap();
    match leaf(&server).oneshot(req("fail")).await {
        Err(e) => e,
        Ok(stream) => stream.collect().await.unwrap_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_the_right_error_kind() {
    for code in [429u16, 500, 502, 503, 524, 529] {
        let retry = (code == 429 || code == 503).then_some(7);
        let e = first_error(status_fault(code, retry)).await;
        assert_eq!(e.kind(), ErrorKind::Status, "{code}");
        assert_eq!(e.status_code().unwrap().as_u16(), code);
        assert_eq!(e.retry_after(), retry.map(Duration::from_secs), "{code}");
        assert_eq!(
            e.provider(),
            Some("Alpha"),
            "{code}: provider from metadata"
        );
        assert!(e.is_retriable());
    }
    let e = first_error(Faults {
        error_200: 1.0,
        ..Faults::default()
    })
    .await;
    assert_eq!(
        e.kind(),
        ErrorKind::Status,
        "a 200 with an error body is an error"
    );
    assert_eq!(e.status_code().unwrap().as_u16(), 502);

    let e = first_error(Faults {
        reset_before_headers: 1.0,
        ..Faults::default()
    })
    .await;
    assert!(
        matches!(e.kind(), ErrorKind::Transport | ErrorKind::Connect),
        "{e:?}"
    );
    assert!(e.is_retriable());

    for f in [
        Faults {
            midstream_error: 1.0,
            ..Faults::default()
        },
        Faults {
            midstream_error_eof: 1.0,
            ..Faults::default()
        },
    ] {
        let e = first_error(f).await;
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert_eq!(e.provider(), Some("Alpha"));
        assert_eq!(
            e.api_error().unwrap().error_type.as_deref(),
            Some("provider_unavailable")
        );
    }
    let e = first_error(Faults {
        truncate: 1.0,
        ..Faults::default()
    })
    .await;
    assert_eq!(e.kind(), ErrorKind::Truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_error_is_an_err_item_after_the_tokens() {
    let server = MockServer::start(one_provider(Faults {
        midstream_error: 1.0,
        ..Faults::default()
    }))
    .await
    .unwrap();
    let mut stream = leaf(&server).oneshot(req("cut")).await.unwrap();
    let mut tokens = 0;
    let err = loop {
        match stream.next().await.unwrap() {
            Ok(c) => tokens += usize::from(c.is_token()),
            Err(e) => break e,
        }
    };
    assert!(tokens >= 1);
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert!(stream.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_streams_cancels_them_upstream() {
    let mut s = one_provider(Faults::default());
    s.time_scale = 1.0;
    s.providers[0].ttft = Dist::Fixed { ms: 0.0 };
    s.providers[0].gap = Dist::Fixed { ms: 5_000.0 };
    let server = MockServer::start(s).await.unwrap();
    let leaf = leaf(&server);
    let mut streams = Vec::new();
    for i in 0..100 {
        let mut stream = leaf
            .clone()
            .oneshot(req(&format!("drop {i}")))
            .await
            .unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        streams.push(stream);
    }
    assert_eq!(server.counters().open_streams(), 100);
    drop(streams);
    let c = server.counters();
    assert!(
        c.wait_until(Duration::from_secs(10), |c| c.open_streams() == 0
            && c.cancelled_streams() == 100)
            .await,
        "open {} cancelled {}",
        c.open_streams(),
        c.cancelled_streams()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_future_before_the_first_token_cancels_too() {
    let mut s = one_provider(Faults::default());
    s.time_scale = 1.0;
    s.providers[0].ttft = Dist::Fixed { ms: 10_000.0 };
    let server = MockServer::start(s).await.unwrap();
    let fut = leaf(&server).oneshot(req("slow"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), fut)
            .await
            .is_err()
    );
    let c = server.counters();
    assert!(
        c.wait_until(Duration::from_secs(10), |c| c.cancelled_streams() == 1
            && c.open_streams() == 0)
            .await
    );
}

/// A raw HTTP/1.1 server that answers up to four requests with `response`.
fn raw_server(response: Vec<u8>) -> String {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&response);
        }
    });
    format!("http://{addr}/api/v1")
}

fn sse_response(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

async fn raw_error(response: Vec<u8>, max_event: usize) -> LlmError {
    let base = raw_server(response);
    let leaf = OpenRouter::builder()
        .api_key(KEY)
        .base_url(base)
        .max_event_size(max_event)
        .build()
        .unwrap();
    match leaf.oneshot(req("x")).await {
        Err(e) => e,
        Ok(s) => s.collect().await.unwrap_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_typed_errors() {
    let big = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "x".repeat(5000)
    );
    let e = raw_error(sse_response(big.as_bytes()), 1024).await;
    assert_eq!(e.kind(), ErrorKind::Protocol(ProtocolKind::Oversize));

    let e = raw_error(
        sse_response(b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\"}}]}\n\n"),
        4096,
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Protocol(ProtocolKind::Utf8));

    let e = raw_error(sse_response(b"data: hello there\n\n"), 4096).await;
    assert_eq!(e.kind(), ErrorKind::Protocol(ProtocolKind::Json));

    let body = b"<html>oops</html>";
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    resp.extend_from_slice(body);
    let e = raw_error(resp, 4096).await;
    assert_eq!(e.kind(), ErrorKind::Protocol(ProtocolKind::ContentType));

    // A 503 whose body is not JSON keeps its status and Retry-After (an HTTP date).
    let resp = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: Wed, 21 Oct 2099 07:28:00 GMT\r\ncontent-length: 5\r\n\r\nbusy!".to_vec();
    let e = raw_error(resp, 4096).await;
    assert_eq!(e.status_code().unwrap().as_u16(), 503);
    assert!(e.retry_after().unwrap() > Duration::from_secs(3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_connect_error() {
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let leaf = OpenRouter::builder()
        .api_key(KEY)
        .base_url(format!("http://127.0.0.1:{port}/api/v1"))
        .build()
        .unwrap();
    let e = leaf.oneshot(req("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(e.is_connect() && e.is_retriable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_shows() {
    let server = MockServer::start(one_provider(status_fault(401, None)))
        .await
        .unwrap();
    let builder = OpenRouter::builder()
        .api_key(KEY)
        .base_url(server.base_url());
    assert!(!format!("{builder:?}").contains(KEY));
    let leaf = builder.build().unwrap();
    assert!(!format!("{leaf:?}").contains(KEY));
    let e = leaf.clone().oneshot(req("x")).await.unwrap_err();
    assert_eq!(e.status_code().unwrap().as_u16(), 401);
    assert!(!format!("{e:?}").contains(KEY) && !e.to_string().contains(KEY));
    let e = OpenRouter::builder()
        .api_key("bad\nkey")
        .build()
        .unwrap_err();
    assert!(!format!("{e:?}").contains("bad\nkey"));
}

#[test]
fn bad_config_is_rejected() {
    for b in [
        OpenRouter::builder(),
        OpenRouter::builder().api_key("k").base_url("ftp://x"),
        OpenRouter::builder().api_key("k").base_url("not a url"),
        OpenRouter::builder()
            .api_key("k")
            .connect_timeout(Duration::ZERO),
        OpenRouter::builder()
            .api_key("k")
            .default_max_tokens(Some(0)),
        OpenRouter::builder().api_key("k").max_event_size(0),
    ] {
        assert!(!b.build().unwrap_err().message().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_is_cached_single_flight_and_validates_models() {
    let server = MockServer::start(one_provider(Faults::default()))
        .await
        .unwrap();
    let leaf = OpenRouter::builder()
        .api_key(KEY)
        .base_url(server.base_url())
        .validate_models(true)
        .build()
        .unwrap();
    let fetches: Vec<_> = (0..10)
        .map(|_| {
            let l = leaf.clone();
            tokio::spawn(async move { l.models().await.unwrap().len() })
        })
        .collect();
    for f in fetches {
        assert_eq!(f.await.unwrap(), 3);
    }
    assert_eq!(
        server.counters().catalog_requests(),
        1,
        "ten concurrent callers, one fetch"
    );
    assert_eq!(
        leaf.provider_slug("ALPHA").await.unwrap().as_deref(),
        Some("alpha")
    );
    assert_eq!(leaf.provider_slug("Nope").await.unwrap(), None);

    let mut bad = req("x");
    bad.body_mut().model = Some("nobody/unknown".into());
    let e = leaf.clone().oneshot(bad).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    assert_eq!(server.counters().requests(), 0, "rejected locally");
    let mut ok = req("x");
    ok.body_mut().model = Some("mock/echo:nitro".into());
    leaf.clone()
        .oneshot(ok)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();

    leaf.health().await.unwrap();
    assert_eq!(leaf.warm_up(4).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_after_headers_never_commits_and_is_cancelled_on_drop() {
    let server = MockServer::start(one_provider(Faults {
        hang_after_headers: 1.0,
        ..Faults::default()
    }))
    .await
    .unwrap();
    let fut = leaf(&server).oneshot(req("hang"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fut)
            .await
            .is_err()
    );
    assert!(
        server
            .counters()
            .wait_until(Duration::from_secs(10), |c| c.cancelled_streams() == 1
                && c.open_streams() == 0)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_is_reproducible_over_http_and_honours_only() {
    async fn run(seed: u64) -> Vec<(String, String)> {
        let server = MockServer::start(Scenario::chaos().with_time_scale(0.0).with_seed(seed))
            .await
            .unwrap();
        let leaf = leaf(&server);
        let mut out = Vec::new();
        for i in 0..60 {
            let r = req(&format!("repro {}", i % 20));
            let res = tokio::time::timeout(Duration::from_millis(500), async {
                match leaf.clone().oneshot(r).await {
                    Ok(s) => s.collect().await.map(|c| c.provider.unwrap_or_default()),
                    Err(e) => Err(e),
                }
            })
            .await;
            out.push(match res {
                Ok(Ok(p)) => (p, "ok".into()),
                Ok(Err(e)) => (
                    e.provider().unwrap_or("").to_owned(),
                    e.kind().as_str().to_owned(),
                ),
                Err(_) => (String::new(), "hang".into()),
            });
        }
        out
    }
    let a = run(9).await;
    assert_eq!(a, run(9).await);

    let server = MockServer::start(Scenario::healthy().with_time_scale(0.0))
        .await
        .unwrap();
    let leaf = leaf(&server);
    for i in 0..50 {
        let mut r = req(&format!("only {i}"));
        r.body_mut().provider_mut().only = Some(vec!["beta".into()]);
        let done = leaf
            .clone()
            .oneshot(r)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(done.provider.as_deref(), Some("Beta"));
    }
    assert_eq!(server.counters().requests_to("beta"), 50);
    let mut r = req("nobody");
    r.body_mut().provider_mut().only = Some(vec!["nobody".into()]);
    let e = leaf.clone().oneshot(r).await.unwrap_err();
    assert_eq!(e.status_code().unwrap().as_u16(), 404);
    assert!(!e.is_retriable());
}
