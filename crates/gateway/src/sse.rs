//! The streaming answer: OpenAI-style server-sent events, `data: [DONE]` only after a clean
//! end, an error event after a failure, and a cut at the end of a shutdown's grace period.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_core::Stream;
use http::{HeaderValue, header};
use llm_layers_core::price::Cost;
use llm_layers_core::{ChatStream, ChunkWriter, StreamChunk};

use crate::prices::PriceBook;
use tokio::sync::watch;

use crate::Phase;
use crate::access::CallRecord;
use crate::error::ApiFailure;

pub(crate) fn response(
    stream: ChatStream,
    include_usage: bool,
    phase: watch::Receiver<Phase>,
    record: CallRecord,
    pricing: Pricing,
    charge: Option<crate::budget::Charge>,
) -> Response {
    let Pricing {
        book: prices,
        tenant,
        given_up,
    } = pricing;
    let mut body = SseBody {
        stream,
        include_usage,
        cut: Box::pin(wait_cut(phase)),
        done: false,
        created: crate::now_secs(),
        writer: ChunkWriter::default(),
        record: None,
        prices,
        tenant,
        given_up,
        cost: None,
        cancelled: None,
        charge: charge.map(Box::new),
    };
    let mut r = Response::new(Body::empty());
    record.write_headers(r.headers_mut());
    body.record = Some(record);
    *r.body_mut() = Body::from_stream(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        crate::names::ACCEL_BUFFERING,
        HeaderValue::from_static("no"),
    );
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
    /// Writes the head the chunks of the answer repeat once.
    writer: ChunkWriter,
    /// The call as the access log sees it: written when the body is dropped.
    record: Option<CallRecord>,
    prices: Arc<PriceBook>,
    /// The tenant of the call's gateway key, for the cost's metric.
    tenant: Option<Arc<str>>,
    /// What the call cost, once its usage came.
    cost: Option<Cost>,
    /// The call's count of attempts given up before their first token.
    given_up: llm_layers_core::GivenUp,
    /// Those attempts, and what they cost (estimated), once its usage came.
    cancelled: Option<(u32, f64)>,
    /// The tenant's budget reservation: settled to the cost, or on drop to what was spent.
    /// Boxed: most calls have none, and it would be 144 bytes in every open stream.
    charge: Option<Box<crate::budget::Charge>>,
}

/// The usage of the attempts that broke before a resume (none when nothing was resumed).
fn broken_usage(meta: &llm_layers_core::ResponseMeta) -> Option<llm_layers_core::Usage> {
    let r = meta.extensions.get::<llm_layers_resume::ResumeReport>()?;
    (r.resumed() > 0).then(|| r.broken_usage())
}

/// What prices a streamed call: the book, the tenant of its gateway key (for the cost's
/// metric), and its count of attempts given up.
pub(crate) struct Pricing {
    pub(crate) book: Arc<PriceBook>,
    pub(crate) tenant: Option<Arc<str>>,
    pub(crate) given_up: llm_layers_core::GivenUp,
}

/// The most bytes one body frame gathers from events that are already there.
const BATCH_BYTES: usize = 16 * 1024;

/// Appends one `data: {json}` event to `out`, its JSON written by `json`.
fn write_event(out: &mut Vec<u8>, json: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"data: ");
    json(out);
    out.extend_from_slice(b"\n\n");
}

/// Appends one event holding `v` (our own types: serializing them to memory cannot fail).
fn write_value(out: &mut Vec<u8>, v: &impl serde::Serialize) {
    write_event(out, |o| {
        let _ = serde_json::to_writer(o, v);
    });
}

fn event(json: &impl serde::Serialize) -> Bytes {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, json);
    Bytes::from(out)
}

impl SseBody {
    /// The answer ended: cleanly, or with an error's status and code.
    fn ended(&mut self, error: Option<&str>) {
        if let Some(r) = self.record.as_mut() {
            match error {
                Some(code) => r.broke(code),
                None => r.done(),
            }
        }
    }

    /// Appends `c` as an event, the fields OpenAI clients rely on filled in. A chunk that
    /// has them is written as the bytes it came in (what no type models kept, byte for
    /// byte); one that lacks them is written from its fields.
    fn chunk(&mut self, out: &mut Vec<u8>, mut c: StreamChunk) {
        if c.object().is_empty() {
            c.make_mut().object = "chat.completion.chunk".into();
        }
        if c.created() == 0 {
            c.make_mut().created = self.created;
        }
        if c.id().is_empty() {
            c.make_mut().id = self.stream.meta().generation_id.clone().unwrap_or_default();
        }
        // The chunk with the usage, the last: what only the end of the stream knows rides
        // along.
        let summary = c.usage().is_some().then(|| self.summary());
        let writer = &mut self.writer;
        write_event(out, |o| {
            let start = o.len();
            c.write_with(writer, o);
            // Upstream bytes may span lines (data lines are joined with LF): each line of
            // the event gets its own `data: `, so the client joins the same bytes back.
            if memchr::memchr(b'\n', &o[start..]).is_some() {
                let json = o.split_off(start);
                for (i, line) in json.split(|&b| b == b'\n').enumerate() {
                    if i > 0 {
                        o.extend_from_slice(b"\ndata: ");
                    }
                    o.extend_from_slice(line);
                }
            }
            if let Some(s) = summary {
                // Upstream bytes may end in whitespace: the summary goes inside the object.
                while o.last().is_some_and(u8::is_ascii_whitespace) {
                    o.pop();
                }
                // An upstream that sent a key of that name keeps it: never a duplicate key.
                let taken = memchr::memmem::find(&o[start..], b"\"llm_layers\"").is_some();
                if o.last() == Some(&b'}') && !taken {
                    o.pop();
                    o.extend_from_slice(s.as_bytes());
                    o.push(b'}');
                }
            }
        });
    }

    /// `,"llm_layers":{…}` for the usage chunk: the attempts before the first token (as
    /// `x-llm-attempts` said) and the continuations joined after a break.
    fn summary(&self) -> String {
        let meta = self.stream.meta();
        let continuations = meta
            .extensions
            .get::<llm_layers_resume::ResumeReport>()
            .map_or(0, |r| r.resumed());
        let cost = self.cost.map_or_else(String::new, |c| {
            format!(
                r#","cost_usd":{},"cost_source":"{}""#,
                crate::prices::usd(c),
                c.source()
            )
        });
        let cancelled = match (self.cost, self.cancelled) {
            (Some(c), Some((n, usd))) => format!(
                r#","cancelled_attempts":{n},"attempts_cost_usd":{}"#,
                crate::prices::usd(Cost::Estimated(c.usd() + usd))
            ),
            _ => String::new(),
        };
        format!(
            r#","llm_layers":{{"attempts":{},"continuations":{continuations}{cost}{cancelled}}}"#,
            meta.attempts.max(1)
        )
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    /// One frame holds every event that is ready (up to [`BATCH_BYTES`]): chunks that came
    /// in one upstream read leave in one write, not one write (and syscall) each.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.cut.as_mut().poll(cx).is_ready() {
            this.done = true;
            this.ended(Some("server_shutting_down"));
            let f = ApiFailure {
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                kind: "api_error",
                code: "server_shutting_down".into(),
                message: "the gateway is shutting down; the answer was cut".into(),
                retry_after: None,
                param: None,
            };
            return Poll::Ready(Some(Ok(event(&f.body()))));
        }
        let mut out = Vec::new();
        while out.len() < BATCH_BYTES {
            match Pin::new(&mut this.stream).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(c))) => {
                    if let Some(ch) = this.charge.as_mut() {
                        if c.has_output() {
                            ch.delivered();
                        }
                    }
                    if let Some(u) = c.usage() {
                        let model = if c.model().is_empty() {
                            &this.stream.meta().model
                        } else {
                            c.model()
                        };
                        let provider = c.provider().or(this.stream.meta().provider.as_deref());
                        this.cost = this
                            .prices
                            .cost(model, (provider, this.tenant.as_deref()), u)
                            .map(|c| match broken_usage(this.stream.meta()) {
                                Some(b) => this.prices.with_broken(model, c, &b),
                                None => c,
                            });
                        if let (Some(ch), Some(cost)) = (this.charge.as_mut(), this.cost) {
                            ch.settle(cost);
                        }
                        let n = this.given_up.count();
                        this.cancelled = (n > 0)
                            .then(|| this.prices.cancelled(model, u.prompt_tokens, n))
                            .flatten()
                            .map(|usd| (n, usd));
                        if let Some(r) = this.record.as_mut() {
                            r.usage(u);
                            r.cost(this.cost);
                        }
                    }
                    // OpenAI sends the usage chunk (empty choices) only when asked.
                    if c.choice_count() == 0 && !this.include_usage {
                        continue;
                    }
                    if out.capacity() == 0 {
                        out.reserve(1024);
                    }
                    this.chunk(&mut out, c);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    let f = ApiFailure::from(&e);
                    this.ended(Some(&f.code));
                    write_value(&mut out, &f.body());
                    break;
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.ended(None);
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    break;
                }
            }
        }
        if out.is_empty() {
            // Nothing ready: the inner stream has registered the waker.
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use llm_layers_core::{ChatRequest, Message};
    use llm_layers_mock::{MockChat, Script};
    use std::time::Duration;
    use tower::ServiceExt;

    /// The body frames of the SSE answer to a call scripted by `script`.
    async fn frames_of(script: Script) -> Vec<Bytes> {
        let mock = MockChat::with_default(script);
        let req = ChatRequest::new("m", vec![Message::user("hi")]);
        let stream = mock.oneshot(req).await.unwrap();
        let (_tx, rx) = watch::channel(Phase::Running);
        let mut body = response(
            stream,
            false,
            rx,
            CallRecord::start(None),
            Pricing {
                book: Arc::default(),
                tenant: None,
                given_up: Default::default(),
            },
            None,
        )
        .into_body();
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            frames.push(f.unwrap().into_data().unwrap());
        }
        frames
    }

    /// A stream with attempts given up (hedges that lost) says what every attempt cost: its
    /// own cost and the given-up ones' prompts at the model's price, estimated.
    #[tokio::test(start_paused = true)]
    async fn the_summary_prices_the_hedges_that_lost() {
        let mock = MockChat::with_default(
            Script::tokens(Duration::ZERO, 2, Duration::ZERO)
                .finish("stop")
                .usage(1000, 2),
        );
        let stream = mock
            .oneshot(ChatRequest::new("a/m", vec![Message::user("hi")]))
            .await
            .unwrap();
        let given_up = llm_layers_core::GivenUp::default();
        given_up.add();
        given_up.add();
        let book = Arc::new(PriceBook::default());
        book.learn(&[serde_json::from_value(serde_json::json!({
            "id": "a/m", "pricing": {"prompt": "0.000001", "completion": "0.000002"}
        }))
        .unwrap()]);
        let (_tx, rx) = watch::channel(Phase::Running);
        let mut body = response(
            stream,
            true,
            rx,
            CallRecord::start(None),
            Pricing {
                book,
                tenant: None,
                given_up,
            },
            None,
        )
        .into_body();
        let mut text = String::new();
        while let Some(f) = body.frame().await {
            text.push_str(std::str::from_utf8(&f.unwrap().into_data().unwrap()).unwrap());
        }
        // Its own: 1,000 × 1e-6 + 2 × 2e-6; the two cancelled: 1,000 × 1e-6 each.
        assert!(
            text.contains(r#""cost_usd":0.001004000,"cost_source":"estimated","cancelled_attempts":2,"attempts_cost_usd":0.003004000"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_that_are_ready_together_leave_in_one_frame() {
        let frames = frames_of(Script::tokens(Duration::ZERO, 5, Duration::ZERO)).await;
        assert_eq!(frames.len(), 1, "one frame for one burst: {frames:?}");
        let text = std::str::from_utf8(&frames[0]).unwrap();
        assert_eq!(
            text.matches("data: ").count(),
            7,
            "five tokens, the finish and [DONE]: {text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_that_arrive_apart_leave_apart() {
        let gap = Duration::from_millis(10);
        let frames = frames_of(Script::tokens(Duration::ZERO, 3, gap)).await;
        let all: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let text = String::from_utf8(all).unwrap();
        assert_eq!(
            text.matches("data: ").count(),
            5,
            "three tokens, the finish and [DONE]"
        );
        assert!(frames.len() >= 3, "a frame per gap: {frames:?}");
    }
}
