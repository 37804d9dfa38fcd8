//! Four replicas' breakers through one real Redis: a trip on one keeps the provider out of
//! all after one sync; when it half-opens, one replica probes.

use std::time::Duration;

use http::StatusCode;
use llm_layers_breaker::{Breaker, BreakerLayer};
use llm_layers_core::{ChatRequest, LlmError, Message};
use llm_layers_mock::{MockChat, Script};
use llm_layers_redis::BreakerSync;
use llm_layers_redis::testing::RedisServer;
use tower::{Layer, ServiceExt};

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

fn ok(provider: &str) -> Script {
    Script::tokens(Duration::ZERO, 1, Duration::ZERO).provider(provider)
}

fn ignored(r: &ChatRequest) -> Vec<String> {
    r.body()
        .provider
        .as_ref()
        .and_then(|p| p.ignore.clone())
        .unwrap_or_default()
}

async fn run(svc: &Breaker<MockChat>) -> Result<(), LlmError> {
    svc.clone()
        .oneshot(req())
        .await?
        .collect()
        .await
        .map(|_| ())
}

struct Replica {
    layer: BreakerLayer,
    sync: BreakerSync,
    svc: Breaker<MockChat>,
    mock: MockChat,
}

impl Replica {
    /// Makes one call with `script`; returns whether the request kept "bad" out.
    async fn call(&self, script: Script) -> bool {
        self.mock.push(script);
        let _ = run(&self.svc).await;
        ignored(self.mock.requests().last().unwrap()).contains(&"bad".to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_reaches_every_replica_in_one_sync_and_one_replica_probes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let every = Duration::from_millis(100);
    let open = Duration::from_millis(400);
    let mut replicas = Vec::new();
    for r in 0..4 {
        let redis = server.connect(&format!("r{r}"));
        let layer = BreakerLayer::builder()
            .consecutive_failures(3)
            .open_for(open)
            .open_jitter(0.0)
            .build()
            .unwrap();
        let mock = MockChat::new();
        let r = Replica {
            sync: BreakerSync::new(&redis, &layer, every),
            svc: layer.layer(mock.clone()),
            mock,
            layer,
        };
        // Each has seen another provider answer.
        assert!(!r.call(ok("Good")).await);
        replicas.push(r);
    }
    // Replica 0 sees Bad fail three times in a row.
    for _ in 0..3 {
        replicas[0]
            .call(Script::error(
                LlmError::status(StatusCode::BAD_GATEWAY, None).with_provider("Bad"),
            ))
            .await;
    }
    assert!(replicas[0].call(ok("Good")).await, "tripped on replica 0");
    assert!(
        !replicas[1].call(ok("Good")).await,
        "not shared before a sync"
    );
    for r in &replicas {
        r.sync.sync().await.unwrap();
    }
    for (i, r) in replicas.iter().enumerate().skip(1) {
        assert!(
            r.call(ok("Good")).await,
            "replica {i} keeps Bad out after one sync"
        );
    }
    // Past the open time, each replica syncs once: the first claims the probe.
    tokio::time::sleep(open + every).await;
    for r in &replicas {
        r.sync.sync().await.unwrap();
    }
    let mut probes = 0;
    for r in &replicas {
        if !r.call(ok("Bad")).await {
            probes += 1;
        }
    }
    assert_eq!(probes, 1, "one probe, not four");
    // Its success closes Bad everywhere at the next sync.
    for r in &replicas {
        r.sync.sync().await.unwrap();
    }
    for (i, r) in replicas.iter().enumerate() {
        assert!(!r.call(ok("Good")).await, "replica {i} sends to Bad again");
    }

    // A provider's 429 on replica 2 holds it on every replica after one sync (a hold, not
    // a trip: nothing opens). Hot served before, so a few probes of its hold may go.
    for r in &replicas {
        r.mock.push(ok("Hot"));
        let _ = run(&r.svc).await;
    }
    replicas[2]
        .call(Script::error(
            LlmError::status(StatusCode::TOO_MANY_REQUESTS, None)
                .with_provider("Hot")
                .with_retry_after(Duration::from_secs(30)),
        ))
        .await;
    replicas[2].sync.sync().await.unwrap();
    for r in &replicas {
        r.sync.sync().await.unwrap();
    }
    for (i, r) in replicas.iter().enumerate() {
        let hot = r
            .layer
            .snapshot()
            .into_iter()
            .find(|b| b.provider.as_deref() == Some("hot"))
            .unwrap_or_else(|| panic!("replica {i} knows Hot"));
        assert!(
            hot.held_until
                .is_some_and(|u| u > tokio::time::Instant::now() + Duration::from_secs(25)),
            "replica {i}: {hot:?}"
        );
        assert_eq!(hot.state, llm_layers_breaker::State::Closed, "replica {i}");
    }
}
