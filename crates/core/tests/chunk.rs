//! Chunk and completion JSON: known fields typed, every other field kept in `extra`.

use llm_layers_core::decode::{decode_event, decode_event_str};
use llm_layers_core::{ChatChunk, ChatCompletion, ErrorKind, ProtocolKind};
use serde_json::json;

#[test]
fn unknown_fields_of_a_delta_and_of_usage_are_kept_in_extra() {
    let c: ChatChunk = serde_json::from_value(json!({
        "id": "gen-1",
        "choices": [{"index": 0, "delta": {
            "role": "assistant", "content": "hi", "refusal": null,
            "annotations": [{"type": "url_citation", "url": "https://x"}]
        }}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                  "cost": 0.25, "prompt_tokens_details": {"cached_tokens": 1}}
    }))
    .unwrap();
    let d = &c.choices[0].delta;
    assert_eq!(d.role.as_deref(), Some("assistant"));
    assert_eq!(d.content.as_deref(), Some("hi"));
    assert_eq!(d.extra.len(), 2);
    assert_eq!(d.extra["refusal"], json!(null));
    assert_eq!(d.extra["annotations"][0]["url"], json!("https://x"));
    let u = c.usage.as_ref().unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (2, 3, 5)
    );
    assert_eq!(u.extra["cost"], json!(0.25));
    assert_eq!(u.extra["prompt_tokens_details"]["cached_tokens"], json!(1));
    // And back out: the extra fields sit beside the typed ones.
    let back = serde_json::to_value(&c).unwrap();
    assert_eq!(
        back["choices"][0]["delta"]["annotations"][0]["type"],
        "url_citation"
    );
    assert_eq!(back["usage"]["cost"], json!(0.25));
    let again: ChatChunk = serde_json::from_value(back).unwrap();
    assert_eq!(again, c);
}

#[test]
fn escaped_keys_and_values_decode_like_plain_ones() {
    // `\u0063ontent` is `content`; the value has escapes too.
    let text = r#"{"choices":[{"index":0,"delta":{"\u0063ontent":"a\"b\n\u00e9","x\ty":1}}]}"#;
    let c = decode_event_str(text).unwrap().unwrap();
    assert_eq!(c.content(), Some("a\"b\né"));
    assert_eq!(c.choices[0].delta.extra["x\ty"], json!(1));
    assert_eq!(decode_event(text.as_bytes()).unwrap().unwrap(), c);
}

#[test]
fn missing_fields_are_defaults_and_wrong_types_are_errors() {
    let c = decode_event_str(r#"{"choices":[{"delta":{}}]}"#)
        .unwrap()
        .unwrap();
    assert_eq!(c.choices[0].delta, Default::default());
    for bad in [
        r#"{"choices":[{"delta":{"content":5}}]}"#,
        r#"{"choices":[{"delta":[]}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":"two"}}"#,
    ] {
        let e = decode_event_str(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol(ProtocolKind::Json), "{bad}");
    }
}

#[test]
fn event_bytes_that_are_not_utf8_are_a_utf8_error() {
    let e = decode_event(b"{\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol(ProtocolKind::Utf8));
}

#[test]
fn a_whole_completion_keeps_the_unknown_fields_of_its_message() {
    let c: ChatCompletion = serde_json::from_value(json!({
        "id": "gen-2", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "ok", "refusal": null}}]
    }))
    .unwrap();
    let m = &c.choices[0].message;
    assert_eq!(
        (m.role.as_str(), m.content.as_deref()),
        ("assistant", Some("ok"))
    );
    assert_eq!(m.extra["refusal"], json!(null));
    assert!(
        serde_json::from_value::<ChatCompletion>(json!({"choices": [{"message": 1}]})).is_err()
    );
}

mod write_json {
    //! `ChatChunk::write_json`, `ChunkWriter` and `ChatCompletion::write_json` write exactly
    //! what `serde_json::to_writer` writes.
    use llm_layers_core::{
        AssistantMessage, ChatChunk, ChatCompletion, Choice, ChunkChoice, ChunkWriter, Delta,
        FunctionCall, FunctionDelta, ToolCall, ToolCallDelta, Usage,
    };
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    /// Text that needs no escape, text that does (quotes, backslashes, every control
    /// character, DEL, non-ASCII; one such character anywhere in a longer text) and the
    /// empty string.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 ,:./-]{0,40}",
            "[\"\\\\\u{0}-\u{1f}\u{7f}é😀a]{0,8}",
            "[a-z é]{0,30}[\"\\\\\u{0}-\u{1f}][a-z]{0,20}",
            Just(String::new()),
        ]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(text())
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            text().prop_map(Value::from),
            (text(), any::<u32>()).prop_map(|(k, n)| json!({ k: [n, "x\n"] })),
        ]
    }

    fn extra() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::vec((text(), value()), 0..3).prop_map(|kv| kv.into_iter().collect())
    }

    fn tool_call() -> impl Strategy<Value = ToolCallDelta> {
        (
            any::<u32>(),
            opt_text(),
            opt_text(),
            prop::option::of((opt_text(), opt_text())),
        )
            .prop_map(|(index, id, kind, f)| ToolCallDelta {
                index,
                id,
                kind,
                function: f.map(|(name, arguments)| FunctionDelta { name, arguments }),
            })
    }

    fn choice() -> impl Strategy<Value = ChunkChoice> {
        let delta = (
            opt_text(),
            opt_text(),
            opt_text(),
            prop::option::of(prop::collection::vec(tool_call(), 0..3)),
            extra(),
        )
            .prop_map(|(role, content, reasoning, tool_calls, extra)| Delta {
                role,
                content,
                reasoning,
                tool_calls,
                extra,
            });
        (
            any::<u32>(),
            delta,
            opt_text(),
            opt_text(),
            prop::option::of(value()),
            prop::option::of(value()),
        )
            .prop_map(
                |(index, delta, finish_reason, native_finish_reason, logprobs, error)| {
                    ChunkChoice {
                        index,
                        delta,
                        finish_reason,
                        native_finish_reason,
                        logprobs,
                        error,
                    }
                },
            )
    }

    fn chunk() -> impl Strategy<Value = ChatChunk> {
        let usage = prop::option::of(
            (any::<u64>(), any::<u64>(), any::<u64>(), extra()).prop_map(
                |(prompt_tokens, completion_tokens, total_tokens, extra)| Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens,
                    extra,
                },
            ),
        );
        (
            (text(), text(), any::<u64>(), text(), opt_text()),
            prop::collection::vec(choice(), 0..3),
            usage,
            prop::option::of(value()),
            opt_text(),
        )
            .prop_map(
                |((id, object, created, model, provider), choices, usage, error, fp)| ChatChunk {
                    id,
                    object: object.into(),
                    created,
                    model,
                    provider,
                    choices,
                    usage,
                    error,
                    system_fingerprint: fp,
                },
            )
    }

    fn answer() -> impl Strategy<Value = ChatCompletion> {
        let call =
            (text(), text(), text(), text()).prop_map(|(id, kind, name, arguments)| ToolCall {
                id,
                kind,
                function: FunctionCall { name, arguments },
            });
        let message = (
            text(),
            opt_text(),
            opt_text(),
            prop::option::of(prop::collection::vec(call, 0..3)),
            extra(),
        )
            .prop_map(
                |(role, content, reasoning, tool_calls, extra)| AssistantMessage {
                    role,
                    content,
                    reasoning,
                    tool_calls,
                    extra,
                },
            );
        let choice = (
            any::<u32>(),
            message,
            opt_text(),
            opt_text(),
            prop::option::of(value()),
            prop::option::of(value()),
        )
            .prop_map(
                |(index, message, finish_reason, native_finish_reason, logprobs, error)| Choice {
                    index,
                    message,
                    finish_reason,
                    native_finish_reason,
                    logprobs,
                    error,
                },
            );
        (
            (text(), text(), any::<u64>(), text(), opt_text()),
            prop::collection::vec(choice, 0..3),
            chunk().prop_map(|c| c.usage),
            opt_text(),
            prop::option::of(value()),
        )
            .prop_map(
                |((id, object, created, model, provider), choices, usage, fp, error)| {
                    ChatCompletion {
                        id,
                        object,
                        created,
                        model,
                        provider,
                        choices,
                        usage,
                        system_fingerprint: fp,
                        error,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn the_same_bytes_as_serde_json(c in chunk()) {
            let mut out = b"data: ".to_vec();
            c.write_json(&mut out);
            let mut want = b"data: ".to_vec();
            serde_json::to_writer(&mut want, &c).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
        }

        #[test]
        fn an_answer_has_the_same_bytes_as_serde_json(a in answer()) {
            let mut out = Vec::new();
            a.write_json(&mut out);
            let want = serde_json::to_vec(&a).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
        }

        /// A stream's chunks through one writer: each is its own `serde_json` bytes, whether
        /// its head is the one before (`keep` 1: the fields copied from it), the one before
        /// but for one field (2 to 6), or another (0).
        #[test]
        fn a_writer_gives_each_chunk_its_own_bytes(
            chunks in prop::collection::vec((chunk(), 0..7u8), 1..8),
        ) {
            let mut writer = ChunkWriter::default();
            let mut before: Option<ChatChunk> = None;
            for (fresh, keep) in chunks {
                let mut c = fresh.clone();
                if let (1.., Some(b)) = (keep, &before) {
                    c.id.clone_from(&b.id);
                    c.object.clone_from(&b.object);
                    c.created = b.created;
                    c.model.clone_from(&b.model);
                    c.provider.clone_from(&b.provider);
                    match keep {
                        2 => c.id = fresh.id,
                        3 => c.object = fresh.object,
                        4 => c.created = fresh.created,
                        5 => c.model = fresh.model,
                        6 => c.provider = fresh.provider,
                        _ => {}
                    }
                }
                let mut out = Vec::new();
                writer.write(&c, &mut out);
                let want = serde_json::to_vec(&c).unwrap();
                prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
                before = Some(c);
            }
        }
    }

    #[test]
    fn an_empty_chunk_and_an_empty_delta() {
        let c = ChatChunk {
            choices: vec![ChunkChoice::default()],
            ..ChatChunk::default()
        };
        let mut out = Vec::new();
        c.write_json(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"created":0,"choices":[{"index":0,"delta":{},"finish_reason":null}]}"#
        );
        assert_eq!(out, serde_json::to_vec(&c).unwrap());
    }
}
