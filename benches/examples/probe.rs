//! temp
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let stream: bool = std::env::args().nth(3).unwrap().parse().unwrap();
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut js = tokio::task::JoinSet::new();
    for i in 0..n {
        let body = format!(
            r#"{{"model":"openai/gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"w {i}"}}]}}"#
        );
        let req = http::Request::post(&url)
            .header("content-type", "application/json")
            .header("authorization", "Bearer x")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let c = c.clone();
        js.spawn(async move {
            let r = c.request(req).await.unwrap();
            r.into_body().collect().await.unwrap();
        });
        if i % 2 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        while js.try_join_next().is_some() {}
    }
    while js.join_next().await.is_some() {}
}
