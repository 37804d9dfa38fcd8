//! Scenarios: the samplers keep their promises, choices are reproducible, bad files are named.

use llm_layers_core::{ChatRequest, Message, ProviderPreferences};
use llm_layers_mock::Scenario;
use llm_layers_mock::plan::{self, Outcome};

fn body(i: usize) -> ChatRequest {
    ChatRequest::new("mock/echo", vec![Message::user(format!("request {i}"))])
}

fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)]
}

/// TTFTs of `n` distinct requests, drawn by the same code the server uses, without sleeping.
fn ttfts(s: &Scenario, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let req = body(i);
            let bytes = serde_json::to_vec(&req).unwrap();
            let hash = {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                bytes.hash(&mut h);
                h.finish()
            };
            let mut rng = plan::request_rng(s.seed, hash, 0);
            plan::draw(s, req.body(), &mut rng).ttft.as_secs_f64()
        })
        .collect()
}

/// The sampler itself: 200,000 draws put each quantile within 5 % of its promise.
fn sampler_within(xs: &mut [f64], q: f64, promised: f64, name: &str) {
    let actual = quantile(xs, q);
    assert!(
        (actual / promised - 1.0).abs() <= 0.05,
        "{name}: sampled {actual:.3}s, promised {promised:.3}s"
    );
}

/// 2,000 requests: the promise must lie inside the distribution-free 99.7 % confidence
/// interval of the sample quantile (order statistics at q ± 3 sigma), and the point
/// estimate within 10 % where the density allows it (p50 always; see the note on tails).
fn requests_agree(xs: &mut [f64], q: f64, promised: f64, name: &str) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    let sigma = (q * (1.0 - q) / n).sqrt();
    let lo = xs[((q - 3.0 * sigma) * n) as usize];
    let hi = xs[(((q + 3.0 * sigma) * n) as usize).min(xs.len() - 1)];
    assert!(
        lo <= promised && promised <= hi,
        "{name}: promised {promised:.3}s outside the sample's interval [{lo:.3}, {hi:.3}]"
    );
}

#[test]
fn presets_keep_their_ttft_promises() {
    let promises: &[(&str, &[(f64, f64)])] = &[
        ("fat_tail", &[(0.50, 1.2), (0.95, 8.0), (0.99, 20.0)]),
        ("healthy", &[(0.50, 0.2), (0.99, 0.8)]),
        ("outage", &[(0.50, 0.2), (0.99, 0.8)]),
        ("rate_limited", &[(0.50, 0.2), (0.99, 0.8)]),
        ("chaos", &[(0.50, 0.2), (0.99, 0.8)]),
    ];
    for (name, qs) in promises {
        let s = Scenario::preset(name).unwrap();
        let mut big = ttfts(&s, 200_000);
        let mut two_k = ttfts(&s, 2_000);
        for &(q, promised) in *qs {
            sampler_within(&mut big, q, promised, &format!("{name} p{}", q * 100.0));
            requests_agree(&mut two_k, q, promised, &format!("{name} p{}", q * 100.0));
        }
        let p50 = quantile(&mut two_k, 0.5);
        assert!((p50 / qs[0].1 - 1.0).abs() <= 0.10, "{name} p50 {p50}");
    }
    // The time scale multiplies every delay.
    let mut scaled = ttfts(&Scenario::fat_tail().with_time_scale(0.01), 2_000);
    assert!((quantile(&mut scaled, 0.5) / 0.012 - 1.0).abs() <= 0.10);
}

#[test]
fn same_seed_same_plans_and_other_seeds_differ() {
    let s = Scenario::chaos().with_seed(42);
    let draw = |s: &Scenario, i: usize, repeat: u64| {
        let req = body(i % 50);
        let mut rng = plan::request_rng(s.seed, i as u64 % 50, repeat);
        plan::draw(s, req.body(), &mut rng)
    };
    let a: Vec<_> = (0..500).map(|i| draw(&s, i, (i / 50) as u64)).collect();
    let b: Vec<_> = (0..500).map(|i| draw(&s, i, (i / 50) as u64)).collect();
    assert_eq!(a, b);
    let other = s.clone().with_seed(43);
    let c: Vec<_> = (0..500).map(|i| draw(&other, i, (i / 50) as u64)).collect();
    assert_ne!(a, c);
    // Chaos produces every fault kind.
    let labels: std::collections::HashSet<String> = (0..5000)
        .map(|i| draw(&s, i, (i / 50) as u64).label())
        .collect();
    for l in [
        "ok",
        "status_429",
        "status_500",
        "status_502",
        "status_503",
        "status_524",
        "status_529",
        "reset",
        "hang",
        "error_200",
        "midstream_error",
        "midstream_error_eof",
        "truncate",
    ] {
        assert!(labels.contains(l), "chaos never drew {l}: {labels:?}");
    }
}

fn with_prefs(p: ProviderPreferences) -> ChatRequest {
    let mut r = body(0);
    r.body_mut().provider = Some(p);
    r
}

#[test]
fn provider_preferences_are_honoured() {
    let s = Scenario::healthy();
    let mut rng = plan::request_rng(1, 2, 3);
    let only = with_prefs(ProviderPreferences {
        only: Some(vec!["beta".into()]),
        ..Default::default()
    });
    for _ in 0..200 {
        assert_eq!(plan::choose_provider(&s, only.body(), &mut rng), Some(1));
    }
    let ignore = with_prefs(ProviderPreferences {
        ignore: Some(vec!["alpha".into(), "gamma".into()]),
        ..Default::default()
    });
    for _ in 0..200 {
        assert_eq!(plan::choose_provider(&s, ignore.body(), &mut rng), Some(1));
    }
    let order = with_prefs(ProviderPreferences {
        order: Some(vec!["gamma".into(), "alpha".into()]),
        ..Default::default()
    });
    assert_eq!(plan::choose_provider(&s, order.body(), &mut rng), Some(2));
    let strict = with_prefs(ProviderPreferences {
        order: Some(vec!["nobody".into()]),
        allow_fallbacks: Some(false),
        ..Default::default()
    });
    assert_eq!(plan::choose_provider(&s, strict.body(), &mut rng), None);
    let none = with_prefs(ProviderPreferences {
        only: Some(vec!["nobody".into()]),
        ..Default::default()
    });
    let p = plan::draw(&s, none.body(), &mut rng);
    assert_eq!(p.outcome, Outcome::NoEndpoints);
    // Weighted draws without preferences reach every provider.
    let mut seen = [0u32; 3];
    for _ in 0..300 {
        seen[plan::choose_provider(&s, body(0).body(), &mut rng).unwrap()] += 1;
    }
    assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
}

#[test]
fn bad_scenarios_name_the_field() {
    let cases = [
        (
            r#"{"providers": [{"name": "A", "slug": "a", "weight": 0}]}"#,
            "providers[0].weight",
        ),
        (
            r#"{"providers": [{"name": "A", "slug": "a", "ttft": {"kind": "lognormal", "p50_ms": 100, "p99_ms": 50}}]}"#,
            "providers[0].ttft.p99_ms",
        ),
        (
            r#"{"providers": [{"name": "A", "slug": "a", "faults": {"truncate": 1.5}}]}"#,
            "providers[0].faults.truncate",
        ),
        (
            r#"{"providers": [{"name": "A", "slug": "a", "faults": {"status": [{"code": 200, "rate": 0.1}]}}]}"#,
            "providers[0].faults.status[0].code",
        ),
        (
            r#"{"providers": [{"name": "A", "slug": "a", "faults": {"truncate": 0.6, "hang_after_headers": 0.6}}]}"#,
            "providers[0].faults",
        ),
        (r#"{"providers": []}"#, "providers"),
        (
            r#"{"time_scale": -1, "providers": [{"name": "A", "slug": "a"}]}"#,
            "time_scale",
        ),
        (
            r#"{"providers": [{"name": "A", "slug": "a", "wieght": 1}]}"#,
            "providers[0]",
        ),
        (
            r#"{"providers": [{"name": "A", "slug": "a", "ttft": {"kind": "fixed", "ms": "x"}}]}"#,
            "providers[0].ttft",
        ),
        (
            r#"{"providers": [{"name": "A", "slug": "A"}]}"#,
            "providers[0].slug",
        ),
    ];
    for (json, field) in cases {
        let e = Scenario::from_json(json).unwrap_err();
        assert!(
            e.field().starts_with(field),
            "{json}: got field {:?} ({e})",
            e.field()
        );
        assert!(e.to_string().contains(e.field()));
    }
    let e = Scenario::from_toml(
        "seed = 1\n[[providers]]\nname = \"A\"\nslug = \"a\"\nweight = \"heavy\"\n",
    )
    .unwrap_err();
    assert_eq!(e.field(), "providers[0].weight");
    let ok = Scenario::from_toml(
        "seed = 3\ntime_scale = 0.5\n[[providers]]\nname = \"A\"\nslug = \"a\"\n[providers.ttft]\nkind = \"uniform\"\nmin_ms = 1\nmax_ms = 2\n",
    )
    .unwrap();
    assert_eq!(ok.seed, 3);
    // Every preset round-trips through JSON and validates.
    for name in Scenario::PRESETS {
        let s = Scenario::preset(name).unwrap();
        let back = Scenario::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s, "{name}");
    }
    assert!(Scenario::preset("nope").is_none());
}
