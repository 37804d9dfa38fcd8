//! Latency recording: what is measured, under which names and labels, and the store.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use llm_layers_core::{ChatRequest, LlmError, Message, TimeoutKind};
use llm_layers_latency::names::*;
use llm_layers_latency::{LatencyLayer, LatencyStore, Outcome, Scope};
use llm_layers_mock::{MockChat, Script};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Layer, ServiceExt};

fn req(model: &str) -> ChatRequest {
    ChatRequest::new(model, vec![Message::user("hello there")])
}

type Row = (String, HashMap<String, String>, DebugValue);

fn rows(snap: &Snapshotter) -> Vec<Row> {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| {
            let key = ck.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, v)
        })
        .collect()
}

fn histogram_values(rows: &[Row], name: &str) -> Vec<f64> {
    rows.iter()
        .filter(|(n, _, _)| n == name)
        .flat_map(|(_, _, v)| match v {
            DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).collect::<Vec<_>>(),
            _ => vec![],
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn ttft_is_measured_at_the_first_token_with_every_name_and_label() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let _g = metrics::set_default_local_recorder(&rec);
    // A role-only chunk (like a keep-alive) at 1 s, the first token at 3 s.
    let mock = MockChat::with_default(
        Script::new()
            .provider("Alpha")
            .wait(Duration::from_secs(1))
            .role()
            .wait(Duration::from_secs(2))
            .token("a")
            .wait(Duration::from_millis(500))
            .token("b")
            .finish("stop")
            .usage(12, 2),
    );
    let svc = LatencyLayer::builder()
        .scope(Scope::Call)
        .build()
        .unwrap()
        .layer(mock);
    svc.oneshot(req("openai/gpt-4o"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rows = rows(&snap);
    assert_eq!(histogram_values(&rows, TIME_TO_FIRST_CHUNK), [3.0]);
    assert_eq!(histogram_values(&rows, OPERATION_DURATION), [3.5]);
    assert_eq!(
        histogram_values(&rows, TIME_PER_OUTPUT_CHUNK),
        [0.5],
        "one gap, between the two tokens"
    );
    let mut usage = histogram_values(&rows, TOKEN_USAGE);
    usage.sort_by(f64::total_cmp);
    assert_eq!(usage, [2.0, 12.0]);
    assert_eq!(
        histogram_values(&rows, OUTPUT_TOKENS_PER_SECOND),
        [4.0],
        "2 tokens in 0.5 s"
    );
    let (_, labels, _) = rows
        .iter()
        .find(|(n, _, _)| n == TIME_TO_FIRST_CHUNK)
        .unwrap();
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openrouter"),
        ("gen_ai.request.model", "openai/gpt-4o"),
        ("gen_ai.response.model", "openai/gpt-4o"),
        ("openrouter.provider", "Alpha"),
        ("llm.prompt_size_bucket", "4"),
        ("llm.scope", "call"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    let calls = rows.iter().find(|(n, _, _)| n == CALLS).unwrap();
    assert_eq!(calls.1["outcome"], "ok");
    assert_eq!(calls.2, DebugValue::Counter(1));
    let types: HashSet<_> = rows
        .iter()
        .filter(|(n, _, _)| n == TOKEN_USAGE)
        .map(|(_, l, _)| l["gen_ai.token.type"].clone())
        .collect();
    assert_eq!(
        types,
        HashSet::from(["input".to_owned(), "output".to_owned()])
    );
}

#[tokio::test(start_paused = true)]
async fn outcomes_and_timeout_kinds_are_labelled_and_cancellation_counts() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let _g = metrics::set_default_local_recorder(&rec);
    let mock = MockChat::new();
    mock.push(Script::error(LlmError::timeout(TimeoutKind::FirstToken)));
    mock.push(
        Script::new()
            .token("a")
            .fail(LlmError::timeout(TimeoutKind::Idle)),
    );
    mock.push(Script::tokens(Duration::ZERO, 3, Duration::from_secs(1)));
    let svc = LatencyLayer::builder().build().unwrap().layer(mock);
    assert!(svc.clone().oneshot(req("m")).await.is_err());
    let mut s = svc.clone().oneshot(req("m")).await.unwrap();
    while s.next().await.is_some() {}
    let mut s = svc.clone().oneshot(req("m")).await.unwrap();
    s.next().await.unwrap().unwrap();
    drop(s);
    let outcomes: HashSet<String> = rows(&snap)
        .into_iter()
        .filter(|(n, _, _)| n == CALLS)
        .map(|(_, l, _)| l["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        HashSet::from([
            "timeout_first_token".into(),
            "timeout_idle".into(),
            "cancelled".into()
        ])
    );
    let error_types: HashSet<String> = rows(&snap)
        .into_iter()
        .filter(|(n, _, _)| n == OPERATION_DURATION)
        .filter_map(|(_, l, _)| l.get("error.type").cloned())
        .collect();
    assert_eq!(
        error_types,
        HashSet::from(["timeout_first_token".into(), "timeout_idle".into()])
    );
}

#[tokio::test(start_paused = true)]
async fn model_label_cardinality_is_capped() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let _g = metrics::set_default_local_recorder(&rec);
    let mock = MockChat::with_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO));
    let svc = LatencyLayer::builder()
        .max_models(3)
        .build()
        .unwrap()
        .layer(mock);
    for i in 0..20 {
        svc.clone()
            .oneshot(req(&format!("vendor/model-{i}")))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    }
    let models: HashSet<String> = rows(&snap)
        .into_iter()
        .map(|(_, l, _)| l["gen_ai.request.model"].clone())
        .collect();
    assert_eq!(models.len(), 4, "{models:?}");
    assert!(models.contains("_OTHER"));
}

#[test]
fn prometheus_rendering_has_the_documented_buckets() {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let mut b = PrometheusBuilder::new();
    for (name, buckets) in HISTOGRAM_BUCKETS {
        b = b
            .set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
            .unwrap();
    }
    let recorder = b.build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        metrics::histogram!(OPERATION_DURATION, "gen_ai.request.model" => "m").record(0.3);
        metrics::histogram!(TOKEN_USAGE, "gen_ai.token.type" => "output").record(10.0);
    });
    let text = handle.render();
    for le in ["0.01", "0.32", "81.92", "+Inf"] {
        assert!(text.contains(&format!("gen_ai_client_operation_duration_seconds_bucket{{gen_ai_request_model=\"m\",le=\"{le}\"}}")), "{le}\n{text}");
    }
    assert!(
        text.contains(
            "gen_ai_client_token_usage_bucket{gen_ai_token_type=\"output\",le=\"67108864\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("# HELP gen_ai_client_operation_duration_seconds"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn store_quantiles_are_within_two_percent_rank_error() {
    let store = LatencyStore::builder().min_samples(100).build().unwrap();
    assert_eq!(store.ttft_quantile("m", None, 0.5), None, "no samples yet");
    // 10,000 TTFTs uniform over 1..=10000 ms, in a scrambled order.
    for i in 0..10_000u64 {
        let ms = (i * 7919) % 10_000 + 1;
        store.record(
            ("m", Some("A")),
            Some(Duration::from_millis(ms)),
            Some(50.0),
            Outcome::Ok,
        );
    }
    for q in [0.5, 0.9, 0.95, 0.99] {
        for provider in [None, Some("A")] {
            let v = store.ttft_quantile("m", provider, q).unwrap();
            let rank = v.as_secs_f64() / 10.0;
            assert!((rank - q).abs() <= 0.02, "q{q}: {v:?} is rank {rank}");
        }
    }
    let s = store.stats("m", Some("A")).unwrap();
    assert_eq!((s.calls, s.error_rate), (10_000, 0.0));
    assert!((s.tokens_per_sec_p50 - 50.0).abs() < 1.0);
}

#[tokio::test(start_paused = true)]
async fn old_samples_decay_and_rates_follow() {
    let store = LatencyStore::builder()
        .window(Duration::from_secs(60))
        .min_samples(10)
        .build()
        .unwrap();
    // Failures alone admit no model: this one is admitted up front (as a router's tiers are).
    store.admit(["m"]);
    for _ in 0..100 {
        store.record(
            ("m", Some("A")),
            Some(Duration::from_secs(8)),
            None,
            Outcome::Timeout,
        );
    }
    assert_eq!(store.stats("m", Some("A")).unwrap().timeout_rate, 1.0);
    // The provider heals: a minute of fast, good calls replaces the slow past.
    for _ in 0..60 {
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..5 {
            store.record(
                ("m", Some("A")),
                Some(Duration::from_millis(500)),
                None,
                Outcome::Ok,
            );
        }
    }
    let p95 = store.ttft_quantile("m", Some("A"), 0.95).unwrap();
    assert!(p95 <= Duration::from_millis(510), "{p95:?}");
    let s = store.stats("m", Some("A")).unwrap();
    assert_eq!(s.timeout_rate, 0.0);
    // Nothing for two windows: nothing left.
    tokio::time::advance(Duration::from_secs(121)).await;
    assert_eq!(store.ttft_quantile("m", Some("A"), 0.5), None);
}

#[tokio::test(start_paused = true)]
async fn the_store_is_bounded_and_shared() {
    let store = LatencyStore::builder()
        .max_keys(8)
        .min_samples(1)
        .build()
        .unwrap();
    let clone = store.clone();
    for i in 0..1000 {
        clone.record(
            (&format!("m{i}"), Some("P")),
            Some(Duration::from_millis(5)),
            None,
            Outcome::Ok,
        );
    }
    assert!(store.keys() <= 8, "{}", store.keys());
    assert!(store.stats("_OTHER", None).unwrap().calls > 900);
    assert_eq!(store.providers("m0").len(), 1);
}

#[test]
fn bad_configuration_is_rejected() {
    assert!(
        LatencyStore::builder()
            .window(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(LatencyStore::builder().max_keys(0).build().is_err());
    assert!(LatencyLayer::builder().max_models(0).build().is_err());
}

#[tokio::test(start_paused = true)]
async fn repeated_label_sets_reuse_their_series_and_new_ones_get_their_own() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let _g = metrics::set_default_local_recorder(&rec);
    let script = |p: &str| {
        Script::new()
            .provider(p)
            .wait(Duration::from_millis(100))
            .token("a")
            .wait(Duration::from_millis(100))
            .token("b")
            .usage(3, 2)
            .finish("stop")
    };
    let mock = MockChat::new();
    for p in ["Alpha", "Alpha", "Beta", "Alpha"] {
        mock.push(script(p));
    }
    // The fifth call is cancelled after its first token.
    mock.push(script("Alpha"));
    let svc = LatencyLayer::builder().build().unwrap().layer(mock);
    for _ in 0..4 {
        let s = svc.clone().oneshot(req("m/x")).await.unwrap();
        s.collect().await.unwrap();
    }
    let mut s = svc.clone().oneshot(req("m/x")).await.unwrap();
    s.next().await.unwrap().unwrap();
    drop(s);
    let rows = rows(&snap);
    let count = |name: &str, provider: &str, extra: Option<(&str, &str)>| -> Vec<&DebugValue> {
        rows.iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.get("openrouter.provider").map(String::as_str) == Some(provider)
                    && extra.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .collect()
    };
    let calls =
        |provider, outcome| match count(CALLS, provider, Some(("outcome", outcome))).as_slice() {
            [DebugValue::Counter(n)] => *n,
            other => panic!("one {outcome} counter for {provider}: {other:?}"),
        };
    assert_eq!(calls("Alpha", "ok"), 3);
    assert_eq!(calls("Beta", "ok"), 1);
    assert_eq!(calls("Alpha", "cancelled"), 1);
    let samples = |name, provider| match count(name, provider, None).as_slice() {
        [DebugValue::Histogram(h)] => h.len(),
        other => panic!("one {name} series for {provider}: {other:?}"),
    };
    assert_eq!(samples(TIME_TO_FIRST_CHUNK, "Alpha"), 4);
    assert_eq!(samples(TIME_TO_FIRST_CHUNK, "Beta"), 1);
    assert_eq!(samples(OPERATION_DURATION, "Alpha"), 4);
    assert_eq!(
        samples(TIME_PER_OUTPUT_CHUNK, "Alpha"),
        3,
        "one gap per finished call"
    );
    match count(TOKEN_USAGE, "Alpha", Some(("gen_ai.token.type", "output"))).as_slice() {
        [DebugValue::Histogram(h)] => assert_eq!(h.len(), 3),
        other => panic!("{other:?}"),
    }
}

/// An attempt dropped before its first token (a hedge lost, the caller left) is seen: a
/// censored sample, counted once, kept out of the quantiles and the rates.
#[tokio::test(start_paused = true)]
async fn an_attempt_dropped_before_its_first_token_is_a_censored_sample() {
    let store = LatencyStore::builder().min_samples(1).build().unwrap();
    store.admit(["m"]);
    let mock = MockChat::with_default(Script::new().provider("Slow").hang());
    let svc = LatencyLayer::builder()
        .store(store.clone())
        .build()
        .unwrap()
        .layer(mock.clone());
    let cut = tokio::time::timeout(Duration::from_secs(3), svc.clone().oneshot(req("m"))).await;
    assert!(cut.is_err(), "the attempt never committed");
    let s = store.stats("m", None).unwrap();
    assert_eq!((s.censored, s.ttft_samples, s.calls), (1, 0, 0));
    assert_eq!(mock.cancelled(), 1);
}

/// The caller's own errors (400, 402, 413 ...) and throttles say nothing about the
/// provider's health: they do not count against it.
#[tokio::test(start_paused = true)]
async fn caller_errors_and_throttles_do_not_count_against_the_provider() {
    use http::StatusCode;
    let store = LatencyStore::builder().min_samples(1).build().unwrap();
    let mock = MockChat::new();
    let svc = LatencyLayer::builder()
        .store(store.clone())
        .build()
        .unwrap()
        .layer(mock.clone());
    mock.push(Script::tokens(Duration::from_millis(100), 1, Duration::ZERO).provider("A"));
    svc.clone()
        .oneshot(req("m"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    for code in [400, 402, 413, 429] {
        mock.push(Script::error(
            LlmError::status(StatusCode::from_u16(code).unwrap(), None).with_provider("A"),
        ));
        let _ = svc.clone().oneshot(req("m")).await;
    }
    mock.push(Script::error(
        LlmError::status(StatusCode::BAD_GATEWAY, None).with_provider("A"),
    ));
    let _ = svc.clone().oneshot(req("m")).await;
    let s = store.stats("m", Some("A")).unwrap();
    assert_eq!(s.calls, 2, "the success and the 502");
    assert_eq!(s.error_rate, 0.5);
}

/// Junk model names that only ever fail take no room: a model gets keys at its first
/// success (or when admitted), so the real ones are never folded into `_OTHER`.
#[tokio::test(start_paused = true)]
async fn junk_model_names_do_not_fill_the_store() {
    use http::StatusCode;
    let store = LatencyStore::builder()
        .max_keys(8)
        .min_samples(1)
        .build()
        .unwrap();
    let mock = MockChat::with_default(Script::error(LlmError::status(
        StatusCode::BAD_REQUEST,
        None,
    )));
    let svc = LatencyLayer::builder()
        .store(store.clone())
        .max_models(4)
        .build()
        .unwrap()
        .layer(mock.clone());
    for i in 0..100 {
        let _ = svc.clone().oneshot(req(&format!("junk/{i}"))).await;
    }
    assert_eq!(store.keys(), 0);
    // A real model, past the metric label cap, is still measured under its own name.
    mock.push(Script::tokens(Duration::from_millis(100), 1, Duration::ZERO).provider("A"));
    svc.clone()
        .oneshot(req("real/model"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        store.stats("real/model", Some("A")).unwrap().ttft_samples,
        1
    );
    assert!(store.stats(llm_layers_latency::OTHER, None).is_none());
}

/// Keys idle for a whole window make room before new models fold into `_OTHER`.
#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_before_folding() {
    let store = LatencyStore::builder()
        .max_keys(4)
        .window(Duration::from_secs(10))
        .min_samples(1)
        .build()
        .unwrap();
    let ok = |m: &str| {
        store.record(
            (m, Some("P")),
            Some(Duration::from_millis(5)),
            None,
            Outcome::Ok,
        )
    };
    ok("a");
    tokio::time::advance(Duration::from_secs(30)).await;
    ok("b");
    assert!(store.stats("b", Some("P")).is_some(), "b got a's room");
    assert!(store.stats("a", None).is_none());
}

#[test]
fn quantiles_below_the_median_are_the_median_not_a_line_from_zero() {
    let s = llm_layers_latency::Stats {
        ttft_p50: Duration::from_secs(1),
        ttft_p90: Duration::from_secs(2),
        ttft_p95: Duration::from_secs(3),
        ttft_p99: Duration::from_secs(4),
        ..Default::default()
    };
    assert_eq!(s.ttft_quantile(0.3), Duration::from_secs(1));
    assert_eq!(s.ttft_quantile(0.7), Duration::from_millis(1500));
}

/// Per call, a whole answer commits when it is complete: what would be its TTFT is its
/// whole duration, so none is recorded (the duration is).
#[tokio::test(start_paused = true)]
async fn a_whole_answer_per_call_records_no_ttft() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let _g = metrics::set_default_local_recorder(&rec);
    let mock = MockChat::with_default(
        Script::tokens(Duration::from_millis(100), 2, Duration::from_millis(10)).provider("A"),
    );
    let svc = LatencyLayer::builder()
        .scope(Scope::Call)
        .build()
        .unwrap()
        .layer(mock);
    let mut r = req("m");
    r.extensions_mut().insert(llm_layers_core::WholeAnswer);
    svc.oneshot(r).await.unwrap().collect().await.unwrap();
    let rows = rows(&snap);
    assert!(histogram_values(&rows, TIME_TO_FIRST_CHUNK).is_empty());
    assert_eq!(histogram_values(&rows, OPERATION_DURATION).len(), 1);
}

/// A published prior stands in until samples come: worth 5 calls by default, it has half
/// the say after 5 samples and little after 50; set from endpoint stats, missing points are
/// filled in on a lognormal.
#[tokio::test(start_paused = true)]
async fn a_prior_is_replaced_by_samples_as_they_come() {
    use llm_layers_core::endpoints::{EndpointStats, Percentiles};
    use llm_layers_latency::Prior;
    let store = LatencyStore::builder().min_samples(20).build().unwrap();
    let published = EndpointStats {
        provider_name: "P".into(),
        latency_last_30m: Some(Percentiles {
            p50: Some(0.1),
            p75: None,
            p90: None,
            p99: Some(0.4),
        }),
        uptime_last_5m: Some(97.0),
        ..Default::default()
    };
    let prior = Prior::from_endpoint(&published).unwrap();
    assert_eq!(prior.uptime_5m, Some(97.0));
    assert!(prior.ttft_p90 > prior.ttft_p75 && prior.ttft_p75 > prior.ttft_p50);
    assert!(Prior::from_endpoint(&EndpointStats::default()).is_none());
    store.set_prior("m", "P", Some(prior));
    let p50 = |s: &LatencyStore| s.stats("m", Some("P")).unwrap().ttft_p50.as_secs_f64();
    assert!((p50(&store) - 0.1).abs() < 1e-9);
    assert_eq!(
        store.ttft_quantile("m", Some("P"), 0.5),
        Some(Duration::from_millis(100)),
        "a prior is known without min_samples"
    );
    let record = |ms: u64, n: usize| {
        for _ in 0..n {
            store.record(
                ("m", Some("P")),
                Some(Duration::from_millis(ms)),
                None,
                Outcome::Ok,
            );
        }
    };
    // Five samples at 1 s: ten times the published median. A prior is a hypothesis, and
    // this one failed its test: it loses its say at once, rather than after five more.
    record(1_000, 5);
    tokio::time::advance(Duration::from_millis(300)).await;
    let s = store.stats("m", Some("P")).unwrap();
    assert!(s.prior_weight < 0.01, "{}", s.prior_weight);
    assert!(p50(&store) > 0.95, "{}", p50(&store));
    assert!(
        store.prior_calibration().1 < 0.05,
        "{:?}",
        store.prior_calibration()
    );
    // Fifty more: the prior has under a tenth of the say.
    record(1_000, 50);
    tokio::time::advance(Duration::from_millis(300)).await;
    assert!(store.stats("m", Some("P")).unwrap().prior_weight < 0.1);
    assert!(p50(&store) > 0.8, "{}", p50(&store));
    // Cleared: the samples alone.
    store.set_prior("m", "P", None);
    assert!((p50(&store) - 1.0).abs() < 0.01);

    // A prior that holds (samples 20 % slower) keeps most of its weight and blends, in
    // logs, by counts: about half the say after five samples.
    let store = LatencyStore::builder().min_samples(3).build().unwrap();
    store.set_prior("m", "Q", Some(prior));
    for _ in 0..5 {
        store.record(
            ("m", Some("Q")),
            Some(Duration::from_millis(120)),
            None,
            Outcome::Ok,
        );
    }
    tokio::time::advance(Duration::from_millis(300)).await;
    let s = store.stats("m", Some("Q")).unwrap();
    assert!(
        s.prior_weight > 0.35 && s.prior_weight < 0.5,
        "{}",
        s.prior_weight
    );
    let p50 = s.ttft_p50.as_secs_f64();
    assert!(p50 > 0.105 && p50 < 0.115, "{p50}");
}

/// A replica's own samples, exported as summaries and merged into another's store, read
/// there as if measured there (within the sketch's 1 %), are never exported again by it, and
/// fade when no newer merge comes.
#[tokio::test(start_paused = true)]
async fn fleet_summaries_merge_exactly_and_are_not_echoed() {
    use llm_layers_latency::Summary;
    let a = LatencyStore::builder().min_samples(10).build().unwrap();
    let b = LatencyStore::builder().min_samples(10).build().unwrap();
    for i in 1..=200u64 {
        a.record(
            ("m", Some("Fast")),
            Some(Duration::from_millis(100 + i)),
            Some(50.0),
            Outcome::Ok,
        );
    }
    a.record(("m", Some("Fast")), None, None, Outcome::Error);
    let exported = a.export();
    assert_eq!(
        exported.len(),
        2,
        "the provider and the model: {exported:?}"
    );
    for (model, provider, s) in &exported {
        let text = s.encode();
        let back = Summary::decode(&text).unwrap();
        assert_eq!(&back, s, "{text}");
        b.merge_fleet(model, provider.as_deref(), &[back], Duration::from_secs(10));
    }
    assert!(Summary::decode("1 2 3|x").is_none());
    let (sa, sb) = (
        a.stats("m", Some("Fast")).unwrap(),
        b.stats("m", Some("Fast")).unwrap(),
    );
    assert_eq!((sb.ttft_samples, sb.calls), (200, 201));
    let (pa, pb) = (sa.ttft_p90.as_secs_f64(), sb.ttft_p90.as_secs_f64());
    assert!((pa - pb).abs() / pa < 0.01, "{pa} vs {pb}");
    assert!(b.export().is_empty(), "merged samples are not b's own");
    tokio::time::advance(Duration::from_secs(11)).await;
    b.merge_fleet("m", None, &[], Duration::from_secs(10));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        b.measured("m", Some("Fast")).unwrap().ttft_samples,
        0,
        "faded"
    );
}

/// The longest-gap p99 (read by an adaptive idle limit on every call) comes from the
/// snapshot the store caches for `refresh`; another quantile is computed at once.
#[tokio::test(start_paused = true)]
async fn the_max_gap_p99_is_read_from_the_cached_snapshot() {
    let store = LatencyStore::builder().min_samples(3).build().unwrap();
    let key = ("m", Some("A"));
    for ms in [10, 20, 30, 40] {
        store.record(key, Some(Duration::from_millis(100)), None, Outcome::Ok);
        store.record_max_gap(key, Duration::from_millis(ms));
    }
    let p99 = store.max_gap_quantile("m", Some("A"), 0.99).unwrap();
    assert!(
        p99 >= Duration::from_millis(39) && p99 <= Duration::from_millis(41),
        "{p99:?}"
    );
    let p50 = store.max_gap_quantile("m", Some("A"), 0.5).unwrap();
    assert!(
        p50 >= Duration::from_millis(19) && p50 <= Duration::from_millis(21),
        "{p50:?}"
    );
    // Longer gaps now: the p99 stays the cached one until the snapshot is refreshed, the
    // median moves at once.
    for _ in 0..20 {
        store.record(key, Some(Duration::from_millis(100)), None, Outcome::Ok);
        store.record_max_gap(key, Duration::from_millis(500));
    }
    assert_eq!(store.max_gap_quantile("m", Some("A"), 0.99), Some(p99));
    let p50 = store.max_gap_quantile("m", Some("A"), 0.5).unwrap();
    assert!(p50 >= Duration::from_millis(490), "{p50:?}");
    tokio::time::advance(store.refresh()).await;
    let p99 = store.max_gap_quantile("m", Some("A"), 0.99).unwrap();
    assert!(p99 >= Duration::from_millis(490), "{p99:?}");
    // Too few samples for another key: nothing.
    store.record(
        ("m", Some("B")),
        Some(Duration::from_millis(100)),
        None,
        Outcome::Ok,
    );
    store.record_max_gap(("m", Some("B")), Duration::from_millis(10));
    assert_eq!(store.max_gap_quantile("m", Some("B"), 0.99), None);
    assert_eq!(store.max_gap_quantile("m", Some("B"), 0.5), None);
}
