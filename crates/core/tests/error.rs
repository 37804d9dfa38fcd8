//! `LlmError` and the default classification, one case per status OpenRouter documents
//! (<https://openrouter.ai/docs/api-reference/errors>).

use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use llm_layers_core::{
    ApiError, Classify, DefaultClassify, ErrorClass, ErrorCode, ErrorKind, LlmError, TimeoutKind,
    parse_retry_after,
};

fn status(code: u16) -> LlmError {
    LlmError::status(StatusCode::from_u16(code).unwrap(), None)
}

#[test]
fn status_table() {
    let cases: &[(u16, bool, bool)] = &[
        (400, false, false),
        (401, false, false),
        (402, false, false),
        (403, false, false),
        (404, false, false),
        (408, true, true),
        (413, false, false),
        (422, false, false),
        (429, true, false),
        (500, true, true),
        (502, true, true),
        (503, true, true),
        (524, true, true),
        (529, true, true),
    ];
    for &(code, retriable, provider_failure) in cases {
        let e = status(code);
        let c = DefaultClassify.classify(&e);
        assert_eq!(
            (c.retriable, c.provider_failure, c.throttled),
            (retriable, provider_failure, code == 429),
            "status {code}"
        );
        assert_eq!(e.is_retriable(), retriable, "status {code}");
        assert_eq!(e.status_code().unwrap().as_u16(), code);
    }
}

#[test]
fn payment_required_is_retriable_only_with_retry_after() {
    assert!(!status(402).is_retriable());
    assert!(
        status(402)
            .with_retry_after(Duration::from_secs(3))
            .is_retriable()
    );
}

#[test]
fn availability_retryable_overrides_the_table() {
    let body = br#"{"error":{"code":503,"message":"no","availability":{"code":"model_not_found","retryable":false}}}"#;
    let e = LlmError::status(StatusCode::SERVICE_UNAVAILABLE, ApiError::from_body(body));
    assert!(!e.is_retriable());
    assert_eq!(
        e.api_error().unwrap().availability_code.as_deref(),
        Some("model_not_found")
    );
}

#[test]
fn other_kinds() {
    for k in [TimeoutKind::FirstToken, TimeoutKind::Connect] {
        assert!(LlmError::timeout(k).is_retriable());
    }
    for k in [TimeoutKind::Idle, TimeoutKind::Total] {
        assert!(!LlmError::timeout(k).is_retriable());
    }
    assert!(LlmError::new(ErrorKind::Connect).is_retriable());
    assert!(LlmError::truncated().is_retriable());
    assert!(!LlmError::bad_request("x").is_retriable());
    assert!(!LlmError::circuit_open(vec!["a".into()], None).is_retriable());
    assert!(!LlmError::new(ErrorKind::Cancelled).is_retriable());
    let rl = LlmError::rate_limited(Duration::from_millis(250));
    assert!(rl.is_retriable());
    assert_eq!(rl.retry_after(), Some(Duration::from_millis(250)));
}

#[test]
fn error_body_shapes() {
    let e = ApiError::from_body(
        br#"{"error":{"code":"server_error","message":"m","metadata":{"provider_name":"Groq","raw":"x"}},"user_id":"u"}"#,
    )
    .unwrap();
    assert_eq!(e.code, Some(ErrorCode::Text("server_error".into())));
    assert_eq!(e.provider_name.as_deref(), Some("Groq"));
    // error_type directly in error (the availability example) is accepted too.
    let e = ApiError::from_body(
        br#"{"error":{"code":429,"message":"m","error_type":"rate_limit_exceeded"}}"#,
    )
    .unwrap();
    assert_eq!(e.error_type.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(e.status_code(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(ApiError::from_body(b"not json").is_none());
    assert!(ApiError::from_body(br#"{"choices":[]}"#).is_none());
    // An error that is a bare string is its message.
    let e = ApiError::from_body(br#"{"error":"model is overloaded"}"#).unwrap();
    assert_eq!(e.message.as_deref(), Some("model is overloaded"));
    assert_eq!(e.code, None);
    assert!(ApiError::from_body(br#"{"error":42}"#).is_none());
    // A code reads as it was sent.
    assert_eq!(ErrorCode::Number(429).to_string(), "429");
    assert_eq!(
        ErrorCode::Text("server_error".into()).to_string(),
        "server_error"
    );
    // The provider is lifted onto the error.
    let err = LlmError::status(
        StatusCode::BAD_GATEWAY,
        Some({
            let mut api = ApiError::default();
            api.provider_name = Some("Groq".into());
            api
        }),
    );
    assert_eq!(err.provider(), Some("Groq"));
}

#[test]
fn retry_after_seconds_and_http_date() {
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
    assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
    assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after("0.5", now),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:44 GMT", now),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("-1", now), None);
    assert_eq!(parse_retry_after("NaN", now), None);
    assert_eq!(parse_retry_after("", now), None);
}

#[test]
fn display_and_debug_name_the_kind() {
    let e = status(429)
        .with_retry_after(Duration::from_secs(2))
        .with_message("slow down");
    let s = e.to_string();
    assert!(
        s.contains("429") && s.contains("slow down") && s.contains("retry after 2.000s"),
        "{s}"
    );
    assert!(format!("{e:?}").contains("Status"));
    assert_eq!(
        ErrorKind::Timeout(TimeoutKind::Idle).as_str(),
        "timeout_idle"
    );
}

/// An error event carries the upstream's code: a 400 in the stream is the caller's, and
/// `availability.retryable` decides when the upstream says.
#[test]
fn in_stream_errors_are_classified_by_their_code() {
    let api = |code: i64| {
        let mut api = ApiError::default();
        api.code = Some(llm_layers_core::ErrorCode::Number(code));
        api
    };
    let bad = LlmError::upstream(api(400));
    assert_eq!(DefaultClassify.classify(&bad), ErrorClass::CALLER);
    let busy = LlmError::upstream(api(502));
    assert_eq!(DefaultClassify.classify(&busy), ErrorClass::TRANSIENT);
    let throttled = LlmError::upstream(api(429));
    assert_eq!(DefaultClassify.classify(&throttled), ErrorClass::THROTTLED);
    let mut final_one = api(503);
    final_one.retryable = Some(false);
    assert!(!LlmError::upstream(final_one).is_retriable());
    // No code: the provider's, and worth another attempt.
    assert_eq!(
        DefaultClassify.classify(&LlmError::upstream(ApiError::default())),
        ErrorClass::TRANSIENT
    );
}

/// Throttled is not broken; a limit on our own key is neither.
#[test]
fn throttles_and_key_limits_are_their_own_classes() {
    let provider_429 = status(429).with_provider("Alpha");
    let c = DefaultClassify.classify(&provider_429);
    assert!(c.throttled && c.retriable && !c.provider_failure);
    let key_429 = status(429).with_key_limited();
    assert_eq!(DefaultClassify.classify(&key_429), ErrorClass::CALLER);
    let body = br#"{"error":{"code":503,"message":"busy","availability":{"code":"capacity_exhausted","retryable":true}}}"#;
    let capacity = LlmError::status(
        http::StatusCode::SERVICE_UNAVAILABLE,
        ApiError::from_body(body),
    );
    assert_eq!(DefaultClassify.classify(&capacity), ErrorClass::THROTTLED);
}

/// What an error says of itself: each flag set only by its setter, each predicate true for
/// its kinds only, the providers of a circuit-open error, its source.
#[test]
fn flags_predicates_and_source_say_what_was_set() {
    let plain = LlmError::new(ErrorKind::Upstream);
    assert!(!plain.retry_elsewhere() && !plain.no_retry());
    assert!(
        LlmError::new(ErrorKind::Upstream)
            .with_retry_elsewhere()
            .retry_elsewhere()
    );
    assert!(
        LlmError::new(ErrorKind::Upstream)
            .with_no_retry()
            .no_retry()
    );
    let mut e = LlmError::new(ErrorKind::Upstream);
    e.set_retry_after(Some(Duration::from_secs(3)));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    e.set_retry_after(None);
    assert_eq!(e.retry_after(), None);

    let open = LlmError::circuit_open(vec!["alpha".into(), "beta".into()], None);
    assert_eq!(open.open_providers(), ["alpha", "beta"]);
    assert!(plain.open_providers().is_empty());

    let kinds = [
        ErrorKind::Timeout(TimeoutKind::FirstToken),
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Timeout(TimeoutKind::Connect),
        ErrorKind::Status,
        ErrorKind::Cancelled,
        ErrorKind::Upstream,
    ];
    for k in kinds {
        let e = LlmError::new(k);
        assert_eq!(e.is_timeout(), matches!(k, ErrorKind::Timeout(_)), "{k:?}");
        assert_eq!(
            e.is_connect(),
            matches!(
                k,
                ErrorKind::Connect | ErrorKind::Tls | ErrorKind::Timeout(TimeoutKind::Connect)
            ),
            "{k:?}"
        );
        assert_eq!(e.is_status(), k == ErrorKind::Status, "{k:?}");
        assert_eq!(e.is_cancelled(), k == ErrorKind::Cancelled, "{k:?}");
        assert!(!e.is_protocol());
    }
    assert!(LlmError::new(ErrorKind::Protocol(llm_layers_core::ProtocolKind::Json)).is_protocol());
    let garbled: LlmError = serde_json::from_str::<serde_json::Value>("{")
        .map_err(|e| LlmError::new(ErrorKind::Upstream).with_source(e))
        .unwrap_err();
    assert!(std::error::Error::source(&garbled).is_some());
    assert!(std::error::Error::source(&plain).is_none());
}

/// A stream cut after its commit (an idle or total timeout) or a body that is not what the
/// protocol says is the provider's failure, and not retried (the caller has the first token).
#[test]
fn committed_timeouts_and_protocol_errors_are_the_providers_and_final() {
    use llm_layers_core::ProtocolKind;
    for kind in [
        ErrorKind::Timeout(TimeoutKind::Idle),
        ErrorKind::Timeout(TimeoutKind::Total),
        ErrorKind::Protocol(ProtocolKind::Json),
        ErrorKind::Protocol(ProtocolKind::Sse),
    ] {
        let c = DefaultClassify.classify(&LlmError::new(kind));
        assert_eq!(
            (c.retriable, c.provider_failure, c.throttled),
            (false, true, false),
            "{kind:?}"
        );
    }
}
