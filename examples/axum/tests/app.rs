//! The app on an ephemeral port, its stack on a mock OpenRouter: the app's own route still
//! answers, and `POST /ask` streams exactly the mock's answer.

use example_axum::{AppState, app, stack};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llm_layers::core::{ChatRequest, Message};
use llm_layers::mock::{MockServer, Scenario, expected_answer};

#[tokio::test]
async fn the_app_keeps_its_routes_and_streams_answers_through_the_stack() {
    let mock = MockServer::start(Scenario::healthy().with_time_scale(0.0))
        .await
        .unwrap();
    let state = AppState {
        greeting: "hello",
        model: "mock/echo".to_owned(),
        llm: stack(mock.base_url(), "sk-or-v1-test").unwrap(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();

    let hello = client
        .get(format!("http://{addr}/hello").parse().unwrap())
        .await
        .unwrap();
    let body = hello.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");

    let ask = hyper::Request::post(format!("http://{addr}/ask"))
        .body(Full::from("why layers?"))
        .unwrap();
    let r = client.request(ask).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut answer = String::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        assert!(!event.starts_with("event: error"), "{event}");
        answer.push_str(event.strip_prefix("data: ").unwrap());
    }
    let req = ChatRequest::new("mock/echo", vec![Message::user("why layers?")]);
    let n = answer.split_inclusive(' ').count() as u32;
    assert!(n > 0);
    assert_eq!(answer, expected_answer(req.body(), n));
}
