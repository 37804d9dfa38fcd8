//! Replicas sharing state through Redis.

mod common;
use common::*;

/// Two gateways given one Redis are one gateway to a limit: a call to the first spends the
/// bucket the second sees (without Redis each would admit its own). A gateway whose Redis
/// is unreachable starts and serves from local state, and says so on the status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_share_one_limit_and_a_dead_redis_is_local_state() {
    let Some(server) = llm_layers_redis::testing::RedisServer::start() else {
        return;
    };
    let shared = || Config {
        mock_preset: "healthy".into(),
        // Six a minute per model, burst 1: the second call anywhere would wait 10 s > 5 s.
        requests_per_minute: 6,
        redis_url: Some(server.url()),
        replicas: 2,
        ..config()
    };
    let (a, b) = (
        start(shared(), None).await.unwrap(),
        start(shared(), None).await.unwrap(),
    );
    let c = client();
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    assert_eq!(json_of(post(&c, &a, m.to_string()).await).await.0, 200);
    let (status, v, retry) = json_of(post(&c, &b, m.to_string()).await).await;
    assert_eq!(
        status, 429,
        "the other replica spent the shared bucket: {v}"
    );
    assert_openai_error(&v);
    assert!(retry.is_some());
    let status_of = |gw: &Gateway| format!("http://{}/status.json", gw.addr());
    let get = |url: String| {
        let c = c.clone();
        async move {
            let r = c
                .request(
                    hyper::Request::get(url)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            json_of(r).await.1
        }
    };
    let st = get(status_of(&a)).await;
    assert_eq!(st["shared_state"]["healthy"], json!(true), "{st}");
    assert!(
        !st.to_string().contains(&server.url()),
        "the Redis URL is never shown"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // Nothing listens there: the gateway starts, serves, and says it is on local state.
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let alone = start(
        Config {
            mock_preset: "healthy".into(),
            redis_url: Some(format!("redis://127.0.0.1:{port}")),
            ..config()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(json_of(post(&c, &alone, m.to_string()).await).await.0, 200);
    let st = get(status_of(&alone)).await;
    assert_eq!(st["shared_state"]["healthy"], json!(false), "{st}");
    alone.shutdown().await.unwrap();
}
