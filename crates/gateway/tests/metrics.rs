//! `/metrics`: the GenAI histograms and the Grafana dashboard's queries.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_renders_the_genai_histograms() {
    // The one test of this binary that installs the process-wide recorder.
    let handle = llm_layers_gateway::install_metrics().unwrap();
    let _ = HANDLE.set(handle.clone());
    let mut cfg = config();
    cfg.mock_preset = "healthy".into();
    let gw = start(cfg, Some(handle)).await.unwrap();
    let c = client();
    let m = json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true});
    post(&c, &gw, m.to_string())
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/metrics", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for needle in [
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket{",
        "gen_ai_client_operation_duration_seconds_bucket{",
        "le=\"20.48\"",
        "gen_ai_request_model=\"openai/gpt-4o-mini\"",
        "llm_scope=\"attempt\"",
        "llm_scope=\"call\"",
        "openrouter_provider=\"",
        "llm_client_calls_total{",
        // What the call cost, by model, provider and key tenant (none here).
        "llm_cost_usd_total{",
        "tenant=\"\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains("sk-or-v1"), "no key in metrics");
    gw.shutdown().await.unwrap();
    grafana_queries_name_only_exported_metrics(handle_again()).await;
}

/// The process-wide recorder's handle (installed by the test above).
fn handle_again() -> metrics_exporter_prometheus::PrometheusHandle {
    HANDLE.get().cloned().expect("installed")
}

static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Every metric the Grafana dashboard queries is in a `/metrics` scrape of a gateway that saw
/// a dead provider, a hung one and a throttled one (so breakers, hedges and holds all fire).
async fn grafana_queries_name_only_exported_metrics(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) {
    let mut s = Scenario::healthy();
    s.providers[0].ttft = Dist::Fixed { ms: 1.0 };
    s.providers[1].name = "Down".into();
    s.providers[1].slug = "down".into();
    s.providers[1].faults.status.push(StatusFault {
        code: 502,
        rate: 1.0,
        retry_after_s: None,
    });
    s.providers[2].name = "Busy".into();
    s.providers[2].slug = "busy".into();
    s.providers[2].faults.status.push(StatusFault {
        code: 429,
        rate: 1.0,
        retry_after_s: Some(1),
    });
    let mut stuck = s.providers[0].clone();
    stuck.name = "Stuck".into();
    stuck.slug = "stuck".into();
    stuck.faults.hang_after_headers = 1.0;
    s.providers.push(stuck);
    let mock = MockServer::start(s).await.unwrap();
    let cfg = Config {
        api_key: Some("sk-or-v1-test".into()),
        base_url: mock.base_url().to_owned(),
        first_token_timeout: Some(Duration::from_secs(5)),
        ..config()
    };
    let gw = start(cfg, Some(handle)).await.unwrap();
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..48 {
        let (c, addr) = (c.clone(), gw.addr());
        set.spawn(async move {
            let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": format!("g{i}")}], "max_tokens": 1});
            let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(m.to_string())))
                .unwrap();
            json_of(c.request(req).await.unwrap()).await.0
        });
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), 200);
    }
    // Calls that name the dead provider first, one after another: its breaker opens.
    for i in 0..8 {
        let m = json!({"model": "mock/echo", "messages": [{"role": "user", "content": format!("d{i}")}],
            "max_tokens": 1, "provider": {"order": ["down"]}});
        assert_eq!(json_of(post(&c, &gw, m.to_string()).await).await.0, 200);
    }
    let r = c
        .request(
            hyper::Request::get(format!("http://{}/metrics", gw.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let dashboard: Value =
        serde_json::from_str(include_str!("../grafana/llm-layers.json")).unwrap();
    let mut queries = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", Value::String(q)) => out.push(q.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut queries);
    // Labels: what a `by (...)` groups on, what a matcher compares, label_values' second
    // argument. Every other `gen_ai_*` / `llm_*` word of a query is a metric name.
    let mut labels = std::collections::BTreeSet::new();
    for q in &queries {
        for group in q
            .split("by (")
            .skip(1)
            .chain(q.split("label_values(").skip(1))
        {
            let list = group.split(')').next().unwrap_or("");
            let skip = usize::from(q.contains("label_values(") && group.contains(','));
            for l in list.split(',').skip(skip) {
                labels.insert(l.trim().to_owned());
            }
        }
        for part in q.split(['{', ',']) {
            if let Some((l, _)) = part.split_once(['=', '!']) {
                labels.insert(l.trim().to_owned());
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for q in &queries {
        for token in q.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')) {
            if (token.starts_with("gen_ai_") || token.starts_with("llm_"))
                && !labels.contains(token)
            {
                names.insert(token.to_owned());
            }
        }
    }
    assert!(names.len() >= 9, "{names:?}");
    for name in &names {
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "the dashboard queries {name}, which /metrics does not export:\n{text}"
        );
    }
    gw.shutdown().await.unwrap();
}
