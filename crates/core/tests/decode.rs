//! The chunk decoder and the commit point, on OpenRouter's streaming format (role-only first
//! chunk, `: OPENROUTER PROCESSING` comments, usage in the last chunk, `data: [DONE]`).

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use llm_layers_core::decode::SseChatDecoder;
use llm_layers_core::{ChatStream, ErrorCode, ErrorKind, ProtocolKind, ResponseMeta};

fn body(
    chunks: Vec<&'static [u8]>,
) -> StreamBody<impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    StreamBody::new(futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
    ))
}

const ENVELOPE: &str = r#""id":"gen-1700000000-AbCd","provider":"OpenAI","model":"openai/gpt-4o","object":"chat.completion.chunk","created":1700000000"#;

fn openrouter_stream() -> Vec<u8> {
    format!(
        ": OPENROUTER PROCESSING\n\n\
         data: {{{ENVELOPE},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null,\"native_finish_reason\":null}}]}}\n\n\
         data: {{{ENVELOPE},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"Hel\"}},\"finish_reason\":null,\"native_finish_reason\":null}}]}}\n\n\
         data: {{{ENVELOPE},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"lo\"}},\"finish_reason\":null,\"native_finish_reason\":null}}]}}\n\n\
         data: {{{ENVELOPE},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"finish_reason\":\"stop\",\"native_finish_reason\":\"stop\"}}]}}\n\n\
         data: {{{ENVELOPE},\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,\"cost\":0.0000675}}}}\n\n\
         data: [DONE]\n\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn commits_at_first_content_and_collects_with_usage() {
    let bytes: &'static [u8] = Box::leak(openrouter_stream().into_boxed_slice());
    // Split at every 7 bytes to cross event boundaries.
    let chunks: Vec<&'static [u8]> = bytes.chunks(7).collect();
    let stream = ChatStream::commit(SseChatDecoder::new(body(chunks)), ResponseMeta::default())
        .await
        .unwrap();
    let pending: Vec<_> = stream.pending().collect();
    assert_eq!(pending.len(), 2, "role-only chunk + first content chunk");
    assert!(!pending[0].is_token());
    assert_eq!(pending[1].content(), Some("Hel"));
    let meta = stream.meta().clone();
    assert_eq!(meta.provider.as_deref(), Some("OpenAI"));
    assert_eq!(meta.model, "openai/gpt-4o");
    assert_eq!(meta.generation_id.as_deref(), Some("gen-1700000000-AbCd"));
    assert!(meta.timings.first_token.is_some());

    let done = stream.collect().await.unwrap();
    assert_eq!(done.choices[0].message.content.as_deref(), Some("Hello"));
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = done.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (12, 3, 15)
    );
    assert!(usage.extra.contains_key("cost"));
    assert_eq!(done.provider.as_deref(), Some("OpenAI"));
}

#[tokio::test]
async fn mid_stream_error_event_is_an_err_item_with_code_and_provider() {
    let s: &'static [u8] = b"data: {\"id\":\"g\",\"provider\":\"OpenAI\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
        data: {\"id\":\"g\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"openai/gpt-4o\",\"provider\":\"OpenAI\",\"error\":{\"code\":502,\"message\":\"Provider disconnected\",\"metadata\":{\"error_type\":\"provider_unavailable\"}},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n\
        data: [DONE]\n\n";
    let mut stream =
        ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
            .await
            .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().content(), Some("a"));
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert_eq!(err.provider(), Some("OpenAI"));
    let api = err.api_error().unwrap();
    assert_eq!(api.code, Some(ErrorCode::Number(502)));
    assert_eq!(api.error_type.as_deref(), Some("provider_unavailable"));
    assert_eq!(err.status_code().map(|s| s.as_u16()), Some(502));
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn eof_without_done_is_truncated_never_a_clean_end() {
    let s: &'static [u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    let items: Vec<_> = stream.collect_items().await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[1].as_ref().unwrap().content(), Some("b"));
    assert_eq!(items[2].as_ref().unwrap_err().kind(), ErrorKind::Truncated);

    // collect() refuses the partial answer.
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    assert_eq!(
        stream.collect().await.unwrap_err().kind(),
        ErrorKind::Truncated
    );
}

#[tokio::test]
async fn error_before_first_token_fails_the_commit() {
    let s: &'static [u8] = b": OPENROUTER PROCESSING\n\ndata: {\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}\n\n";
    let err = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert_eq!(
        err.api_error().unwrap().code,
        Some(ErrorCode::Text("server_error".into()))
    );
}

#[tokio::test]
async fn bad_json_and_oversize_are_protocol_errors() {
    let s: &'static [u8] = b"data: {not json\n\n";
    let err = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol(ProtocolKind::Json));

    let big: &'static [u8] = Box::leak(
        format!("data: {}\n\n", "x".repeat(100))
            .into_bytes()
            .into_boxed_slice(),
    );
    let dec = SseChatDecoder::with_parser(
        body(vec![big]),
        llm_layers_core::sse::SseParser::with_max_event_size(50),
    );
    let err = ChatStream::commit(dec, ResponseMeta::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol(ProtocolKind::Oversize));

    let bad: &'static [u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}\n\n";
    let err = ChatStream::commit(
        SseChatDecoder::new(body(vec![bad])),
        ResponseMeta::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol(ProtocolKind::Utf8));
}

#[tokio::test]
async fn tool_calls_are_joined_by_index() {
    let s: &'static [u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"ci\"}}]}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\":1}\"}}]}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n\
        data: [DONE]\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    let done = stream.collect().await.unwrap();
    let msg = &done.choices[0].message;
    assert_eq!(msg.content, None);
    let call = &msg.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.id, "call_1");
    assert_eq!(call.function.name, "get");
    assert_eq!(call.function.arguments, "{\"city\":1}");
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("tool_calls"));
}

trait CollectItems {
    async fn collect_items(
        self,
    ) -> Vec<Result<llm_layers_core::StreamChunk, llm_layers_core::LlmError>>;
}

impl CollectItems for ChatStream {
    async fn collect_items(
        self,
    ) -> Vec<Result<llm_layers_core::StreamChunk, llm_layers_core::LlmError>> {
        StreamExt::collect(self).await
    }
}

/// One upstream chunk must not be able to abort the process: a tool-call index far past the
/// calls seen is a protocol error, not a 400 GB allocation.
#[tokio::test]
async fn a_huge_tool_call_index_is_a_protocol_error_not_an_abort() {
    let s: &'static [u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\"}}]}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":4294967295,\"function\":{\"arguments\":\"x\"}}]}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n\
        data: [DONE]\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    let err = stream.collect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol(ProtocolKind::Json));
    assert!(err.to_string().contains("4294967295"), "{err}");
}

#[tokio::test]
async fn tool_calls_a_little_out_of_order_are_kept() {
    let s: &'static [u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n\
        data: [DONE]\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    let done = stream.collect().await.unwrap();
    let calls = done.choices[0].message.tool_calls.as_ref().unwrap();
    assert_eq!(
        calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
}

/// An OpenAI-compatible server's error object, then `[DONE]`: an error, never a 200 with a
/// partial answer.
#[tokio::test]
async fn an_object_error_event_is_an_upstream_error() {
    let s: &'static [u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
        data: {\"object\":\"error\",\"message\":\"out of memory\",\"type\":\"internal\",\"code\":503}\n\n\
        data: [DONE]\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    let err = stream.collect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert_eq!(err.message(), Some("out of memory"));
    assert_eq!(err.status_code().map(|s| s.as_u16()), Some(503));
}

#[tokio::test]
async fn an_event_without_a_chunk_shape_is_a_protocol_error() {
    let s: &'static [u8] =
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
        data: {\"hello\":\"world\"}\n\n\
        data: [DONE]\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    let err = stream.collect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol(ProtocolKind::Json));
    // `"choices": []` alone is still a chunk (OpenRouter's usage and debug chunks).
    let ok: &'static [u8] = b"data: {\"choices\":[]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
        data: [DONE]\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![ok])), ResponseMeta::default())
        .await
        .unwrap();
    assert!(stream.collect().await.is_ok());
}

/// `[DONE]` after an answer no choice finished is a cut answer: an error, not a whole one.
#[tokio::test]
async fn a_whole_answer_without_finish_reason_is_truncated() {
    let s: &'static [u8] = b"data: {\"provider\":\"OpenAI\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
        data: [DONE]\n\n";
    let stream = ChatStream::commit(SseChatDecoder::new(body(vec![s])), ResponseMeta::default())
        .await
        .unwrap();
    let err = stream.collect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Truncated);
    assert_eq!(err.provider(), Some("OpenAI"));
    assert!(err.is_retriable());
}

/// The `object` the API sends is a borrowed static (no allocation per chunk); anything else
/// is kept as sent, and round-trips.
#[test]
fn a_known_object_costs_no_allocation_and_others_are_kept() {
    use std::borrow::Cow;
    let c: llm_layers_core::ChatChunk =
        serde_json::from_str(r#"{"object":"chat.completion.chunk","choices":[]}"#).unwrap();
    assert!(matches!(c.object, Cow::Borrowed("chat.completion.chunk")));
    let c: llm_layers_core::ChatChunk =
        serde_json::from_str(r#"{"object":"something.else","choices":[]}"#).unwrap();
    assert!(matches!(&c.object, Cow::Owned(s) if s == "something.else"));
    assert!(
        serde_json::to_string(&c)
            .unwrap()
            .contains(r#""object":"something.else""#)
    );
    let c: llm_layers_core::ChatChunk =
        serde_json::from_str(r#"{"object":null,"choices":[]}"#).unwrap();
    assert!(c.object.is_empty());
    assert!(!serde_json::to_string(&c).unwrap().contains("object"));
}

mod head_reuse {
    //! The decoder parses the head a stream repeats once; whatever the events, it must
    //! give what parsing each event on its own gives.
    use super::*;
    use llm_layers_core::decode::decode_event_str;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn member(key: &str, value: &Value) -> String {
        format!("{}:{}", serde_json::to_string(key).unwrap(), value)
    }

    /// Head members: the usual ones, an unknown one, one with a nested `"choices"` key, in
    /// any order and subset; string values that hold JSON-looking text.
    fn head() -> impl Strategy<Value = Vec<(String, Value)>> {
        let text = prop::sample::select(vec![
            "gen-1",
            "a,\"choices\":[]",
            "é\u{1F600}",
            "",
            "openai/gpt-4o",
        ]);
        let fields = (text.clone(), text.clone(), text, 0u64..3).prop_map(|(a, b, c, t)| {
            vec![
                ("id".to_owned(), json!(a)),
                ("object".to_owned(), json!("chat.completion.chunk")),
                ("created".to_owned(), json!(1_700_000_000 + t)),
                ("model".to_owned(), json!(b)),
                ("provider".to_owned(), json!(c)),
                ("system_fingerprint".to_owned(), json!("fp_1")),
                ("service_tier".to_owned(), json!("default")),
                ("meta".to_owned(), json!({"choices": [], "x": 1})),
            ]
        });
        (
            fields,
            prop::collection::vec(any::<bool>(), 8),
            any::<u64>(),
        )
            .prop_map(|(fields, keep, seed)| {
                let mut kept: Vec<_> = fields
                    .into_iter()
                    .zip(keep)
                    .filter_map(|(f, k)| k.then_some(f))
                    .collect();
                // A seeded shuffle: any order of the members.
                let n = kept.len();
                for i in (1..n).rev() {
                    kept.swap(i, (seed.rotate_left(i as u32) as usize) % (i + 1));
                }
                kept
            })
    }

    /// One event after the head: its tail, and how it changes the head first.
    #[derive(Debug, Clone)]
    enum Step {
        /// Same head, a content delta (and maybe usage or a finish).
        Delta(String, bool, bool),
        /// The head's `created` moves on (a timestamp per chunk).
        NewCreated,
        /// The tail repeats a head field (`"id"` after `"choices"`).
        DuplicateId,
        /// The tail repeats a head field with an empty value (`"provider":null`,
        /// `"created":0`), plainly or under an escaped key.
        DuplicateEmpty(u8),
        /// A tool call delta: its `"id"` is a nested key like a head's.
        ToolCall,
        /// The event is cut short: not JSON.
        Broken,
        /// An error event in the same head.
        Error,
        /// A content delta in one of the shapes the decoder may learn and reuse (or must
        /// not), by number: see `shaped`.
        Shaped(String, String, u8),
    }

    /// The choices of a [`Step::Shaped`] event with content `t` (and `u` where another
    /// string may or may not be the same).
    fn shaped(t: &str, u: &str, shape: u8) -> Value {
        match shape {
            0 => json!([{"index": 0, "delta": {"content": t}, "finish_reason": null,
                         "native_finish_reason": null, "logprobs": null}]),
            1 => json!([{"index": 0, "delta": {"refusal": null, "content": t},
                         "finish_reason": null}]),
            // The same text (or another) earlier, under the same key, somewhere else.
            2 => json!([{"index": 0, "delta": {"annotations": [{"content": u}], "content": t},
                         "finish_reason": null}]),
            3 => json!([{"index": 0, "delta": {"role": "assistant", "content": t},
                         "finish_reason": null}]),
            4 => json!([{"index": 0, "delta": {"reasoning": t, "content": t},
                         "finish_reason": null}]),
            5 => json!([{"index": 0, "delta": {"content": "llm-layers shape probe"},
                         "finish_reason": null}]),
            6 => json!([{"index": 1, "delta": {"content": t}, "finish_reason": null},
                        {"index": 0, "delta": {"content": t}, "finish_reason": null}]),
            // The text as the start of a longer string first.
            _ => json!([{"index": 0, "delta": {"x": {"content": format!("{t}{t}!")}, "content": t},
                         "finish_reason": null}]),
        }
    }

    fn shaped_text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec!["", "a", "b c", "é"]).prop_map(str::to_owned),
            1 => "[a-z é\"\\\\]{0,6}",
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => ("[a-z \"\\\\]{0,6}", any::<bool>(), any::<bool>())
                .prop_map(|(t, u, f)| Step::Delta(t, u, f)),
            1 => Just(Step::NewCreated),
            1 => Just(Step::DuplicateId),
            1 => (0u8..4).prop_map(Step::DuplicateEmpty),
            1 => Just(Step::ToolCall),
            1 => Just(Step::Broken),
            1 => Just(Step::Error),
            // Texts from a few, so that events repeat each other's: a shape learned from one
            // is read on the next.
            6 => (shaped_text(), shaped_text(), any::<bool>(), 0u8..8).prop_map(
                |(t, u, same, n)| Step::Shaped(t.clone(), if same { t } else { u }, n)
            ),
        ]
    }

    fn events(mut head: Vec<(String, Value)>, steps: &[Step]) -> Vec<String> {
        let mut out = Vec::new();
        for s in steps {
            if let Step::NewCreated = s {
                for (k, v) in &mut head {
                    if k == "created" {
                        *v = json!(v.as_u64().unwrap_or(0) + 1);
                    }
                }
            }
            let mut members: Vec<String> = head.iter().map(|(k, v)| member(k, v)).collect();
            let choice = |text: &str, finish: bool| {
                json!([{"index": 0, "delta": {"content": text},
                        "finish_reason": if finish { json!("stop") } else { Value::Null }}])
            };
            match s {
                Step::Delta(t, usage, finish) => {
                    members.push(member("choices", &choice(t, *finish)));
                    if *usage {
                        members.push(member("usage", &json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "cost": 0.5})));
                    }
                }
                Step::NewCreated => members.push(member("choices", &choice("t", false))),
                Step::DuplicateId => {
                    members.push(member("choices", &choice("d", false)));
                    members.push(member("id", &json!("gen-other")));
                }
                Step::DuplicateEmpty(which) => {
                    members.push(member("choices", &choice("e", false)));
                    members.push(
                        match which {
                            0 => "\"provider\":null",
                            1 => "\"created\":0",
                            2 => "\"\\u0070rovider\":null",
                            _ => "\"\\u0069d\":\"gen-esc\"",
                        }
                        .to_owned(),
                    );
                }
                Step::ToolCall => members.push(member(
                    "choices",
                    &json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1",
                        "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                        "finish_reason": null}]),
                )),
                Step::Broken => members.push("\"choices\":[{\"delta\":".to_owned()),
                Step::Error => {
                    members.push(member("choices", &json!([])));
                    members.push(member("error", &json!({"code": 502, "message": "down"})));
                }
                Step::Shaped(t, u, n) => {
                    members.push(member("choices", &shaped(t, u, *n)));
                    if *n == 0 {
                        members.push("\"usage\":null".to_owned());
                    }
                }
            }
            out.push(format!("{{{}}}", members.join(",")));
        }
        out
    }

    /// What parsing each event alone gives, up to the first error.
    fn expected(events: &[String]) -> Vec<Result<llm_layers_core::ChatChunk, ErrorKind>> {
        let mut out = Vec::new();
        for e in events {
            match decode_event_str(e) {
                Ok(Some(c)) => out.push(Ok(c)),
                Ok(None) => break,
                Err(err) => {
                    out.push(Err(err.kind()));
                    break;
                }
            }
        }
        out
    }

    async fn decoded(events: &[String]) -> Vec<Result<llm_layers_core::ChatChunk, ErrorKind>> {
        let mut text = String::new();
        for e in events {
            text.push_str("data: ");
            text.push_str(e);
            text.push_str("\n\n");
        }
        text.push_str("data: [DONE]\n\n");
        let bytes: &'static [u8] = Box::leak(text.into_bytes().into_boxed_slice());
        SseChatDecoder::new(body(bytes.chunks(61).collect()))
            .map(|r| r.map(facts_agree).map_err(|e| e.kind()))
            .collect()
            .await
    }

    /// The typed chunk, once the facts a chunk answers without a parse (read first, while
    /// it may still be unparsed) are checked against it.
    fn facts_agree(c: llm_layers_core::StreamChunk) -> llm_layers_core::ChatChunk {
        let facts = (
            c.is_token(),
            c.has_output(),
            c.content().map(str::to_owned),
            c.finish_reason().map(str::to_owned),
            c.usage().cloned(),
            c.choice_count(),
            (c.id().to_owned(), c.object().to_owned(), c.created()),
            (c.model().to_owned(), c.provider().map(str::to_owned)),
        );
        let t = c.into_chunk();
        let want = (
            t.is_token(),
            t.has_output(),
            t.content().map(str::to_owned),
            t.finish_reason().map(str::to_owned),
            t.usage.clone(),
            t.choices.len(),
            (t.id.clone(), t.object.to_string(), t.created),
            (t.model.clone(), t.provider.clone()),
        );
        assert_eq!(facts, want);
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_decoder_gives_what_each_event_parsed_alone_gives(
            head in head(),
            steps in prop::collection::vec(step(), 1..12),
        ) {
            let events = events(head, &steps);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(decoded(&events));
            prop_assert_eq!(got, expected(&events));
        }

        /// A whole answer collected from the decoder's items (most read by their shape,
        /// never built) is the one collected from each event parsed alone.
        #[test]
        fn an_answer_collected_from_shaped_chunks_is_the_parsed_one(
            head in head(),
            steps in prop::collection::vec(step(), 1..12),
        ) {
            // An answer that ends: no broken or error event, no second choice (never
            // finished), and a finish at the end.
            let mut steps = steps;
            steps.retain(|s| {
                !matches!(
                    s,
                    Step::Broken
                        | Step::Error
                        | Step::DuplicateId
                        | Step::DuplicateEmpty(_)
                        | Step::Shaped(_, _, 6)
                )
            });
            steps.push(Step::Delta(String::new(), false, true));
            let events = events(head, &steps);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(async {
                let mut text = String::new();
                for e in &events {
                    text.push_str("data: ");
                    text.push_str(e);
                    text.push_str("\n\n");
                }
                text.push_str("data: [DONE]\n\n");
                let items: Vec<_> = SseChatDecoder::new(body(vec![Box::leak(text.into_bytes().into_boxed_slice())]))
                    .take_while(|r| std::future::ready(r.is_ok()))
                    .map(Result::unwrap)
                    .collect()
                    .await;
                let typed: Vec<_> = items.iter().map(|c| c.clone().into_chunk()).collect();
                let got = ChatStream::from_chunks(items).collect().await.map_err(|e| e.kind());
                let want = ChatStream::from_chunks(typed).collect().await.map_err(|e| e.kind());
                (got, want)
            });
            let (got, want) = got;
            prop_assert!(want.is_ok(), "{:?}", want);
            prop_assert_eq!(got, want);
        }
    }

    /// A head that holds a `"usage"`, `"error"` or `"choices"` key (even null) is never
    /// learned: a later event with that key again in its tail is a duplicate field, which a
    /// whole parse refuses, and so must the decoder. A tail that is only `}` after the head's
    /// `,` is not a chunk (`{...,}`).
    #[tokio::test]
    async fn heads_with_chunk_keys_are_not_learned_and_an_empty_tail_is_no_chunk() {
        let content = |t: &str| {
            format!(r#""choices":[{{"index":0,"delta":{{"content":"{t}"}},"finish_reason":null}}]"#)
        };
        for key in ["usage", "error"] {
            let head = format!(r#"{{"id":"gen-1","model":"m","created":1,"{key}":null,"#);
            let events = vec![
                format!("{head}{}}}", content("a")),
                format!(
                    r#"{head}{},"{key}":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}"#,
                    content("b")
                ),
            ];
            let want = expected(&events);
            assert!(
                want[1].is_err(),
                "a whole parse refuses the duplicate {key}"
            );
            assert_eq!(decoded(&events).await, want, "{key}");
        }
        let head = r#"{"id":"gen-1","model":"m","created":1,"#;
        for tail in ["}", " }", "\t}"] {
            let events = vec![format!("{head}{}}}", content("a")), format!("{head}{tail}")];
            let want = expected(&events);
            assert!(want[1].is_err(), "{:?} is not JSON", events[1]);
            assert_eq!(decoded(&events).await, want, "{tail:?}");
        }
    }

    /// The head bytes are kept and reused: a long stream with one head decodes the same as
    /// its events parsed alone (the common case the property above also draws).
    #[tokio::test]
    async fn a_stream_with_one_head_decodes_like_its_events_alone() {
        let head = vec![
            ("id".to_owned(), json!("gen-1")),
            ("provider".to_owned(), json!("OpenAI")),
            ("model".to_owned(), json!("openai/gpt-4o")),
            ("object".to_owned(), json!("chat.completion.chunk")),
            ("created".to_owned(), json!(1_700_000_000u64)),
        ];
        let steps: Vec<Step> = (0..20)
            .map(|i| Step::Delta(format!("w{i} "), false, i == 19))
            .collect();
        let events = events(head, &steps);
        let got = decoded(&events).await;
        assert_eq!(got.len(), 20);
        assert_eq!(got, expected(&events));
        let last = got[19].as_ref().unwrap();
        assert_eq!(
            (last.id.as_str(), last.provider.as_deref()),
            ("gen-1", Some("OpenAI"))
        );
        assert_eq!(last.content(), Some("w19 "));
    }
}

/// The decoder notes when the body's first bytes came (a keep-alive comment counts): the
/// first-byte timing of every call.
#[tokio::test(start_paused = true)]
async fn the_first_bytes_are_timed() {
    let start = tokio::time::Instant::now();
    let mut d = SseChatDecoder::new(body(vec![b": keep-alive\n\n", b"data: [DONE]\n\n"]));
    assert_eq!(d.first_byte(), None, "nothing read yet");
    while d.next().await.is_some() {}
    assert_eq!(d.first_byte(), Some(start));
}

/// Every decoded chunk keeps its event's data as it came (a relay writes those bytes), and
/// a number JSON allows but no `f64` holds (`1e400`) inside a delta does not end the stream:
/// the typed reading has `null` there, the bytes keep it.
#[tokio::test]
async fn chunks_keep_their_bytes_even_with_numbers_out_of_range() {
    let events = [
        r#"{"id":"g","choices":[{"index":0,"delta":{"content":"Hi","x_big":1e400,"x_int":123456789012345678901234,"s":"1e400 \"q\""}}], "x_top" : {"n":-0.0,"m":1.5e300}}"#,
        "{\"id\":\"g\",\n\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}",
    ];
    let mut text = String::new();
    for e in events {
        for line in e.split('\n') {
            text.push_str("data: ");
            text.push_str(line);
            text.push('\n');
        }
        text.push('\n');
    }
    text.push_str("data: [DONE]\n\n");
    let bytes: &'static [u8] = Box::leak(text.into_bytes().into_boxed_slice());
    let got: Vec<_> = SseChatDecoder::new(body(vec![bytes])).collect().await;
    assert_eq!(got.len(), 2, "{got:?}");
    for (item, want) in got.iter().zip(events) {
        let c = item.as_ref().expect("a chunk");
        assert_eq!(c.raw().map(|r| &r[..]), Some(want.as_bytes()));
    }
    let first = got[0].as_ref().unwrap();
    assert_eq!(first.content(), Some("Hi"));
    let extra = &first.choices[0].delta.extra;
    assert_eq!(extra["x_big"], serde_json::Value::Null);
    assert_eq!(extra["s"], "1e400 \"q\"");
    assert!(extra["x_int"].is_number());
}

/// Every chunk carries when the bytes it was read from arrived (one clock read per network
/// read), however late it is taken: the layers after the decoder read that instead of the
/// clock.
#[tokio::test(start_paused = true)]
async fn chunks_are_stamped_with_when_their_bytes_arrived() {
    use std::time::Duration;
    use tokio::time::Instant;
    let bytes: &'static [u8] = Box::leak(openrouter_stream().into_boxed_slice());
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let frames = futures_util::stream::iter([first, rest]).then(|b| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b)))
    });
    let t0 = Instant::now();
    let mut decoder = std::pin::pin!(SseChatDecoder::new(StreamBody::new(frames)));
    let mut stamps = Vec::new();
    while let Some(chunk) = decoder.next().await {
        let chunk = chunk.expect("a chunk");
        // Taken well after it arrived: the stamp stays the arrival.
        tokio::time::sleep(Duration::from_secs(10)).await;
        stamps.push(chunk.received().expect("stamped") - t0);
    }
    // The first frame (read at 1 s) holds the first events; the second (read when the
    // decoder next polls the body, 1 s after it asked) the rest.
    assert!(stamps.len() >= 4, "{stamps:?}");
    assert_eq!(stamps[0], Duration::from_secs(1), "{stamps:?}");
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    let later = stamps
        .iter()
        .filter(|s| **s > Duration::from_secs(1))
        .count();
    assert!(
        later > 0 && later < stamps.len(),
        "two reads, two stamps: {stamps:?}"
    );
    assert!(
        stamps.iter().all(|s| *s < Duration::from_secs(40)),
        "{stamps:?}"
    );
}

/// The chunks after the head that no learned shape reads (the finish, the usage) are parsed
/// past the head and share it: what every layer reads of them (finish reason, usage, head
/// fields, whether a token) is answered without the typed chunk, which would copy the head's
/// strings into each; built on demand, it is what parsing the event alone gives.
#[tokio::test]
async fn chunks_read_past_the_head_answer_without_being_typed() {
    let bytes: &'static [u8] = Box::leak(openrouter_stream().into_boxed_slice());
    let items: Vec<_> = SseChatDecoder::new(body(vec![bytes]))
        .map(|r| r.expect("a chunk"))
        .collect()
        .await;
    assert_eq!(items.len(), 5);
    let finish = &items[3];
    assert_eq!(finish.finish_reason(), Some("stop"));
    assert!(finish.is_token() && finish.has_finish() && !finish.has_output());
    assert_eq!(
        (finish.id(), finish.model(), finish.provider()),
        ("gen-1700000000-AbCd", "openai/gpt-4o", Some("OpenAI"))
    );
    let usage = &items[4];
    assert_eq!(usage.usage().map(|u| u.completion_tokens), Some(3));
    assert_eq!((usage.choice_count(), usage.content()), (0, None));
    assert!(
        !finish.is_parsed() && !usage.is_parsed(),
        "read without a typed chunk"
    );
    // Typed on demand: the same chunk as the event parsed alone.
    let text = std::str::from_utf8(usage.raw().expect("its bytes")).unwrap();
    let alone: llm_layers_core::ChatChunk = serde_json::from_str(text).unwrap();
    assert_eq!(usage.choices.len(), 0); // through Deref
    assert!(usage.is_parsed());
    assert_eq!(items[4].clone().into_chunk(), alone);
}

/// A chunk past the head that carries an error is still the error, not a chunk.
#[tokio::test]
async fn an_error_read_past_the_head_is_still_an_error() {
    let text = format!(
        "data: {{{ENVELOPE},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"Hi\"}},\"finish_reason\":null}}]}}\n\n\
         data: {{{ENVELOPE},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"\"}},\"finish_reason\":\"error\",\"error\":{{\"code\":502,\"message\":\"provider down\"}}}}]}}\n\n\
         data: [DONE]\n\n"
    );
    let bytes: &'static [u8] = Box::leak(text.into_bytes().into_boxed_slice());
    let items: Vec<_> = SseChatDecoder::new(body(vec![bytes])).collect().await;
    assert!(items[0].is_ok());
    let err = items[1].as_ref().expect_err("the error chunk is an error");
    assert_eq!(err.provider(), Some("OpenAI"));
}
