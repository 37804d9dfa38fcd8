//! What the rate limiter tells a trace: a wait for a limit is an event on the call's span.

use tower::ServiceExt;

mod common;
use common::{one_per_4s_waiting, req};

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
    let wait = one_per_4s_waiting();
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
