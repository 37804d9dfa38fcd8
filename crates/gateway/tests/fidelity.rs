//! Byte fidelity over the wire: an upstream we did not write (odd whitespace, any key order,
//! escapes, surrogate pairs, numbers no `f64` holds, fields no type models, at the top level
//! and nested) → the gateway with its defaults → an HTTP client. With no layer changing
//! anything, every event the client receives is the upstream's, byte for byte; the usage
//! event differs only by the `"llm_layers"` summary the gateway adds at its end.

mod common;
use common::*;

use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};

use hyper::service::service_fn;
use llm_layers_core::sse::SseParser;
use proptest::prelude::*;

/// The events the upstream sends for the next call (their JSON, each as one SSE event).
type Events = Arc<Mutex<Vec<String>>>;

struct Wire {
    rt: tokio::runtime::Runtime,
    gateway: std::net::SocketAddr,
    events: Events,
    _gw: Gateway,
}

/// An upstream that answers each chat call with the events set in `events` (split into
/// `data:` lines where the JSON spans lines), and 404 to anything else.
async fn upstream(events: Events) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |r: hyper::Request<Incoming>| {
                    let body = if r.uri().path().ends_with("/chat/completions") {
                        let mut out = String::new();
                        for e in lock(&events).iter() {
                            for line in e.split('\n') {
                                out.push_str("data: ");
                                out.push_str(line);
                                out.push('\n');
                            }
                            out.push('\n');
                        }
                        out.push_str("data: [DONE]\n\n");
                        Some(out)
                    } else {
                        None
                    };
                    async move {
                        let r = match body {
                            Some(b) => hyper::Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(Full::new(Bytes::from(b))),
                            None => hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(r.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

static WIRE: LazyLock<Wire> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let events = Events::default();
    let (gw, gateway) = rt.block_on(async {
        let up = upstream(events.clone()).await;
        let cfg = Config {
            api_key: Some("sk-or-v1-fidelity".into()),
            base_url: format!("http://{up}/api/v1"),
            first_token_timeout: Some(Duration::from_secs(10)),
            priors: false,
            ..config()
        };
        let gw = start(cfg, None).await.unwrap();
        let addr = gw.addr();
        (gw, addr)
    });
    Wire {
        rt,
        gateway,
        events,
        _gw: gw,
    }
});

/// What the client receives for one streamed call: the data of each event, as the SSE rules
/// join it.
fn relay(events: Vec<String>) -> Vec<String> {
    // One call at a time: the upstream answers every call with the events set here.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = lock(&ONE_AT_A_TIME);
    let wire = &*WIRE;
    *lock(&wire.events) = events;
    let body = wire.rt.block_on(async {
        let req = json!({"model": "openai/gpt-4o-mini", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]});
        let req = hyper::Request::post(format!("http://{}/v1/chat/completions", wire.gateway))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(req.to_string())))
            .unwrap();
        let r = client().request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap().to_bytes()
    });
    let mut p = SseParser::new();
    p.push(body);
    std::iter::from_fn(|| p.next_event())
        .map(|e| e.expect("a valid event").data().to_owned())
        .collect()
}

/// JSON whitespace an SSE line can carry (no CR: it ends a line; never a blank line).
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\t", "\n", " \n\t ", "  "])
}

fn odd_number() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "12345678901234567890",
        "123456789012345678901234",
        "1e400",
        "-1E-400",
        "-0.0",
        "1.5e300",
        "1e-7",
        "0",
        "-7",
    ])
}

fn odd_string() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        r#""plain""#,
        r#""esc \" \\ \/ \b\f\n\r\t""#,
        r#""\ud83d\ude00 a surrogate pair""#,
        r#""\u00e9 written \u6f22 escaped""#,
        "\"é 漢 😀 as they are\"",
        r#""\u0000""#,
        r#""""#,
    ])
}

/// Any JSON value an upstream might add, nested up to three deep.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        odd_number().prop_map(str::to_owned),
        odd_string().prop_map(str::to_owned),
        prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec((inner.clone(), ws()), 0..4).prop_map(|items| {
                let parts: Vec<String> = items
                    .into_iter()
                    .map(|(v, w)| format!("{w}{v}{w}"))
                    .collect();
                format!("[{}]", parts.join(","))
            }),
            prop::collection::vec((inner, ws(), 0..1000u32), 0..4).prop_map(|items| {
                let parts: Vec<String> = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, (v, w, k))| format!("{w}\"k{i}_{k}\"{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }),
        ]
    })
}

/// An object of `fields` (key and value JSON) in a shuffled order, with `w` around each.
fn object(fields: Vec<(String, String)>) -> impl Strategy<Value = String> {
    (Just(fields).prop_shuffle(), ws(), ws()).prop_map(|(fields, a, b)| {
        let parts: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{a}\"{k}\"{b}:{a}{v}{b}"))
            .collect();
        format!("{{{}}}", parts.join(","))
    })
}

/// One chunk: the head fields, one choice with `delta` and `finish`, and the upstream's own
/// fields at the top level.
fn chunk(
    delta: String,
    finish: &'static str,
    extra: Vec<(String, String)>,
) -> impl Strategy<Value = String> {
    let choice = object(vec![
        ("index".into(), "0".into()),
        ("delta".into(), delta),
        ("finish_reason".into(), finish.into()),
    ]);
    choice.prop_flat_map(move |choice| {
        let mut fields = vec![
            ("id".into(), r#""gen-fidelity""#.into()),
            ("object".into(), r#""chat.completion.chunk""#.into()),
            ("created".into(), "1700000000".into()),
            ("model".into(), r#""openai/gpt-4o-mini""#.into()),
            ("provider".into(), r#""Odd""#.into()),
            ("choices".into(), format!("[{choice}]")),
        ];
        fields.extend(extra.clone());
        object(fields)
    })
}

/// A whole answer: tokens with odd text and odd fields, a finish, and a usage chunk.
fn stream() -> impl Strategy<Value = Vec<String>> {
    let token = (odd_string(), value(), value()).prop_flat_map(|(text, inner, outer)| {
        let delta = format!(r#"{{"content":{text},"x_provider":{inner}}}"#);
        chunk(delta, "null", vec![("x_top".into(), outer)])
    });
    let usage = value().prop_flat_map(|v| {
        object(vec![
            ("id".into(), r#""gen-fidelity""#.into()),
            ("object".into(), r#""chat.completion.chunk""#.into()),
            ("created".into(), "1700000000".into()),
            ("model".into(), r#""openai/gpt-4o-mini""#.into()),
            ("choices".into(), "[]".into()),
            (
                "usage".into(),
                format!(r#"{{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"cost":1e-7,"x_usage":{v}}}"#),
            ),
        ])
    });
    let first = chunk(
        r#"{"role":"assistant","content":"A"}"#.into(),
        "null",
        vec![],
    );
    let last = chunk(r#"{"content":""}"#.into(), r#""stop""#, vec![]);
    (first, prop::collection::vec(token, 1..5), last, usage).prop_map(|(f, t, l, u)| {
        let mut all = vec![f];
        all.extend(t);
        all.push(l);
        all.push(u);
        all
    })
}

/// The usage event as the upstream sent it: the client's, less the summary at its end.
fn without_summary(got: &str) -> String {
    let at = got
        .rfind(r#","llm_layers":"#)
        .expect("the usage event carries the summary");
    format!("{}}}", &got[..at])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_event_arrives_as_the_upstream_sent_it(events in stream()) {
        let got = relay(events.clone());
        prop_assert_eq!(got.len(), events.len() + 1, "every event and [DONE]: {:?}", got);
        prop_assert_eq!(got.last().map(String::as_str), Some("[DONE]"));
        let n = events.len();
        for (i, (sent, got)) in events.iter().zip(&got).enumerate() {
            if i + 1 == n {
                prop_assert_eq!(without_summary(got), sent.trim_end(), "the usage event");
            } else {
                prop_assert_eq!(got, sent, "event {}", i);
            }
        }
    }
}

/// The case the issue measured: one provider object on every chunk, with a 24-digit
/// integer, `1e-7`, `-0.0`, `1.5e300`, keys out of order and an escaped string. Each value
/// arrives as it was written, not as a float reading of it.
#[test]
fn a_provider_object_on_every_chunk_arrives_unchanged() {
    let odd =
        r#"{"z":123456789012345678901234,"a":1e-7,"n":-0.0,"big":1.5e300,"s":"say \"hi\"\u00e9"}"#;
    let head = r#""id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m""#;
    let events = vec![
        format!(
            r#"{{{head},"x_odd":{odd},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hi","x_odd":{odd}}},"finish_reason":null}}]}}"#
        ),
        format!(
            r#"{{{head},"x_odd":{odd},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#
        ),
        format!(
            r#"{{{head},"x_odd":{odd},"choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}"#
        ),
    ];
    let got = relay(events.clone());
    assert_eq!(got[0], events[0]);
    assert_eq!(got[1], events[1]);
    assert_eq!(without_summary(&got[2]), events[2]);
    assert!(got[0].contains(odd));
}

/// The gateway's stack, with its defaults, reads of each chunk only what costs no parse: the
/// chunks of an answer's middle (the same bytes around a new token) reach the SSE writer
/// still unparsed, with their bytes.
#[tokio::test]
async fn the_stack_passes_the_middle_of_an_answer_through_unparsed() {
    use futures_util::StreamExt;
    use llm_layers_core::decode::SseChatDecoder;
    use llm_layers_core::{ChatRequest, ChatStream, LlmError, ResponseMeta};
    use tower::ServiceExt;

    let head = r#""id":"gen-1","object":"chat.completion.chunk","created":1,"model":"openai/gpt-4o-mini","provider":"P""#;
    let mut body = String::new();
    let tokens = ["", "Once", " upon", " a", " time"];
    for t in tokens {
        body.push_str(&format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"{t}\"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    body.push_str(&format!("data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"finish_reason\":\"stop\"}}]}}\n\n"));
    body.push_str(&format!("data: {{{head},\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":4,\"total_tokens\":5}}}}\n\n"));
    body.push_str("data: [DONE]\n\n");
    let body = Bytes::from(body);
    let leaf = tower::service_fn(move |_req: ChatRequest| {
        let body = Full::new(body.clone());
        async move { ChatStream::commit(SseChatDecoder::new(body), ResponseMeta::default()).await }
    });
    // With the defaults, and with mid-stream resume on (it watches every chunk).
    for resume in [false, true] {
        let config = Config {
            resume,
            ..Config::default()
        };
        let stack = llm_layers_gateway::build_stack(&config, leaf.clone(), None).unwrap();
        let req = ChatRequest::new("openai/gpt-4o-mini", vec![Message::user("hi")]);
        let stream = stack.oneshot(req).await.unwrap();
        let chunks: Vec<Result<_, LlmError>> = StreamExt::collect(stream).await;
        assert_eq!(chunks.len(), tokens.len() + 2);
        let text: String = chunks
            .iter()
            .map(|c| c.as_ref().unwrap().content().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(text, "Once upon a time");
        // The first chunk taught the shape; the tokens after it were read by it.
        for (i, c) in chunks.iter().enumerate().take(tokens.len()).skip(1) {
            let c = c.as_ref().unwrap();
            assert!(
                c.raw().is_some(),
                "resume {resume}: chunk {i} kept its bytes"
            );
            assert!(
                !c.is_parsed(),
                "resume {resume}: chunk {i} was parsed on the way through the stack"
            );
        }
    }
}

/// An upstream whose usage chunk already has an `"llm_layers"` key gets it back as it sent
/// it: the gateway's summary never makes a duplicate key.
#[test]
fn an_upstream_llm_layers_key_is_not_duplicated() {
    let head = r#""id":"gen-1","object":"chat.completion.chunk","created":1,"model":"m""#;
    let events = vec![
        format!(
            r#"{{{head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hi"}},"finish_reason":null}}]}}"#
        ),
        format!(r#"{{{head},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#),
        format!(
            r#"{{{head},"choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}},"llm_layers":{{"theirs":true}}}}"#
        ),
    ];
    let got = relay(events.clone());
    assert_eq!(got[..3], events[..]);
}
