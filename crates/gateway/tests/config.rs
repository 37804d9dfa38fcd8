//! Flags, environment and the config file.

mod common;
use common::*;

#[test]
fn flags_win_over_the_environment_and_bad_values_are_refused() {
    let env = |k: &str| match k {
        "UPSTREAM_H2C" => Some("on".to_owned()),
        "LEARNED_ORDER" => Some("off".to_owned()),
        "MAX_RETRIES" => Some("5".to_owned()),
        _ => None,
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let c = Config::from_args_env(args(&[]), env).unwrap();
    assert!(c.upstream_h2c);
    assert!(!c.router.learned_order.enabled);
    assert_eq!(c.max_retries, 5);
    let c =
        Config::from_args_env(args(&["--upstream-h2c", "off", "--max-retries=1"]), env).unwrap();
    assert!(!c.upstream_h2c);
    assert_eq!(c.max_retries, 1);
    let e = Config::from_args_env(args(&["--upstream-h2c", "maybe"]), |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--upstream-h2c") && e.contains("on or off"),
        "{e}"
    );
    assert!(
        !Config::default().upstream_h2c,
        "HTTP/1.1 or ALPN by default"
    );
}

#[test]
fn the_configuration_never_shows_the_api_key() {
    let c = Config::from_args_env(Vec::new(), |k| match k {
        "OPENROUTER_API_KEY" => Some("sk-or-v1-secret-value".to_owned()),
        "REDIS_URL" => Some("redis://:hunter2-secret-value@10.0.0.1:6379/0".to_owned()),
        _ => None,
    })
    .unwrap();
    assert!(c.redis_url.is_some());
    assert!(c.api_key.is_some());
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret-value"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(!c.describe().contains("secret-value"));
    assert!(c.describe().contains("429 handling"));
}

/// A config file with two upstreams: OpenRouter (slow today) and a provider's own strict
/// OpenAI-compatible endpoint racing it for one model. Settings in the file give way to the
/// environment and flags; the raced model is answered by the faster upstream, the others by
/// OpenRouter; no key text in the configuration's `Debug`, `/metrics` or `/status.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_races_two_upstreams_and_flags_override_it() {
    let mut slow = Scenario::healthy();
    for p in &mut slow.providers {
        p.ttft = Dist::Fixed { ms: 1_500.0 };
    }
    let openrouter = MockServer::start(slow).await.unwrap();
    let mut fast = Scenario::healthy();
    fast.strict_openai = true;
    fast.models.push("gpt-4o-mini".into());
    let direct = MockServer::start(fast).await.unwrap();
    let dir = std::env::temp_dir().join(format!("llm-layers-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[settings]
listen = "127.0.0.1:0"
max-retries = 3
resume = true

[[upstreams]]
name = "openrouter"
base_url = "{}"
keys = [{{ name = "main", key = "sk-or-v1-file-secret-0001" }}]

[[upstreams]]
name = "direct"
dialect = "openai-compatible"
base_url = "{}"
keys = [{{ name = "direct-key", key = "sk-direct-file-secret-0002" }}]
model_map = {{ "openai/gpt-4o-mini" = "gpt-4o-mini" }}
race = ["openai/gpt-4o-mini"]
"#,
            openrouter.base_url(),
            direct.base_url()
        ),
    )
    .unwrap();
    let env = |k: &str| (k == "MAX_RETRIES").then(|| "2".to_owned());
    let args = vec![
        "--config".to_owned(),
        path.display().to_string(),
        "--max-retries=1".to_owned(),
    ];
    let cfg = Config::from_args_env(args, env).unwrap();
    assert_eq!(
        cfg.max_retries, 1,
        "flags win over the environment and the file"
    );
    assert!(cfg.resume, "the file's settings apply");
    assert_eq!(cfg.upstreams.len(), 2);
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("file-secret"), "{debug}");
    let e = Config::from_args_env(
        vec![
            "--config".into(),
            path.display().to_string(),
            "--max-retries".into(),
            "x".into(),
        ],
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--max-retries"), "{e}");

    let gw = start(
        Config {
            first_token_timeout: Some(Duration::from_secs(5)),
            ..cfg
        },
        None,
    )
    .await
    .unwrap();
    let c = client();
    let raced = json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "r"}], "max_tokens": 2});
    let (status, v, _) = json_of(post(&c, &gw, raced.to_string()).await).await;
    assert_eq!(status, 200, "{v}");
    let plain = json!({"model": "mock/echo", "messages": [{"role": "user", "content": "p"}], "max_tokens": 2});
    let (status, v, _) = json_of(post(&c, &gw, plain.to_string()).await).await;
    assert_eq!(status, 200, "{v}");
    // The raced model reached the strict endpoint, with nothing OpenRouter-only in it; the
    // other model only OpenRouter.
    assert!(direct.counters().requests() >= 1);
    let sent: Value = serde_json::from_slice(direct.counters().bodies().last().unwrap()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert!(openrouter.counters().requests() >= 1);
    for path in ["/metrics", "/status.json"] {
        let r = c
            .request(
                hyper::Request::get(format!("http://{}{path}", gw.addr()))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        let text =
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(!text.contains("file-secret"), "{path}: {text}");
    }
    gw.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn worker_threads_pick_the_runtime() {
    use tokio::runtime::RuntimeFlavor;
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let env = |k: &str| (k == "WORKER_THREADS").then(|| "3".to_owned());
    // The default: one worker per core.
    let c = Config::from_args_env(args(&[]), |_| None).unwrap();
    assert_eq!(c.worker_threads, 0);
    let rt = c.runtime().unwrap();
    assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
    // The environment, then the flag, which wins.
    let c = Config::from_args_env(args(&[]), env).unwrap();
    assert_eq!(c.runtime().unwrap().metrics().num_workers(), 3);
    let c = Config::from_args_env(args(&["--worker-threads", "1"]), env).unwrap();
    let rt = c.runtime().unwrap();
    assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
    assert!(
        c.describe().contains("1 (single-threaded runtime)"),
        "{}",
        c.describe()
    );
    // A single-threaded gateway serves like any other.
    rt.block_on(async {
        let mut cfg = config();
        cfg.worker_threads = 1;
        cfg.mock_preset = "healthy".into();
        let gw = start(cfg, None).await.unwrap();
        let m = json!({"model": "m", "messages": [{"role": "user", "content": "one thread"}], "max_tokens": 3, "stream": true});
        let text = answer_text(post(&client(), &gw, m.to_string()).await, true).await;
        assert_eq!(text, expected_answer(&body_of(&m), 3));
        gw.shutdown().await.unwrap();
    });
    for bad in ["many", "-1", "100000"] {
        let flag = format!("--worker-threads={bad}");
        let e = Config::from_args_env(args(&[&flag]), |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--worker-threads"), "{e}");
    }
}

/// A broken config file, keys file or flag around a secret: the binary exits 2 naming the
/// file, line and field, and no byte it prints holds the secret.
#[test]
fn no_secret_in_any_output_of_a_broken_configuration() {
    const SECRET: &str = "sk-or-v1-7f3a9c0d1e2b4a6f8091a2b3c4d5e6f7";
    let dir = std::env::temp_dir().join(format!("llm-gw-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken_toml = dir.join("gateway.toml");
    std::fs::write(
        &broken_toml,
        format!(
            "[[upstreams]]\nname = \"openrouter\"\nbase_url = \"http://127.0.0.1:9\"\nkeys = [{{ name = \"main\", key = \"{SECRET}\" ]\n"
        ),
    )
    .unwrap();
    let wrong_type = dir.join("wrong.toml");
    std::fs::write(
        &wrong_type,
        format!("[settings]\nmax-retries = 2\n\n[[upstreams]]\nname = \"o\"\nbase_url = \"http://x\"\nkeys = [{{ name = \"main\", key = {{ text = \"{SECRET}\" }} }}]\n"),
    )
    .unwrap();
    let broken_keys = dir.join("keys.json");
    std::fs::write(
        &broken_keys,
        format!("{{\"keys\": [\n  {{\"tenant\": \"acme\", \"key\": \"{SECRET}\" \"admin\": true}}\n]}}\n"),
    )
    .unwrap();
    let runs: [(Vec<String>, &str); 4] = [
        (
            vec!["--config".into(), broken_toml.display().to_string()],
            "line 4",
        ),
        (
            vec!["--config".into(), wrong_type.display().to_string()],
            "line 7",
        ),
        (
            vec!["--keys".into(), broken_keys.display().to_string()],
            "line 2",
        ),
        (
            vec![format!("--openrouter-api-key={SECRET}")],
            "--openrouter-api-key",
        ),
    ];
    for (args, says) in runs {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_llm-gateway"))
            .args(&args)
            .env_remove("OPENROUTER_API_KEY")
            .env_remove("LLM_GATEWAY_CONFIG")
            .output()
            .unwrap();
        let printed = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        let printed = String::from_utf8_lossy(&printed);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {printed}");
        assert!(printed.contains(says), "{args:?}: {printed}");
        for part in [SECRET, &SECRET[9..], &SECRET[20..]] {
            assert!(
                !printed.contains(part),
                "{args:?} printed the secret: {printed}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--help` describes every flag with its default and environment variable, `--version`
/// answers, a bad flag is one error message, and `--check-config` reads and checks everything:
/// exit 0 with the configuration in force (no secret) when valid, 1 naming the line when not.
#[test]
fn help_version_and_check_config_as_a_deploy_pipeline_uses_them() {
    let bin = env!("CARGO_BIN_EXE_llm-gateway");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env_remove("OPENROUTER_API_KEY")
            .env_remove("LLM_GATEWAY_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
        (out.status.code(), text)
    };
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for (flag, env) in [
        ("--listen", "LISTEN_ADDR"),
        ("--first-token-timeout-ms", "FIRST_TOKEN_TIMEOUT_MS"),
        ("--redis-url", "REDIS_URL"),
        ("--max-connections", "LLM_GATEWAY_MAX_CONNECTIONS"),
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} in {help}"));
        assert!(
            line.contains("[default: ") && line.contains(&format!("[env: {env}]")),
            "{line}"
        );
    }
    for heading in [
        "Listening and limits:",
        "Timeouts and retries:",
        "Routing:",
        "Shared state:",
    ] {
        assert!(help.contains(heading), "{heading}");
    }
    let (code, version) = run(&["--version"]);
    assert_eq!(
        (code, version.trim()),
        (Some(0), concat!("llm-gateway ", env!("CARGO_PKG_VERSION")))
    );
    let (code, bad) = run(&["--bogus"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        bad.matches("Usage:").count(),
        1,
        "one message, not the usage twice: {bad}"
    );

    let dir = std::env::temp_dir().join(format!("llm-gw-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[settings]\nmax-retries = 2\n\n[[upstreams]]\nname = \"or\"\nbase_url = \"http://127.0.0.1:9/api/v1\"\nkeys = [{ name = \"main\", key = \"sk-or-v1-check-secret-000000\" }]\n",
    )
    .unwrap();
    let (code, text) = run(&["--check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("configuration valid"), "{text}");
    assert!(!text.contains("check-secret"), "{text}");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[settings]\nmax-retries = 2\nhedge-quantile = \"often\"\n",
    )
    .unwrap();
    let (code, text) = run(&["--check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--hedge-quantile"), "{text}");
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[settings]\nmax-retries = = 2\n").unwrap();
    let (code, text) = run(&["--check-config", "--config", broken.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("line 2"), "{text}");
    // A certificate that is not there, or a key without its certificate.
    let missing = dir.join("missing-cert.pem");
    let (code, text) = run(&[
        "--check-config",
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("missing-cert.pem"), "{text}");
    let (code, text) = run(&["--check-config", "--tls-key", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("--tls-cert and --tls-key go together"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_calls_on_the_new_configuration_and_lets_streams_finish() {
    use llm_layers_gateway::keys::Keys;
    let keys = Keys::from_json(KEYS).unwrap();
    let cfg = Config {
        keys,
        idle_timeout: None,
        ..config()
    };
    let (gw, _mock) = gateway_on(open_stream_scenario(30.0), cfg.clone()).await;
    let c = client();
    let ops = "sk-gw-ops-00000000000";
    let fresh = "sk-gw-fresh-00000000";
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "across"}], "max_tokens": 8, "stream": true});
    // A stream in flight (its headers came at its first token) when the keys change.
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("authorization", format!("Bearer {ops}"))
        .body(Full::new(Bytes::from(m.to_string())))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let reader = tokio::spawn(async move { answer_text(r, true).await });
    let revoked = KEYS.replace(
        r#""tenant": "ops", "key": "sk-gw-ops-00000000000", "admin": true"#,
        r#""tenant": "ops", "key": "sk-gw-ops-00000000000", "revoked": true},
    {"tenant": "fresh", "key": "sk-gw-fresh-00000000""#,
    );
    assert_ne!(revoked, KEYS);
    gw.reload(Config {
        keys: Keys::from_json(&revoked).unwrap(),
        ..cfg.clone()
    })
    .await
    .unwrap();
    // The call in flight finishes on the configuration it started with, exactly.
    let body = ChatBody {
        messages: vec![Message::user("across")],
        ..ChatBody::default()
    };
    assert_eq!(reader.await.unwrap(), expected_answer(&body, 8));
    // New calls: the revoked key is refused, the new one served.
    let hi =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let (status, v, _) = post_as(&c, &gw, Some(ops), &[], hi.to_string()).await;
    assert_eq!(status, 401, "{v}");
    let (status, v, _) = post_as(&c, &gw, Some(fresh), &[], hi.to_string()).await;
    assert_eq!(status, 200, "{v}");
    // A configuration that cannot be built changes nothing.
    let broken: llm_layers_gateway::upstreams::UpstreamConfig = serde_json::from_value(json!({
        "name": "elsewhere", "base_url": "http://127.0.0.1:9/v1",
        "keys": [{"name": "k", "env": "LLM_LAYERS_TEST_NEVER_SET"}]
    }))
    .unwrap();
    let e = gw
        .reload(Config {
            keys: Keys::default(),
            upstreams: vec![broken],
            ..cfg
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("LLM_LAYERS_TEST_NEVER_SET"), "{e}");
    let (status, _, _) = post_as(&c, &gw, Some(fresh), &[], hi.to_string()).await;
    assert_eq!(status, 200, "the old configuration still serves");
    let (status, _, _) = post_as(&c, &gw, None, &[], hi.to_string()).await;
    assert_eq!(
        status, 401,
        "keys still on: the broken one's empty key list was not taken"
    );
    gw.shutdown().await.unwrap();
}

/// The binary re-reads its flags, environment and files on `SIGHUP`: an operator rotates a
/// key by editing the keys file, and a broken edit is refused while the old keys serve on.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_keys_file_and_refuses_a_broken_one() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("llm-gw-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.json");
    let keys = |k: &str| format!(r#"{{"keys": [{{"tenant": "t", "key": "{k}"}}]}}"#);
    std::fs::write(&file, keys("sk-gw-before-00000000")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llm-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--mock-time-scale",
            "0",
            "--keys",
        ])
        .arg(&file)
        .env_remove("OPENROUTER_API_KEY")
        .env_remove("LLM_GATEWAY_CONFIG")
        .env_remove("LLM_GATEWAY_KEYS")
        .env_remove("LLM_GATEWAY_KEYS_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the gateway printed its address")
            .unwrap();
        if let Some(rest) = line.split("gateway on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep reading its output (both streams) so it never blocks on a full pipe.
    let (tx, said) = mpsc::channel();
    let errors = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in errors.map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let c = client();
    let call = |key: &'static str| {
        let c = c.clone();
        let addr = addr.clone();
        async move {
            let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("authorization", format!("Bearer {key}"))
                .body(Full::new(Bytes::from_static(
                    br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#,
                )))
                .unwrap();
            c.request(req).await.unwrap().status().as_u16()
        }
    };
    let hup = |pid: u32| {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let wait_for = |said: &mpsc::Receiver<String>, what: &str| loop {
        let l = said
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the gateway never said {what:?}"));
        if l.contains(what) {
            break;
        }
    };
    assert_eq!(call("sk-gw-before-00000000").await, 200);
    std::fs::write(&file, keys("sk-gw-after-000000000")).unwrap();
    hup(child.id());
    wait_for(&said, "configuration reloaded");
    assert_eq!(call("sk-gw-before-00000000").await, 401);
    assert_eq!(call("sk-gw-after-000000000").await, 200);
    // A broken edit: refused, the keys before it still serve.
    std::fs::write(&file, "{ not json").unwrap();
    hup(child.id());
    wait_for(&said, "configuration refused");
    assert_eq!(call("sk-gw-after-000000000").await, 200);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config file's `[prices]` price a model where the upstream reports no cost, winning
/// over its catalog; a price that is not one is refused, naming the model.
#[tokio::test]
async fn prices_from_the_config_file_win_over_the_catalog() {
    let dir = std::env::temp_dir().join(format!("llm-layers-prices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let write = |prices: &str| {
        std::fs::write(
            &path,
            format!("[settings]\nlisten = \"127.0.0.1:0\"\n\n[prices]\n{prices}\n"),
        )
        .unwrap();
        Config::from_args_env(vec!["--config".into(), path.display().to_string()], |_| {
            None
        })
    };
    for (bad, says) in [
        (
            r#""mock/echo" = { prompt = "0.1" }"#,
            "completion is missing",
        ),
        (
            r#""mock/echo" = { prompt = "-1", completion = "-1" }"#,
            "no fixed price",
        ),
        (
            r#""mock/echo" = { prompt = "x", completion = "0.1" }"#,
            "not a price",
        ),
    ] {
        let e = write(bad).unwrap_err().to_string();
        assert!(
            e.contains("prices.\"mock/echo\"") && e.contains(says),
            "{bad}: {e}"
        );
    }
    let cfg = write(r#""mock/echo" = { prompt = "0.00001", completion = 0.00002 }"#).unwrap();
    let mut scenario = Scenario::healthy();
    scenario.report_cost = false;
    let (gw, _mock) = gateway_on(
        scenario,
        Config {
            first_token_timeout: Some(Duration::from_millis(500)),
            ..cfg
        },
    )
    .await;
    let body = json!({"model": "mock/echo", "max_tokens": 3,
        "messages": [{"role": "user", "content": "what does it cost"}]});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = client().request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let cost: f64 = r.headers()["x-llm-cost-usd"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.headers()["x-llm-cost-source"], "estimated");
    let (_, v, _) = json_of(r).await;
    let u = &v["usage"];
    let want = u["prompt_tokens"].as_f64().unwrap() * 0.00001
        + u["completion_tokens"].as_f64().unwrap() * 0.00002;
    assert!(
        (cost - want).abs() < 1e-9,
        "{cost} against {want} (the catalog's would be 10× less)"
    );
}
