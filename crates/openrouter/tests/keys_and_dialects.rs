//! Several keys per upstream and the OpenAI-compatible dialect, against the mock server.

use std::io::Write;
use std::sync::{Arc, Mutex};

use llm_layers_core::{ChatRequest, ErrorKind, KeyId, Message, OPENROUTER_ONLY_FIELDS};
use llm_layers_mock::{MockServer, Scenario};
use llm_layers_openrouter::{Dialect, KeyChoice, KeyState, OpenRouter};
use tower::ServiceExt;

const GOOD_A: &str = "sk-test-good-aaaaaaaaaaaa-1111";
const GOOD_B: &str = "sk-test-good-bbbbbbbbbbbb-2222";
const REVOKED: &str = "sk-test-revoked-cccccccccc-3333";
const BROKE: &str = "sk-test-broke-dddddddddddd-4444";
const THROTTLED: &str = "sk-test-throttled-eeeeeee-5555";

fn req(text: &str) -> ChatRequest {
    let mut r = ChatRequest::new("mock/echo", vec![Message::user(text)]);
    r.body_mut().max_tokens = Some(2);
    r
}

/// A writer the log goes to, for a test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        llm_layers_core::sync::lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn calls_rotate_over_keys_a_rejected_key_is_retired_and_no_key_text_leaks() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Global: a thread-local subscriber can miss callsites another test thread hit first
    // (tracing caches their interest). Every test of this binary then logs here, which
    // is more to check for key text.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut s = Scenario::healthy().with_time_scale(0.01);
    s.key_statuses.insert(REVOKED.into(), 401);
    s.key_statuses.insert(BROKE.into(), 402);
    s.key_statuses.insert(THROTTLED.into(), 429);
    let server = MockServer::start(s).await.unwrap();
    let leaf = OpenRouter::builder()
        .api_keys([
            ("a", GOOD_A),
            ("revoked", REVOKED),
            ("b", GOOD_B),
            ("broke", BROKE),
            ("throttled", THROTTLED),
        ])
        .base_url(server.base_url())
        .build()
        .unwrap();
    let mut served = std::collections::HashMap::<String, usize>::new();
    for i in 0..40 {
        let stream = leaf.clone().oneshot(req(&format!("k{i}"))).await.unwrap();
        let id = stream
            .meta()
            .extensions
            .get::<KeyId>()
            .unwrap()
            .0
            .to_string();
        stream.collect().await.unwrap();
        *served.entry(id).or_default() += 1;
    }
    // Every call succeeded, spread over the two good keys.
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(served["a"] >= 15 && served["b"] >= 15, "{served:?}");
    // Each bad key was tried once and then left alone (retired, or held for its 30 s
    // Retry-After).
    let by_key = server.counters().requests_by_key();
    assert_eq!(by_key.get(REVOKED), Some(&1), "{by_key:?}");
    assert_eq!(by_key.get(BROKE), Some(&1), "{by_key:?}");
    assert_eq!(by_key.get(THROTTLED), Some(&1), "{by_key:?}");

    // No key text in Debug output, in the log, anywhere.
    let debug = format!(
        "{leaf:?} {:?}",
        OpenRouter::builder().api_keys([("a", GOOD_A)])
    );
    let logged = String::from_utf8(llm_layers_core::sync::lock(&log.0).clone()).unwrap();
    let ours: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("llm_layers"))
        .collect();
    assert!(
        logged.contains("retired"),
        "the retirement is said: {ours:?}"
    );
    for key in [GOOD_A, GOOD_B, REVOKED, BROKE, THROTTLED] {
        assert!(!debug.contains(key), "{debug}");
        assert!(!logged.contains(key), "{logged}");
        assert!(!logged.contains(&key[8..]), "{logged}");
    }
    assert!(debug.contains("revoked"), "key ids name them: {debug}");
}

#[tokio::test]
async fn every_key_refused_is_an_auth_error_and_the_last_key_is_never_taken_out() {
    let mut s = Scenario::healthy().with_time_scale(0.01);
    s.key_statuses.insert(REVOKED.into(), 401);
    s.key_statuses.insert(BROKE.into(), 402);
    let server = MockServer::start(s).await.unwrap();
    let leaf = OpenRouter::builder()
        .api_keys([("revoked", REVOKED), ("broke", BROKE)])
        .key_choice(KeyChoice::LeastRecentlyUsed)
        .base_url(server.base_url())
        .build()
        .unwrap();
    // The first key's refusal moves the call to the second, whose refusal is the answer.
    let e = leaf.clone().oneshot(req("x")).await.unwrap_err();
    assert!(
        matches!(e.status_code().map(|s| s.as_u16()), Some(401 | 402)),
        "{e}"
    );
    // One is out now; the other was the last that could serve, so it is kept in turn
    // (failing) and the next call is sent to it: no error takes every key out.
    let health = leaf.key_health();
    assert!(
        health.iter().all(|k| !k.state.is_ok()),
        "both out of service: {health:?}"
    );
    assert_eq!(
        health
            .iter()
            .filter(|k| matches!(k.state, KeyState::Failing(_)))
            .count(),
        1,
        "{health:?}"
    );
    let before = server.counters().requests();
    let e = leaf.clone().oneshot(req("y")).await.unwrap_err();
    assert!(
        matches!(e.status_code().map(|s| s.as_u16()), Some(401 | 402)),
        "{e}"
    );
    assert_eq!(server.counters().requests(), before + 1);

    // One key: its 401 passes as it is, every time (nothing to rotate to).
    let only = OpenRouter::builder()
        .api_key(REVOKED)
        .base_url(server.base_url())
        .build()
        .unwrap();
    for _ in 0..2 {
        let e = only.clone().oneshot(req("z")).await.unwrap_err();
        assert_eq!(e.status_code().map(|s| s.as_u16()), Some(401));
    }
    assert_eq!(server.counters().requests_by_key()[REVOKED], 3);
    // Two keys with the same name are a configuration error.
    assert!(
        OpenRouter::builder()
            .api_keys([("a", GOOD_A), ("a", GOOD_B)])
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn the_openai_compatible_dialect_sends_nothing_only_openrouter_understands() {
    let mut s = Scenario::healthy().with_time_scale(0.01);
    s.strict_openai = true;
    s.models.push("gpt-4o-mini".into());
    let server = MockServer::start(s).await.unwrap();
    let routed = || {
        let mut r = ChatRequest::new("openai/gpt-4o-mini:nitro", vec![Message::user("d")]);
        r.body_mut().max_tokens = Some(2);
        r.body_mut().provider_mut().order = Some(vec!["openai".into()]);
        r.body_mut().models = Some(vec!["openai/gpt-4o".into()]);
        let extra = &mut r.body_mut().extra;
        extra.insert("transforms".into(), serde_json::json!(["middle-out"]));
        extra.insert("usage".into(), serde_json::json!({"include": true}));
        extra.insert("logprobs".into(), serde_json::json!(false));
        r
    };
    // OpenRouter's dialect against a strict OpenAI-compatible endpoint: its 400, read as a
    // bad request with OpenAI's message.
    let openrouter = OpenRouter::builder()
        .api_key(GOOD_A)
        .base_url(server.base_url())
        .build()
        .unwrap();
    let e = openrouter.oneshot(routed()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Status);
    assert_eq!(e.status_code().map(|s| s.as_u16()), Some(400));
    assert!(
        e.to_string().contains("Unrecognized request argument"),
        "{e}"
    );

    let direct = OpenRouter::builder()
        .api_key(GOOD_A)
        .base_url(server.base_url())
        .dialect(Dialect::OpenAiCompatible)
        .model_map([("openai/gpt-4o-mini", "gpt-4o-mini")])
        .title("not sent")
        .build()
        .unwrap();
    let answer = direct
        .oneshot(routed())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(!answer.choices.is_empty());
    let sent: serde_json::Value =
        serde_json::from_slice(server.counters().bodies().last().unwrap()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["logprobs"], false, "other fields pass");
    for field in OPENROUTER_ONLY_FIELDS {
        assert!(sent.get(field).is_none(), "{field} sent: {sent}");
    }
}

/// What one call's input causes (a moderation `403`, a `402` for a request the balance
/// cannot cover) is the call's: passed on as it is, never retried on another key, and no
/// key is taken out for it.
#[tokio::test]
async fn a_callers_403_or_402_never_takes_a_key_out() {
    let mut s = Scenario::healthy().with_time_scale(0.01);
    s.moderation_flag = Some("FLAG-ME".into());
    s.affordable_tokens = Some(100);
    let server = MockServer::start(s).await.unwrap();
    let leaf = OpenRouter::builder()
        .api_keys([("a", GOOD_A), ("b", GOOD_B)])
        .base_url(server.base_url())
        .build()
        .unwrap();
    for _ in 0..4 {
        let e = leaf
            .clone()
            .oneshot(req("FLAG-ME please"))
            .await
            .unwrap_err();
        assert_eq!(e.status_code().map(|s| s.as_u16()), Some(403), "{e}");
        let mut big = req("big");
        big.body_mut().max_tokens = Some(100_000);
        let e = leaf.clone().oneshot(big).await.unwrap_err();
        assert_eq!(e.status_code().map(|s| s.as_u16()), Some(402), "{e}");
        assert_eq!(
            e.api_error().and_then(|a| a.limit_source()),
            Some("openrouter_credits")
        );
    }
    assert_eq!(
        server.counters().requests(),
        8,
        "one request per call, no rotation"
    );
    assert!(leaf.key_health().iter().all(|k| k.state.is_ok()));
    for i in 0..4 {
        leaf.clone()
            .oneshot(req(&format!("fine {i}")))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    }
    let by_key = server.counters().requests_by_key();
    assert_eq!((by_key[GOOD_A], by_key[GOOD_B]), (6, 6), "{by_key:?}");
}
