//! What the rate limiter tells a trace: a wait for a limit is an event on the call's span.

use std::time::Duration;

use llm_layers_core::{ChatRequest, Message};
use llm_layers_mock::{MockChat, Script};
use llm_layers_ratelimit::{Limit, Mode, RateLimitLayer};
use tower::{Layer, ServiceExt};

fn req(model: &str) -> ChatRequest {
    ChatRequest::new(model, vec![Message::user("hi")])
}

fn instant() -> MockChat {
    MockChat::with_default(Script::tokens(Duration::ZERO, 1, Duration::ZERO))
}

/// A call that waits for its limit says so, as an event on the current span (a span event on
/// the call when traces are exported), with how long.
#[tokio::test(start_paused = true)]
async fn a_wait_for_a_limit_is_an_event_on_the_call() {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<String>>>);
    struct Fields(String);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={:?} ", f.name(), v);
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(&self, e: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut f = Fields(String::new());
            e.record(&mut f);
            llm_layers_core::sync::lock(&self.0).push(f.0);
        }
    }
    let events = Events::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    let wait = RateLimitLayer::builder()
        .requests(
            Limit::new(1, Duration::from_secs(4))
                .burst(1)
                .mode(Mode::Wait(Duration::from_secs(10))),
        )
        .build()
        .unwrap()
        .layer(instant());
    wait.clone().oneshot(req("m")).await.unwrap();
    assert!(
        llm_layers_core::sync::lock(&events.0).is_empty(),
        "no wait, no event"
    );
    wait.clone().oneshot(req("m")).await.unwrap();
    let seen = llm_layers_core::sync::lock(&events.0).clone();
    assert_eq!(
        seen,
        ["message=rate limit: waiting limit=\"requests\" wait_ms=4000 "]
    );
}
