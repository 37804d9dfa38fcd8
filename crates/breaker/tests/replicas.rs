//! Breaker state between replicas: trips and closes move as changes, a remote model-wide open
//! never fails a call fast here, our own connect failures never open a model.

mod common;
use common::*;

/// What one replica's breaker learned goes to another through `changes` and `apply`: a trip
/// keeps the other's calls off the provider, a close lets them back, nothing echoes.
#[tokio::test(start_paused = true)]
async fn a_trip_and_a_close_move_between_replicas() {
    let (a, b) = (layer(), layer());
    assert!(a.changes().is_empty(), "sharing starts with the first read");
    let (mock_a, mock_b) = (MockChat::new(), MockChat::new());
    let (svc_a, svc_b) = (a.layer(mock_a.clone()), b.layer(mock_b.clone()));
    trip_bad(&svc_a, &mock_a).await;
    let changes = a.changes();
    // Another replica's trip alone never makes a call fail fast here: this replica has not
    // seen another provider answer.
    let lone = layer();
    for c in &changes {
        lone.apply(c);
    }
    let mock_lone = MockChat::new();
    mock_lone.push(ok("Good"));
    run(&lone.layer(mock_lone.clone())).await.unwrap();
    assert!(
        matches!(&changes[..], [llm_layers_breaker::Change::Opened { provider: Some(p), open_for, .. }]
            if &**p == "bad" && *open_for == S(10)),
        "{changes:?}"
    );
    mock_b.push(ok("Good"));
    run(&svc_b).await.unwrap();
    for c in &changes {
        b.apply(c);
    }
    assert!(
        b.changes().is_empty(),
        "an applied change is not ours to share"
    );
    mock_b.push(ok("Good"));
    run(&svc_b).await.unwrap();
    assert_eq!(ignored(mock_b.requests().last().unwrap()), ["bad"]);
    // A's probe succeeds: the close reaches B, which sends to Bad again.
    tokio::time::advance(S(10)).await;
    mock_a.push(ok("Bad"));
    run(&svc_a).await.unwrap();
    let closed = a.changes();
    assert!(
        matches!(&closed[..], [llm_layers_breaker::Change::Closed { .. }]),
        "{closed:?}"
    );
    for c in &closed {
        b.apply(c);
    }
    mock_b.push(ok("Good"));
    run(&svc_b).await.unwrap();
    assert!(ignored(mock_b.requests().last().unwrap()).is_empty());
}

/// Another replica's trip of a whole model never fails a call fast here (its evidence may
/// be its own egress); this replica's own success closes it, and only its own failures
/// make it fail fast.
#[tokio::test(start_paused = true)]
async fn another_replicas_model_wide_open_never_fails_a_call_fast_here() {
    let b = layer();
    b.apply(&llm_layers_breaker::Change::opened("m".into(), None, S(30)));
    assert!(
        b.snapshot()
            .iter()
            .any(|i| i.provider.is_none() && matches!(i.state, State::Open { .. })),
        "{:?}",
        b.snapshot()
    );
    let mock = MockChat::new();
    let svc = b.layer(mock.clone());
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert_eq!(mock.calls(), 1, "the call went upstream");
    assert!(
        b.snapshot().iter().all(|i| i.state == State::Closed),
        "our success closed it: {:?}",
        b.snapshot()
    );
}

/// Connecting failed (DNS, TCP, TLS) before any provider was asked: that is this process's
/// egress, and it never opens the model (through a shared store that would fail the model
/// fast on every replica).
#[tokio::test(start_paused = true)]
async fn our_own_connect_failures_never_open_the_model() {
    let mock = MockChat::new();
    let b = layer();
    let svc = b.layer(mock.clone());
    for kind in [ErrorKind::Connect, ErrorKind::Tls] {
        for _ in 0..30 {
            mock.push(Script::error(LlmError::new(kind)));
            let _ = run(&svc).await;
        }
    }
    assert!(
        b.snapshot().iter().all(|i| i.state == State::Closed),
        "{:?}",
        b.snapshot()
    );
    mock.push(ok("Good"));
    run(&svc).await.unwrap();
    assert_eq!(mock.calls(), 61);
}
