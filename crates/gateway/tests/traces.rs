//! Traces: one call that was retried, hedged and resumed, followed through its exported
//! OpenTelemetry spans (received by a real OTLP/HTTP receiver and decoded with the
//! protocol's own types), and the trace context the upstream received with each attempt.
#![cfg(feature = "otel")]

mod common;
use common::*;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use llm_layers_core::sync::lock;
use llm_layers_gateway::otel::Tracing;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const PROMPT: &str = "a secret prompt about elephants";
const UPSTREAM_KEY: &str = "sk-or-v1-upstream-never-exported";

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serves `handle` on an ephemeral loopback port (HTTP/1.1).
async fn serve<F, Fut>(handle: F) -> std::net::SocketAddr
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |r| {
                    let f = handle(r);
                    async move { Ok::<_, Infallible>(f.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn chunk(text: &str, finish: Option<&str>) -> Bytes {
    let mut c = json!({"id": "gen-traced", "object": "chat.completion.chunk", "created": 1,
        "model": "openai/gpt-4o-mini", "provider": "Alpha",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                     "finish_reason": finish}]});
    if finish.is_some() {
        c["usage"] = json!({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12});
    }
    Bytes::from(format!("data: {c}\n\n"))
}

/// An event stream: `parts` after `wait`, each 20 ms after the last (so what precedes a
/// reset is flushed before it).
fn sse(parts: Vec<Result<Bytes, std::io::Error>>, wait: Duration) -> hyper::Response<Body> {
    let body = futures_util::stream::once(tokio::time::sleep(wait))
        .map(|()| Ok(Bytes::new()))
        .chain(futures_util::stream::iter(parts).then(|p| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            p
        }))
        .map(|r| r.map(Frame::data));
    hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(body)))
        .unwrap()
}

/// What the upstream saw: each chat request's `traceparent` and body.
type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// The upstream, by the order of chat requests: a 503; an answer whose first token would
/// come after 3 s (the hedge wins first); the hedge's answer, cut after "The quick brown
/// fox jumps over" (a reset); then every continuation, the rest and its end.
async fn scripted_upstream(seen: Seen) -> std::net::SocketAddr {
    serve(move |r: hyper::Request<Incoming>| {
        let seen = seen.clone();
        async move {
            if r.method() != http::Method::POST {
                return hyper::Response::builder()
                    .status(404)
                    .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
                    .unwrap();
            }
            let parent = r
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut s = lock(&seen);
                s.push((parent, String::from_utf8_lossy(&body).into_owned()));
                s.len()
            };
            match n {
                1 => hyper::Response::builder()
                    .status(503)
                    .header("content-type", "application/json")
                    .body(
                        http_body_util::Full::new(Bytes::from_static(
                            br#"{"error":{"code":503,"message":"no capacity"}}"#,
                        ))
                        .map_err(|e| match e {})
                        .boxed(),
                    )
                    .unwrap(),
                2 => sse(vec![Ok(chunk("late", None))], Duration::from_secs(3)),
                3 => sse(
                    vec![
                        Ok(chunk("The quick brown fox ", None)),
                        Ok(chunk("jumps over", None)),
                        Err(std::io::Error::other("connection reset")),
                    ],
                    Duration::ZERO,
                ),
                _ => sse(
                    vec![
                        // An instruction continuation repeats the end of what it
                        // continues, then goes on.
                        Ok(chunk("n fox jumps over", None)),
                        Ok(chunk(" the lazy dog.", Some("stop"))),
                        Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                    ],
                    Duration::ZERO,
                ),
            }
        }
    })
    .await
}

/// An OTLP/HTTP receiver: every span exported, and the raw bodies.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

async fn otlp_receiver(rx: Receiver) -> std::net::SocketAddr {
    serve(move |r: hyper::Request<Incoming>| {
        let rx = rx.clone();
        async move {
            assert_eq!(r.uri().path(), "/v1/traces");
            assert_eq!(r.headers()["content-type"], "application/x-protobuf");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            lock(&rx.raw).extend_from_slice(&body);
            let req = ExportTraceServiceRequest::decode(body).unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    lock(&rx.spans).extend(ss.spans);
                }
            }
            hyper::Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(
                    http_body_util::Full::new(Bytes::new())
                        .map_err(|e| match e {})
                        .boxed(),
                )
                .unwrap()
        }
    })
    .await
}

fn attr(s: &Span, key: &str) -> Option<String> {
    let v = s.attributes.iter().find(|kv| kv.key == key)?;
    Some(match v.value.as_ref()?.value.as_ref()? {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::BoolValue(b) => b.to_string(),
        Any::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "current_thread")]
async fn a_retried_hedged_resumed_call_is_one_trace_with_an_attempt_span_each() {
    let rx = Receiver::default();
    let collector = otlp_receiver(rx.clone()).await;
    let tracing = Tracing::to_endpoint(
        &format!("http://{collector}/v1/traces"),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(tracing.layer()));

    let seen: Seen = Arc::default();
    let upstream = scripted_upstream(seen.clone()).await;
    let cfg = Config {
        api_key: Some(UPSTREAM_KEY.into()),
        base_url: format!("http://{upstream}/api/v1"),
        first_token_timeout: Some(Duration::from_secs(10)),
        priors: false,
        ..config()
    };
    let gw = start(cfg, None).await.unwrap();
    let body = json!({"model": "openai/gpt-4o-mini", "stream": true, "max_tokens": 20,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": PROMPT}]});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .header("x-llm-resume", "on")
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "caller=1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = client().request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let evs = events(&r.into_body().collect().await.unwrap().to_bytes());
    let text = streamed_content(&evs);
    assert_eq!(text, "The quick brown fox jumps over the lazy dog.");
    // The usage chunk says what the head could not: the continuation joined.
    let usage: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
    let ours = &usage["llm_layers"];
    assert_eq!(
        (&ours["attempts"], &ours["continuations"]),
        (&json!(3), &json!(1))
    );
    gw.shutdown().await.unwrap();
    let t = Arc::new(tracing);
    let flushing = t.clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .unwrap()
        .unwrap();

    let spans = lock(&rx.spans).clone();
    let named = |n: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == n).collect() };
    // The gateway's request span: a child of the caller's span, in the caller's trace.
    let request = named("POST /v1/chat/completions");
    assert_eq!(
        request.len(),
        1,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let request = request[0];
    assert_eq!(hex(&request.trace_id), CALLER_TRACE);
    assert_eq!(hex(&request.parent_span_id), CALLER_SPAN);
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("200")
    );
    // Every span is in that trace.
    assert!(spans.iter().all(|s| hex(&s.trace_id) == CALLER_TRACE));
    // The call: one GenAI span under the request, with what it asked and what came back.
    let chat: Vec<&Span> = named("chat openai/gpt-4o-mini");
    let call: Vec<&&Span> = chat
        .iter()
        .filter(|s| s.parent_span_id == request.span_id)
        .collect();
    assert_eq!(call.len(), 1);
    let call = *call[0];
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openrouter"),
        ("gen_ai.request.model", "openai/gpt-4o-mini"),
        ("gen_ai.response.model", "openai/gpt-4o-mini"),
        ("gen_ai.response.id", "gen-traced"),
        ("gen_ai.response.finish_reasons", "stop"),
        ("llm_layers.provider", "Alpha"),
        ("llm_layers.outcome", "ok"),
    ] {
        assert_eq!(attr(call, k).as_deref(), Some(v), "call span {k}");
    }
    let events: Vec<&str> = call.events.iter().map(|e| e.name.as_str()).collect();
    for e in ["retry", "hedge", "hedge: first token won", "continuation"] {
        assert!(events.contains(&e), "call span events {events:?}");
    }
    // Four attempts under the call, in the order sent, each saying why it was sent.
    let mut attempts: Vec<&Span> = chat
        .iter()
        .filter(|s| s.parent_span_id == call.span_id)
        .copied()
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    let kinds: Vec<String> = attempts
        .iter()
        .map(|s| attr(s, "llm_layers.attempt.kind").unwrap())
        .collect();
    // The first continuation asks for a prefill, which this upstream does not continue (it
    // answers as to the instruction): resume drops it and asks again by instruction.
    assert_eq!(
        kinds,
        ["first", "retry", "hedge", "continuation", "continuation"]
    );
    assert_eq!(attr(attempts[0], "error.type").as_deref(), Some("5xx"));
    assert_eq!(
        attr(attempts[1], "llm_layers.outcome").as_deref(),
        Some("cancelled"),
        "the hedge's loser"
    );
    assert_eq!(
        attr(attempts[2], "error.type").as_deref(),
        Some("truncated"),
        "the hedge that won, then broke"
    );
    assert_eq!(
        attr(attempts[4], "llm_layers.outcome").as_deref(),
        Some("ok")
    );
    assert_eq!(
        attr(attempts[4], "gen_ai.usage.output_tokens").as_deref(),
        Some("3")
    );
    for a in &attempts {
        assert_eq!(attr(a, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr(a, "llm_layers.upstream_key").as_deref(), Some("…rted"));
    }
    // The upstream got each attempt's own span as its parent, in the caller's trace.
    let seen = lock(&seen).clone();
    assert_eq!(seen.len(), 5);
    for ((parent, _), a) in seen.iter().zip(&attempts) {
        let parent = parent
            .as_deref()
            .expect("a traceparent on every upstream request");
        assert_eq!(parent, format!("00-{CALLER_TRACE}-{}-01", hex(&a.span_id)));
    }
    // Never a prompt, a completion or a key in what was exported.
    let raw = String::from_utf8_lossy(&lock(&rx.raw)).into_owned();
    for secret in [PROMPT, UPSTREAM_KEY, "brown fox", "elephants"] {
        assert!(!raw.contains(secret), "{secret:?} exported");
    }
    assert!(
        seen[4].1.contains(PROMPT),
        "the upstream did get the prompt"
    );
}

/// A collector that is down (nothing listens) or hangs (accepts, never answers) costs the
/// calls nothing: spans are queued and exported off their path. Were an export on a call's
/// path, each call would wait out the 5 s export timeout; all of them finish well inside
/// one.
#[tokio::test(flavor = "current_thread")]
async fn a_dead_or_hanging_collector_costs_the_calls_nothing() {
    // Nothing listens on a port just released.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Accepts, reads, never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hanging.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = hanging.accept().await {
            lock(&keep).push(tcp);
        }
    });
    for collector in [down, hang_addr] {
        let tracing = Arc::new(
            Tracing::to_endpoint(
                &format!("http://{collector}/v1/traces"),
                tokio::runtime::Handle::current(),
            )
            .unwrap(),
        );
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(tracing.layer()));
        let (gw, _mock) = gateway_on(Scenario::healthy(), config()).await;
        let c = client();
        let calls = async {
            let mut exports = Vec::new();
            for i in 0..3 {
                let mut rounds = Vec::new();
                for j in 0..10 {
                    let body = json!({"model": "m", "stream": j % 2 == 0, "max_tokens": 5,
                        "messages": [{"role": "user", "content": format!("call {i} {j}")}]});
                    rounds.push(post(&c, &gw, body.to_string()));
                }
                for r in futures_util::future::join_all(rounds).await {
                    assert_eq!(r.status(), 200);
                    r.into_body().collect().await.unwrap();
                }
                // An export of the first round's spans in flight (failing, or hanging)
                // while the next rounds are called.
                if i == 0 {
                    let t = tracing.clone();
                    exports.push(std::thread::spawn(move || t.flush()));
                }
            }
            exports
        };
        let exports = tokio::time::timeout(Duration::from_secs(4), calls)
            .await
            .expect("30 calls within 4 s whatever the collector does");
        gw.shutdown().await.unwrap();
        // The exports give up on the collector within their timeout, and fail.
        let failed = tokio::task::spawn_blocking(move || {
            let failed = exports
                .into_iter()
                .map(|e| e.join().unwrap())
                .filter(Result::is_err)
                .count();
            // Its shutdown would wait out one more export: not this test's business.
            std::thread::spawn(move || drop(tracing));
            failed
        })
        .await
        .unwrap();
        assert!(failed >= 1, "{collector}: an export failed");
    }
    assert!(!lock(&held).is_empty(), "the hanging collector was tried");
}
