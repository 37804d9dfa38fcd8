//! The streaming answer: OpenAI-style server-sent events, `data: [DONE]` only after a clean
//! end, an error event after a failure, and a cut at the end of a shutdown's grace period.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_core::Stream;
use http::{HeaderValue, header};
use llm_layers_core::{ChatChunk, ChatStream};
use tokio::sync::watch;

use crate::Phase;
use crate::error::ApiFailure;

pub(crate) fn response(
    stream: ChatStream,
    include_usage: bool,
    phase: watch::Receiver<Phase>,
) -> Response {
    let body = SseBody {
        stream,
        include_usage,
        cut: Box::pin(wait_cut(phase)),
        done: false,
        created: crate::now_secs(),
    };
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

async fn wait_cut(mut phase: watch::Receiver<Phase>) {
    if phase.wait_for(|p| *p == Phase::Cut).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct SseBody {
    stream: ChatStream,
    include_usage: bool,
    cut: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
    created: u64,
}

fn event(json: &impl serde::Serialize) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing our own types to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl SseBody {
    fn chunk(&self, mut c: ChatChunk) -> Bytes {
        if c.object.is_empty() {
            c.object = "chat.completion.chunk".into();
        }
        if c.created == 0 {
            c.created = self.created;
        }
        if c.id.is_empty() {
            c.id = self.stream.meta().generation_id.clone().unwrap_or_default();
        }
        event(&c)
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.cut.as_mut().poll(cx).is_ready() {
            this.done = true;
            let f = ApiFailure {
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                kind: "api_error",
                code: "server_shutting_down".into(),
                message: "the gateway is shutting down; the answer was cut".into(),
                retry_after: None,
            };
            return Poll::Ready(Some(Ok(event(&f.body()))));
        }
        loop {
            return match Pin::new(&mut this.stream).poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(c))) => {
                    // OpenAI sends the usage chunk (empty choices) only when asked.
                    if c.choices.is_empty() && !this.include_usage {
                        continue;
                    }
                    Poll::Ready(Some(Ok(this.chunk(c))))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    Poll::Ready(Some(Ok(event(&ApiFailure::from(&e).body()))))
                }
                Poll::Ready(None) => {
                    this.done = true;
                    Poll::Ready(Some(Ok(Bytes::from_static(b"data: [DONE]\n\n"))))
                }
            };
        }
    }
}
