//! Following one call: the timing headers on every answer and the access log's line per call.

mod common;
use common::*;

/// One provider, `Solo`, whose first token comes after `ttft_ms`.
fn one_provider(ttft_ms: f64) -> Scenario {
    let mut s = Scenario::healthy();
    s.providers.truncate(1);
    s.providers[0].name = "Solo".into();
    s.providers[0].ttft = Dist::Fixed { ms: ttft_ms };
    s.providers[0].gap = Dist::Fixed { ms: 1.0 };
    s
}

/// `server-timing`'s entries as (name, milliseconds).
fn timing(r: &hyper::Response<Incoming>) -> Vec<(String, f64)> {
    let v = r.headers()["server-timing"].to_str().unwrap();
    v.split(", ")
        .map(|e| {
            let (name, dur) = e.split_once(";dur=").unwrap();
            (name.to_owned(), dur.parse().unwrap())
        })
        .collect()
}

fn call(stream: bool, content: &str) -> String {
    json!({"model": "openai/gpt-4o-mini", "stream": stream, "max_tokens": 3,
           "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": content}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_where_its_time_went_and_who_served_it() {
    let (gw, _mock) = gateway_on(one_provider(60.0), config()).await;
    let c = client();
    for stream in [true, false] {
        let r = post(&c, &gw, call(stream, "hello")).await;
        assert_eq!(r.status(), 200);
        let t = timing(&r);
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["gateway", "wait", "upstream"], "stream {stream}");
        // The upstream's 60 ms is the upstream's, not the gateway's.
        assert!(t[2].1 >= 60.0, "upstream {:?}", t);
        assert!(
            t[0].1 < t[2].1,
            "gateway's own time under the upstream's: {t:?}"
        );
        assert_eq!(r.headers()["x-llm-provider"], "Solo");
        assert_eq!(r.headers()["x-llm-attempts"], "1");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        if stream {
            // What only the end knows rides on the usage chunk.
            let evs = events(&body);
            let usage: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
            assert!(usage["usage"].is_object(), "{usage}");
            let ours = &usage["llm_layers"];
            assert_eq!(
                (&ours["attempts"], &ours["continuations"]),
                (&json!(1), &json!(0))
            );
        }
    }
    // A refusal carries the gateway's time, and no provider.
    let r = post(&c, &gw, "{not json").await;
    assert_eq!(r.status(), 400);
    assert_eq!(timing(&r).len(), 3);
    assert!(r.headers().get("x-llm-provider").is_none());
    gw.shutdown().await.unwrap();
}

/// The access log's lines once it holds `n`.
async fn lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the access log never held {n} lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_call_and_no_prompt_or_key() {
    let dir = std::env::temp_dir().join(format!("llm-gw-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let cfg = Config {
        log_format: llm_layers_gateway::LogFormat::Json,
        access_log: Some(path.clone()),
        ..config()
    };
    let (gw, _mock) = gateway_on(one_provider(5.0), cfg).await;
    let c = client();
    let secret_prompt = "my-private-prompt-text";
    // A stream, a whole answer, a refusal, and a stream its caller leaves at its head.
    post(&c, &gw, call(true, secret_prompt))
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    post(&c, &gw, call(false, secret_prompt))
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    let bad = json!({"model": "x".repeat(5000), "messages": [{"role": "user", "content": secret_prompt}]});
    post(&c, &gw, bad.to_string())
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    let left = {
        let mut s = one_provider(5.0);
        s.providers[0].gap = Dist::Fixed { ms: 60_000.0 };
        s
    };
    let (gw2, _mock2) = gateway_on(
        left,
        Config {
            log_format: llm_layers_gateway::LogFormat::Json,
            access_log: Some(path.clone()),
            idle_timeout: None,
            ..config()
        },
    )
    .await;
    let r = post(&c, &gw2, call(true, secret_prompt)).await;
    let mut body = r.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);

    let got = lines(&path, 4).await;
    let by_outcome = |o: &str| got.iter().find(|l| l["outcome"] == o).cloned();
    let ok: Vec<&Value> = got.iter().filter(|l| l["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 2, "{got:?}");
    for l in &ok {
        assert_eq!(l["status"], 200);
        assert_eq!(l["model"], "openai/gpt-4o-mini");
        assert_eq!(l["provider"], "Solo");
        assert_eq!(l["attempts"], 1);
        assert_eq!(l["completion_tokens"], 3, "{l}");
        assert!(l["ttft_ms"].as_f64().unwrap() >= 5.0);
        assert!(l["duration_ms"].as_f64().unwrap() >= l["ttft_ms"].as_f64().unwrap());
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(
        ok.iter()
            .map(|l| l["stream"].as_bool().unwrap())
            .filter(|s| *s)
            .count(),
        1
    );
    let refused = got
        .iter()
        .find(|l| l["status"] == 400)
        .expect("the refusal");
    assert_eq!(refused["attempts"], 0);
    let closed = by_outcome("client_closed").expect("the stream its caller left");
    assert_eq!(closed["status"], 200);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(secret_prompt), "no prompt in the log");
    assert!(!text.contains("sk-anything"), "no key in the log");
    assert!(
        !text.contains(&"x".repeat(100)),
        "no unbounded field in the log"
    );
    gw.shutdown().await.unwrap();
    gw2.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every answer says what it cost: the upstream's `usage.cost` when it reports one, else its
/// usage at the catalog's price (an estimate, said to be one); a whole answer in headers, a
/// stream in its usage chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_what_it_cost() {
    for report in [true, false] {
        let mut s = one_provider(1.0);
        s.models.push("openai/gpt-4o-mini".into());
        s.report_cost = report;
        let (gw, _mock) = gateway_on(s, config()).await;
        let c = client();
        let want_source = if report { "reported" } else { "estimated" };
        // The catalog is read in the background at start: an estimate needs its prices.
        let mut tries = 0;
        let (r, body) = loop {
            let r = post(&c, &gw, call(false, "what does it cost")).await;
            let source = r.headers().get("x-llm-cost-source").cloned();
            let cost = r.headers().get("x-llm-cost-usd").cloned();
            let body: Value =
                serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
            if source.as_ref().is_some_and(|s| s == want_source) || tries == 100 {
                break ((source, cost), body);
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let usage: llm_layers_core::Usage = serde_json::from_value(body["usage"].clone()).unwrap();
        let want = format!("{:.9}", llm_layers_mock::PRICE.cost(&usage));
        assert_eq!(r.0.as_ref().map(|v| v.to_str().unwrap()), Some(want_source));
        assert_eq!(
            r.1.as_ref().map(|v| v.to_str().unwrap()),
            Some(want.as_str())
        );
        assert_eq!(
            body["usage"].get("cost").is_some(),
            report,
            "usage as the upstream sent it"
        );
        // A stream: in its usage chunk.
        let r = post(&c, &gw, call(true, "and streamed")).await;
        let evs = events(&r.into_body().collect().await.unwrap().to_bytes());
        let chunk: Value = serde_json::from_str(&evs[evs.len() - 2]).unwrap();
        let usage: llm_layers_core::Usage = serde_json::from_value(chunk["usage"].clone()).unwrap();
        let ours = &chunk["llm_layers"];
        assert_eq!(ours["cost_source"], want_source);
        let got = ours["cost_usd"].as_f64().unwrap();
        assert!(
            (got - llm_layers_mock::PRICE.cost(&usage)).abs() < 1e-9,
            "{chunk}"
        );
        gw.shutdown().await.unwrap();
    }
}
