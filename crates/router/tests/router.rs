//! The router on paused time: tiers against an SLA with a store fed known samples, the
//! exploration share, learned provider order, configuration errors, and a fat-tailed
//! upstream where routing keeps the tier inside its SLA.

use llm_layers_core::sync::lock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_layers_core::{
    Alternatives, ChatRequest, ChatStream, ErrorKind, LlmError, Message, ProviderPlan,
    ProviderPreferences, ProviderSort,
};
use llm_layers_latency::{LatencyLayer, LatencyStore, Outcome, Prior};
use llm_layers_mock::{Dist, MockChat, Script};
use llm_layers_router::{
    CandidateConfig, LearnedOrderConfig, OrderDecision, Route, RouteReason, RouterConfig,
    RouterLayer, SlaConfig, TierConfig, UseTier,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tower::{Layer, ServiceBuilder, ServiceExt};

fn store(min_samples: u64) -> LatencyStore {
    LatencyStore::builder()
        .min_samples(min_samples)
        .build()
        .unwrap()
}

fn tier(name: &str, models: &[&str], ttft_ms: u64) -> TierConfig {
    TierConfig {
        name: name.into(),
        models: models
            .iter()
            .map(|m| CandidateConfig::Model((*m).into()))
            .collect(),
        sla: SlaConfig {
            ttft_ms,
            ttft_quantile: 0.95,
            min_success_rate: 0.9,
        },
        fallback_models: false,
        objective: Default::default(),
    }
}

fn no_order() -> LearnedOrderConfig {
    LearnedOrderConfig {
        enabled: false,
        ..Default::default()
    }
}

fn feed(store: &LatencyStore, model: &str, provider: Option<&str>, ms: u64, n: usize) {
    for _ in 0..n {
        store.record(
            (model, provider),
            Some(Duration::from_millis(ms)),
            None,
            Outcome::Ok,
        );
    }
}

fn req(model: &str) -> ChatRequest {
    ChatRequest::new(model, vec![Message::user("hi")])
}

fn route(router: &RouterLayer, model: &str) -> (String, RouteReason) {
    let mut r = req(model);
    let route = router.route(&mut r).unwrap();
    assert_eq!(route.model, r.model());
    (route.model, route.reason)
}

#[tokio::test(start_paused = true)]
async fn picks_the_first_candidate_meeting_the_sla_downgrades_and_recovers() {
    let s = store(5);
    let router = RouterLayer::builder(s.clone())
        .tier(tier("fast", &["a", "b"], 1000))
        .explore(0.0)
        .cooldown(Duration::from_secs(60))
        .learned_order(no_order())
        .build()
        .unwrap();
    // Cold: nothing measured, the first candidate.
    assert_eq!(
        route(&router, "tier:fast"),
        ("a".into(), RouteReason::Unmeasured)
    );
    feed(&s, "a", None, 200, 10);
    feed(&s, "b", None, 300, 10);
    tokio::time::advance(Duration::from_millis(300)).await;
    assert_eq!(route(&router, "tier:fast"), ("a".into(), RouteReason::Sla));

    // a's p95 breaks 1 s: b.
    feed(&s, "a", None, 3000, 10);
    tokio::time::advance(Duration::from_millis(300)).await;
    assert_eq!(route(&router, "tier:fast"), ("b".into(), RouteReason::Sla));

    // a recovers (fresh fast samples) but is in its cool-down: still b.
    tokio::time::advance(Duration::from_secs(30)).await;
    feed(&s, "a", None, 200, 60);
    feed(&s, "b", None, 300, 10);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(route(&router, "tier:fast"), ("b".into(), RouteReason::Sla));

    // The cool-down is over and the window has dropped the slow samples: back to a.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(route(&router, "tier:fast"), ("a".into(), RouteReason::Sla));
}

#[tokio::test(start_paused = true)]
async fn no_flapping_around_the_threshold() {
    let s = store(5);
    let router = RouterLayer::builder(s.clone())
        .tier(tier("fast", &["a", "b"], 1000))
        .explore(0.05)
        .learned_order(no_order())
        .build()
        .unwrap();
    // For 10 minutes a's p95 swings around the bound every 10 s: 1050 ms, then 980 ms.
    let mut chosen = Vec::new();
    for sec in 0..600u64 {
        let a_ms = if (sec / 10) % 2 == 0 { 1050 } else { 980 };
        feed(&s, "a", None, a_ms, 5);
        feed(&s, "b", None, 400, 5);
        let (m, reason) = route(&router, "tier:fast");
        if reason != RouteReason::Explore {
            chosen.push(m);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let switches = chosen.windows(2).filter(|w| w[0] != w[1]).count();
    // Without hysteresis this would switch 60 times; a breaks once and never measures
    // under the recovery bound (900 ms) again.
    assert!(switches <= 1, "{switches} switches");
    assert_eq!(chosen.last().unwrap(), "b");
}

#[tokio::test(start_paused = true)]
async fn exploration_share_stays_within_its_bound() {
    let s = store(20);
    let router = RouterLayer::builder(s.clone())
        .tier(tier("fast", &["a", "b", "c"], 1000))
        .explore(0.05)
        .learned_order(no_order())
        .build()
        .unwrap();
    feed(&s, "a", None, 200, 50);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..10_000 {
        let (m, reason) = route(&router, "tier:fast");
        *counts.entry((m, reason)).or_insert(0u32) += 1;
    }
    let explored: u32 = counts
        .iter()
        .filter(|((_, r), _)| *r == RouteReason::Explore)
        .map(|(_, n)| n)
        .sum();
    assert!(explored <= 500, "{explored} explorations over 10,000 calls");
    assert!(explored >= 499, "{explored}");
    // Both unmeasured candidates get their turn; the rest goes to a.
    assert_eq!(counts[&("b".into(), RouteReason::Explore)], 250);
    assert_eq!(counts[&("c".into(), RouteReason::Explore)], 250);
    assert_eq!(counts[&("a".into(), RouteReason::Sla)], 10_000 - explored);
}

#[tokio::test(start_paused = true)]
async fn none_meeting_the_sla_takes_the_best_measured() {
    let s = store(5);
    let router = RouterLayer::builder(s.clone())
        .tier(tier("fast", &["a", "b", "c"], 100))
        .explore(0.0)
        .learned_order(no_order())
        .build()
        .unwrap();
    feed(&s, "a", None, 900, 10);
    feed(&s, "b", None, 400, 10);
    feed(&s, "c", None, 700, 10);
    assert_eq!(
        route(&router, "tier:fast"),
        ("b".into(), RouteReason::BestMeasured)
    );
    // A failing candidate breaks the SLA on its success rate.
    for _ in 0..10 {
        s.record(("b", None), None, None, Outcome::Error);
    }
    let s2 = store(5);
    let r2 = RouterLayer::builder(s2.clone())
        .tier(tier("fast", &["a", "b"], 1000))
        .explore(0.0)
        .learned_order(no_order())
        .build()
        .unwrap();
    feed(&s2, "a", None, 200, 5);
    for _ in 0..5 {
        s2.record(("a", None), None, None, Outcome::Error);
    }
    feed(&s2, "b", None, 600, 10);
    assert_eq!(route(&r2, "tier:fast"), ("b".into(), RouteReason::Sla));
}

#[tokio::test(start_paused = true)]
async fn a_concrete_model_passes_untouched_and_an_unknown_tier_is_a_bad_request() {
    let s = store(5);
    let router = RouterLayer::builder(s.clone())
        .tier(tier("fast", &["a"], 1000))
        .tier(tier("quality", &["q"], 5000))
        .build()
        .unwrap();
    let mock = MockChat::with_default(Script::tokens(Duration::from_millis(10), 1, Duration::ZERO));
    let svc = ServiceBuilder::new().layer(router).service(mock.clone());

    let stream = svc.clone().oneshot(req("openai/gpt-4o")).await.unwrap();
    let route = stream.meta().extensions.get::<Route>().cloned().unwrap();
    assert_eq!(route.reason, RouteReason::Concrete);
    assert_eq!(route.order, OrderDecision::Unchanged);
    assert_eq!(route.tier, None);
    let sent = &mock.requests()[0];
    assert_eq!(sent.body(), req("openai/gpt-4o").body());

    let e = svc.oneshot(req("tier:nope")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    assert!(e.to_string().contains("unknown tier `nope`"), "{e}");
    assert!(e.to_string().contains("fast, quality"), "{e}");
    assert_eq!(mock.calls(), 1);

    let bare = RouterLayer::builder(store(5)).build().unwrap();
    let e = bare.route(&mut req("tier:fast")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadRequest);
    assert!(e.to_string().contains("no tiers are configured"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn tier_sets_model_provider_fallbacks_and_alternatives() {
    let s = store(5);
    let mut t = tier("fast", &["a", "b"], 1000);
    t.models[0] = CandidateConfig::WithProvider {
        model: "a".into(),
        provider: Box::new(ProviderPreferences {
            only: Some(vec!["groq".into()]),
            ..Default::default()
        }),
    };
    t.fallback_models = true;
    let router = RouterLayer::builder(s).tier(t).build().unwrap();
    let mock = MockChat::with_default(Script::tokens(Duration::from_millis(10), 1, Duration::ZERO));
    let svc = ServiceBuilder::new().layer(router).service(mock.clone());
    let mut r = req("whatever");
    r.extensions_mut().insert(UseTier("fast".into()));
    svc.oneshot(r).await.unwrap();
    let sent = &mock.requests()[0];
    assert_eq!(sent.model(), "a");
    let p = sent.body().provider.as_ref().unwrap();
    assert_eq!(p.only.as_deref(), Some(&["groq".to_string()][..]));
    assert_eq!(
        sent.body().models.as_deref(),
        Some(&["a".to_string(), "b".to_string()][..])
    );
    let alt = sent.extensions().get::<Alternatives>().unwrap();
    assert_eq!(&*alt.0, &["b".to_string()][..]);
}

fn order_router(s: &LatencyStore, explore: f64) -> RouterLayer {
    RouterLayer::builder(s.clone())
        .learned_order(LearnedOrderConfig {
            explore,
            ..Default::default()
        })
        .build()
        .unwrap()
}

fn routed_order(router: &RouterLayer, r: &mut ChatRequest) -> (Option<Vec<String>>, OrderDecision) {
    let route = router.route(r).unwrap();
    (
        r.body().provider.as_ref().and_then(|p| p.order.clone()),
        route.order,
    )
}

fn strings(xs: &[&str]) -> Option<Vec<String>> {
    Some(xs.iter().map(|s| s.to_string()).collect())
}

#[tokio::test(start_paused = true)]
async fn learned_order_puts_the_fastest_first_and_flips_when_it_slows() {
    let s = store(5);
    let router = order_router(&s, 0.0);
    feed(&s, "m", Some("Alpha"), 100, 10);
    feed(&s, "m", Some("Beta"), 200, 10);
    feed(&s, "m", Some("Google Vertex"), 300, 10);
    let (order, d) = routed_order(&router, &mut req("m"));
    assert_eq!(d, OrderDecision::Learned);
    assert_eq!(order, strings(&["alpha", "beta", "google-vertex"]));

    // Alpha slows past Beta: the order flips as soon as the cached order is refreshed.
    tokio::time::advance(Duration::from_secs(1)).await;
    feed(&s, "m", Some("Alpha"), 900, 30);
    tokio::time::advance(Duration::from_millis(300)).await;
    let (order, _) = routed_order(&router, &mut req("m"));
    assert_eq!(order, strings(&["beta", "google-vertex", "alpha"]));

    // A provider failing too often is left out.
    for _ in 0..20 {
        s.record(("m", Some("Beta")), None, None, Outcome::Error);
    }
    tokio::time::advance(Duration::from_millis(300)).await;
    let (order, _) = routed_order(&router, &mut req("m"));
    assert_eq!(order, strings(&["google-vertex", "alpha"]));
    // The caller's allow_fallbacks is kept.
    let mut r = req("m");
    r.body_mut().provider_mut().allow_fallbacks = Some(false);
    let (order, _) = routed_order(&router, &mut r);
    assert_eq!(order, strings(&["google-vertex", "alpha"]));
    assert_eq!(
        r.body().provider.as_ref().unwrap().allow_fallbacks,
        Some(false)
    );
}

/// Who leads over `n` routed calls: slug -> count.
fn leaders(router: &RouterLayer, n: usize) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for _ in 0..n {
        if let (Some(order), _) = routed_order(router, &mut req("m")) {
            *m.entry(order[0].clone()).or_default() += 1;
        }
    }
    m
}

#[tokio::test(start_paused = true)]
async fn near_equals_share_the_calls_and_a_clearly_faster_one_takes_them() {
    let s = store(5);
    let router = order_router(&s, 0.0);
    // Beta measures a little faster than Alpha (within 10 %): equals, calls spread.
    feed(&s, "m", Some("Alpha"), 100, 10);
    feed(&s, "m", Some("Beta"), 95, 10);
    let lead = leaders(&router, 1_000);
    assert!(lead["alpha"] > 100 && lead["beta"] > 100, "{lead:?}");
    // Clearly faster: Beta leads every call.
    tokio::time::advance(Duration::from_secs(61)).await;
    feed(&s, "m", Some("Alpha"), 100, 10);
    feed(&s, "m", Some("Beta"), 60, 10);
    let lead = leaders(&router, 1_000);
    assert_eq!(lead.get("beta"), Some(&1_000), "{lead:?}");
}

#[tokio::test(start_paused = true)]
async fn learned_order_never_overwrites_the_callers_routing() {
    let s = store(5);
    let router = order_router(&s, 0.0);
    feed(&s, "m", Some("Alpha"), 100, 10);
    feed(&s, "m", Some("Beta"), 200, 10);
    feed(&s, "m", Some("Gamma"), 300, 10);

    let mut r = req("m");
    r.body_mut().provider_mut().order = strings(&["gamma"]);
    assert_eq!(
        routed_order(&router, &mut r),
        (strings(&["gamma"]), OrderDecision::Caller)
    );

    let mut r = req("m");
    r.body_mut().provider_mut().sort = Some(ProviderSort::Simple("price".into()));
    assert_eq!(routed_order(&router, &mut r), (None, OrderDecision::Caller));

    // `only` and `ignore` filter the learned order and stay as they were.
    let mut r = req("m");
    r.body_mut().provider_mut().only = strings(&["beta", "gamma"]);
    assert_eq!(routed_order(&router, &mut r).0, strings(&["beta", "gamma"]));
    assert_eq!(
        r.body().provider.as_ref().unwrap().only,
        strings(&["beta", "gamma"])
    );
    let mut r = req("m");
    r.body_mut().provider_mut().add_ignore("beta");
    assert_eq!(
        routed_order(&router, &mut r).0,
        strings(&["alpha", "gamma"])
    );
}

/// Samples spread around `ms` (×0.6 to ×1.6), as real first tokens are.
fn feed_spread(store: &LatencyStore, provider: &str, ms: u64, n: usize) {
    for i in 0..n {
        let f = [0.6, 0.8, 1.0, 1.25, 1.6][i % 5];
        store.record(
            ("m", Some(provider)),
            Some(Duration::from_millis(ms).mul_f64(f)),
            None,
            Outcome::Ok,
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_provider_is_explored_as_its_uncertainty_allows_and_raced_against_the_best() {
    let s = store(5);
    let router = order_router(&s, 0.05);
    feed_spread(&s, "Alpha", 100, 50);
    feed_spread(&s, "Beta", 300, 50);
    // Gamma: three samples, slower than Alpha by what they say: uncertain.
    feed_spread(&s, "Gamma", 250, 3);
    let best_p75 = s.stats("m", Some("Alpha")).unwrap().ttft_quantile(0.75);
    let (mut left_alone, mut learned, mut gamma, mut beta) = (0, 0, 0, 0);
    for _ in 0..10_000 {
        let mut r = req("m");
        let (order, d) = routed_order(&router, &mut r);
        let plan = r.extensions().get::<ProviderPlan>().cloned().unwrap();
        match (d, order) {
            (OrderDecision::Explore, None) => {
                // Left to the upstream, raced against the best known after its p75.
                assert_eq!(plan.first, None);
                assert_eq!(plan.race_after, Some(best_p75));
                left_alone += 1;
            }
            (OrderDecision::Learned, Some(order)) => {
                assert_eq!(order, strings(&["alpha", "gamma", "beta"]).unwrap());
                assert_eq!(plan.first.as_deref(), Some("Alpha"));
                assert!(!plan.is_exploring());
                learned += 1;
            }
            (OrderDecision::Explore, Some(order)) => {
                assert_eq!(plan.race_after, Some(best_p75), "{order:?}");
                assert_eq!(plan.hedge_order.as_deref().unwrap()[0], "alpha");
                match order[0].as_str() {
                    "gamma" => gamma += 1,
                    "beta" => beta += 1,
                    other => panic!("{other}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }
    // The upstream's share is exact; Gamma (uncertain) is explored, Beta (known slow)
    // almost never.
    assert_eq!(left_alone, 500);
    assert!(gamma > 100 && gamma < 3_000, "gamma {gamma}");
    assert!(beta < 20, "beta {beta}");
    assert_eq!(learned + gamma + beta, 9_500);
    // Measured as slower, Gamma is explored far less.
    feed_spread(&s, "Gamma", 250, 50);
    tokio::time::advance(Duration::from_millis(300)).await;
    let lead = leaders(&router, 10_000);
    assert!(
        lead.get("gamma").copied().unwrap_or(0) < gamma / 4,
        "{lead:?} vs {gamma}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_published_prior_ranks_providers_before_any_call_and_samples_replace_it() {
    let s = store(5);
    let router = order_router(&s, 0.0);
    let prior =
        |ms: u64| Prior::lognormal(Duration::from_millis(ms), Duration::from_millis(ms * 4));
    // Published: Sloth is the fastest (wrong), Alpha slower.
    s.set_prior("m", "Sloth", Some(prior(100)));
    s.set_prior("m", "Alpha", Some(prior(800)));
    assert_eq!(leaders(&router, 100).get("sloth"), Some(&100));
    // Our own calls say otherwise: a dozen samples each outweigh the prior (worth 5).
    feed_spread(&s, "Sloth", 2_000, 12);
    feed_spread(&s, "Alpha", 200, 12);
    tokio::time::advance(Duration::from_millis(300)).await;
    let lead = leaders(&router, 1_000);
    assert!(lead.get("alpha").copied().unwrap_or(0) > 990, "{lead:?}");
    let ranks = router.rankings("m");
    assert_eq!(ranks[0].provider, "Alpha");
    assert_eq!(ranks[0].samples, 12);
    // Both priors were off by ×4 and more: they lost most of their weight (a hypothesis
    // that failed its test), everywhere in this store, and were in the right unit.
    let (scale, trust) = s.prior_calibration();
    assert_eq!(scale, 1.0);
    assert!(trust < 0.2, "{trust}");
    assert!(ranks[0].prior_weight < 1.0, "{:?}", ranks[0]);
}

#[tokio::test(start_paused = true)]
async fn priors_in_milliseconds_are_read_as_such_once_measured() {
    let s = store(5);
    let router = order_router(&s, 0.0);
    // Published as milliseconds, read as seconds: 1000× too slow, the order still right.
    let prior = |ms: u64| Prior::lognormal(Duration::from_secs(ms), Duration::from_secs(ms * 4));
    s.set_prior("m", "Alpha", Some(prior(100)));
    s.set_prior("m", "Beta", Some(prior(300)));
    s.set_prior("m", "Gamma", Some(prior(200)));
    feed_spread(&s, "Alpha", 100, 12);
    feed_spread(&s, "Beta", 300, 12);
    tokio::time::advance(Duration::from_millis(300)).await;
    let _ = router.rankings("m");
    let (scale, trust) = s.prior_calibration();
    assert!((scale - 0.001).abs() < 1e-9, "{scale}");
    assert!(trust > 0.8, "{trust}");
    // Gamma, never measured, is read at 200 ms and keeps its weight: second, not last.
    let _ = leaders(&router, 10);
    tokio::time::advance(Duration::from_millis(300)).await;
    let ranks = router.rankings("m");
    let names: Vec<&str> = ranks.iter().map(|r| r.provider.as_str()).collect();
    assert_eq!(names, ["Alpha", "Gamma", "Beta"], "{ranks:?}");
}

/// With many calls in flight and nothing measured, the published favourite gets at most
/// four first attempts at once, then the others theirs, then the calls spread evenly.
#[tokio::test(start_paused = true)]
async fn an_untested_favourite_gets_a_few_calls_at_once_not_all() {
    let s = store(5);
    let router = order_router(&s, 0.0);
    let prior =
        |ms: u64| Prior::lognormal(Duration::from_millis(ms), Duration::from_millis(ms * 4));
    s.set_prior("m", "Sloth", Some(prior(100)));
    s.set_prior("m", "Alpha", Some(prior(800)));
    let mock = MockChat::with_default(Script::tokens(Duration::from_secs(1), 1, Duration::ZERO));
    let svc = router.layer(mock.clone());
    let calls: Vec<_> = (0..16)
        .map(|_| tokio::spawn(svc.clone().oneshot(req("m"))))
        .collect();
    tokio::task::yield_now().await;
    let first =
        |r: &ChatRequest| r.body().provider.as_ref().unwrap().order.clone().unwrap()[0].clone();
    let to_sloth = mock
        .requests()
        .iter()
        .filter(|r| first(r) == "sloth")
        .count();
    assert_eq!(mock.requests().len(), 16);
    assert_eq!(
        to_sloth, 8,
        "trials spread evenly, not all on the favourite"
    );
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // Done: its trial slots are free again.
    let mock2 = MockChat::with_default(Script::tokens(Duration::from_secs(1), 1, Duration::ZERO));
    let svc = router.layer(mock2.clone());
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(req("m"))))
        .collect();
    tokio::task::yield_now().await;
    assert!(mock2.requests().iter().all(|r| first(r) == "sloth"));
    for c in calls {
        c.await.unwrap().unwrap();
    }
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let s = store(5);
    let build = |f: &dyn Fn(&mut RouterConfig)| {
        let mut c = RouterConfig {
            tiers: vec![tier("fast", &["a", "b"], 1000)],
            ..Default::default()
        };
        f(&mut c);
        RouterLayer::from_config(c, s.clone())
    };
    assert!(build(&|_| {}).is_ok());
    type Edit = Box<dyn Fn(&mut RouterConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("no models", Box::new(|c| c.tiers[0].models.clear())),
        ("quantile", Box::new(|c| c.tiers[0].sla.ttft_quantile = 1.5)),
        (
            "quantile 0",
            Box::new(|c| c.tiers[0].sla.ttft_quantile = 0.0),
        ),
        ("ttft 0", Box::new(|c| c.tiers[0].sla.ttft_ms = 0)),
        (
            "success",
            Box::new(|c| c.tiers[0].sla.min_success_rate = -0.1),
        ),
        ("dup tier", Box::new(|c| c.tiers.push(c.tiers[0].clone()))),
        (
            "dup model",
            Box::new(|c| c.tiers[0].models.push(CandidateConfig::Model("a".into()))),
        ),
        ("name", Box::new(|c| c.tiers[0].name = "a b".into())),
        ("explore", Box::new(|c| c.explore = 0.9)),
        ("cooldown", Box::new(|c| c.cooldown_secs = 0.0)),
        ("recover", Box::new(|c| c.recover_ratio = 1.5)),
        (
            "order quantile",
            Box::new(|c| c.learned_order.quantile = f64::NAN),
        ),
        ("order explore", Box::new(|c| c.learned_order.explore = 0.7)),
    ];
    for (what, f) in cases {
        let e = build(&*f).unwrap_err();
        assert!(!e.message().is_empty(), "{what}");
    }
    // Unknown model ids, when the catalog is known.
    let e = RouterLayer::builder(s.clone())
        .tier(tier("fast", &["a", "nope"], 1000))
        .catalog(["a", "b"])
        .build()
        .unwrap_err();
    assert!(!e.message().is_empty());
    assert!(e.to_string().contains("unknown model `nope`"), "{e}");
    // Unknown fields in the file are refused, not ignored.
    let bad = serde_json::from_str::<RouterConfig>(r#"{"tiers": [], "explor": 0.1}"#);
    assert!(bad.is_err());
}

/// An upstream whose TTFT is drawn per model: the fat-tail mixture for the big model (one
/// provider in ten is slow), a quick lognormal for the small one.
fn fat_tail_upstream(
    seed: u64,
) -> impl tower::Service<ChatRequest, Response = ChatStream, Error = LlmError, Future: Send> + Clone
{
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
    // The mock's `fat_tail` preset: three fast providers and one slow one (weight 0.1).
    let preset = llm_layers_mock::Scenario::fat_tail();
    let (fast, slow) = (
        preset.providers[0].ttft.clone(),
        preset.providers[3].ttft.clone(),
    );
    let small = Dist::Lognormal {
        p50_ms: 400.0,
        p99_ms: 1_500.0,
        cap_ms: 10_000.0,
    };
    tower::service_fn(move |r: ChatRequest| {
        let ms = {
            let mut rng = lock(&rng);
            if r.model() == "big/model" {
                use rand::Rng;
                if rng.random_bool(0.1) {
                    slow.sample_ms(&mut *rng)
                } else {
                    fast.sample_ms(&mut *rng)
                }
            } else {
                small.sample_ms(&mut *rng)
            }
        };
        async move {
            tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
            let chunk: llm_layers_core::ChatChunk = serde_json::from_value(serde_json::json!({
                "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]
            }))
            .unwrap();
            Ok::<_, LlmError>(ChatStream::from_chunks(vec![chunk]))
        }
    })
}

fn p95(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[(xs.len() as f64 * 0.95) as usize]
}

/// 2,000 calls, 20 in flight, on paused time: TTFTs in ms.
async fn drive<S>(svc: S, model: &str) -> Vec<f64>
where
    S: tower::Service<ChatRequest, Response = ChatStream, Error = LlmError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut set = tokio::task::JoinSet::new();
    for w in 0..20 {
        let (svc, model) = (svc.clone(), model.to_string());
        set.spawn(async move {
            let mut out = Vec::new();
            for _ in (w..2000).step_by(20) {
                let start = tokio::time::Instant::now();
                let s = svc.clone().oneshot(req(&model)).await.unwrap();
                out.push((tokio::time::Instant::now() - start).as_secs_f64() * 1000.0);
                s.collect().await.unwrap();
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

#[tokio::test(start_paused = true)]
async fn on_a_fat_tail_the_tier_meets_its_sla_and_the_plain_slow_model_does_not() {
    let sla_ms = 2_000;
    let s = store(20);
    let router = RouterLayer::builder(s.clone())
        .tier(tier("fast", &["big/model", "small/model"], sla_ms))
        .build()
        .unwrap();
    let routed = ServiceBuilder::new()
        .layer(router)
        .layer(LatencyLayer::builder().store(s.clone()).build().unwrap())
        .service(fat_tail_upstream(7));
    let mut tier_ttfts = drive(routed, "tier:fast").await;
    let mut plain_ttfts = drive(fat_tail_upstream(7), "big/model").await;
    let (tier_p95, plain_p95) = (p95(&mut tier_ttfts), p95(&mut plain_ttfts));
    eprintln!("TTFT p95: routed {tier_p95:.0} ms, plain slow model {plain_p95:.0} ms");
    assert!(tier_p95 <= sla_ms as f64, "routed p95 {tier_p95:.0} ms");
    assert!(
        plain_p95 > 2.0 * sla_ms as f64,
        "plain p95 {plain_p95:.0} ms"
    );
}
