//! The gRPC service end to end: a tonic client, the service, the stack, the mock upstream.

use example_tonic::{
    ChatClient, ChatCompletionRequest, ChatMessage, ChatServer, ChatService, stack,
};
use llm_layers_core::Message;
use llm_layers_mock::{Faults, MockServer, Scenario, StatusFault, expected_answer};
use llm_layers_openrouter::OpenRouter;
use tokio::net::TcpListener;
use tokio_stream_shim::TcpIncoming;

mod tokio_stream_shim {
    pub(crate) use tonic::transport::server::TcpIncoming;
}

async fn serve(scenario: Scenario) -> (String, MockServer) {
    let mock = MockServer::start(scenario).await.unwrap();
    let leaf = OpenRouter::builder()
        .api_key("sk-or-v1-t")
        .base_url(mock.base_url())
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ChatServer::new(ChatService::new(stack(leaf).unwrap()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), mock)
}

fn request(text: &str) -> ChatCompletionRequest {
    ChatCompletionRequest {
        model: "mock/echo".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: text.into(),
        }],
        max_tokens: Some(7),
        temperature: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_answer_over_grpc() {
    let (url, _mock) = serve(Scenario::healthy().with_time_scale(0.0)).await;
    let mut client = ChatClient::connect(url).await.unwrap();
    let mut stream = client
        .complete(request("grpc hello"))
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut finish = String::new();
    let mut completion_tokens = 0;
    while let Some(d) = stream.message().await.unwrap() {
        text.push_str(&d.content);
        if !d.finish_reason.is_empty() {
            finish = d.finish_reason;
        }
        completion_tokens += d.completion_tokens;
        assert!(!d.provider.is_empty());
    }
    let body = llm_layers_core::ChatBody {
        messages: vec![Message::user("grpc hello")],
        ..Default::default()
    };
    assert_eq!(text, expected_answer(&body, 7));
    assert_eq!(finish, "stop");
    assert_eq!(completion_tokens, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_grpc_statuses() {
    let mut s = Scenario::healthy().with_time_scale(0.0);
    s.providers.truncate(1);
    s.providers[0].faults = Faults {
        status: vec![StatusFault {
            code: 429,
            rate: 1.0,
            retry_after_s: None,
        }],
        ..Faults::default()
    };
    let (url, _mock) = serve(s).await;
    let mut client = ChatClient::connect(url).await.unwrap();
    let status = client.complete(request("x")).await.unwrap_err();
    // Retries (the policy avoids, then gives back, the only provider) end on the 429.
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let mut empty = request("x");
    empty.messages.clear();
    assert_eq!(
        client.complete(empty).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}
