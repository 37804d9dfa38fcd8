//! Writing one drawn answer onto the wire: SSE events (keep-alives, split and coalesced
//! writes, CRLF, mid-stream cuts) or a whole JSON body.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use llm_layers_core::{ChatChunk, ChunkChoice, Delta, Usage};
use rand::Rng;
use serde_json::json;
use tokio::sync::mpsc;

use crate::plan::{Cut, Outcome, Plan};
use crate::scenario::Scenario;
use crate::server::Counters;

pub(crate) struct AnswerMeta {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) provider: String,
    pub(crate) created: u64,
    /// What to send, one piece per token ([`crate::answer_pieces`]).
    pub(crate) pieces: Vec<String>,
    pub(crate) prompt_tokens: u64,
    /// Whether `usage` says what the answer cost.
    pub(crate) report_cost: bool,
    /// What the serving provider charges.
    pub(crate) price: llm_layers_core::price::Price,
}

impl AnswerMeta {
    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            provider: Some(self.provider.clone()),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(Into::into),
                native_finish_reason: finish.map(Into::into),
                ..ChunkChoice::default()
            }],
            ..ChatChunk::default()
        }
    }

    fn usage(&self, completion: u64) -> Usage {
        let mut u = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: completion,
            total_tokens: self.prompt_tokens + completion,
            ..Usage::default()
        };
        if self.report_cost {
            let cost = self.price.cost(&u);
            u.extra.insert("cost".into(), cost.into());
        }
        u
    }
}

/// Writes into the channel; returns false when the client went away.
struct Writer {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: BytesMut,
    crlf: bool,
    split: bool,
    coalesce: bool,
    rng: rand::rngs::SmallRng,
    /// Output tokens written so far (billed).
    sent: u64,
}

impl Writer {
    fn event(&mut self, data: &[u8]) {
        let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        self.buf.extend_from_slice(b"data: ");
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(eol);
        self.buf.extend_from_slice(eol);
    }

    fn comment(&mut self) {
        let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        self.buf.extend_from_slice(b": OPENROUTER PROCESSING");
        self.buf.extend_from_slice(eol);
        self.buf.extend_from_slice(eol);
    }

    fn chunk(&mut self, c: &ChatChunk) {
        let json = serde_json::to_vec(c).unwrap_or_default();
        self.event(&json);
    }

    /// Sends what is buffered: split in two writes at a random byte when asked.
    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let mut out = self.buf.split().freeze();
        if self.split && out.len() > 1 {
            let at = self.rng.random_range(1..out.len());
            let head = out.split_to(at);
            if self.tx.send(Ok(head)).await.is_err() {
                return false;
            }
            tokio::task::yield_now().await;
        }
        self.tx.send(Ok(out)).await.is_ok()
    }

    /// Waits `d`, sending keep-alive comments every `keepalive` meanwhile; false if the
    /// client went away.
    async fn wait(&mut self, d: Duration, keepalive: Option<Duration>) -> bool {
        if d.is_zero() && self.coalesce {
            return true;
        }
        if !self.flush().await {
            return false;
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let next = match keepalive {
                Some(k) => (tokio::time::Instant::now() + k).min(deadline),
                None => deadline,
            };
            tokio::select! {
                _ = self.tx.closed() => return false,
                _ = tokio::time::sleep_until(next) => {}
            }
            if next >= deadline {
                return true;
            }
            self.comment();
            if !self.flush().await {
                return false;
            }
        }
    }
}

pub(crate) async fn write_answer(
    scenario: Scenario,
    counters: Arc<Counters>,
    plan: Plan,
    meta: AnswerMeta,
    stream: bool,
    split_seed: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let keepalive = (scenario.keepalive_ms > 0.0).then(|| scenario.scaled(scenario.keepalive_ms));
    let keepalive = keepalive.filter(|k| !k.is_zero());
    let mut w = Writer {
        tx,
        buf: BytesMut::new(),
        crlf: scenario.crlf,
        split: scenario.split_writes,
        coalesce: scenario.coalesce_writes,
        rng: rand::SeedableRng::seed_from_u64(split_seed),
        sent: 0,
    };
    let finished = if stream {
        stream_answer(&mut w, &plan, &meta, keepalive).await
    } else {
        json_answer(&mut w, &plan, &meta).await
    };
    let sent = if finished && !stream {
        meta.pieces.len() as u64
    } else {
        w.sent
    };
    counters.bill(&meta.price, meta.prompt_tokens, sent);
    counters.close(!finished);
}

async fn stream_answer(
    w: &mut Writer,
    plan: &Plan,
    meta: &AnswerMeta,
    keepalive: Option<Duration>,
) -> bool {
    if keepalive.is_some() {
        // OpenRouter often sends a comment at once, before the provider answers.
        w.comment();
    }
    if plan.outcome == Outcome::Hang {
        if !w.flush().await {
            return false;
        }
        w.tx.closed().await;
        return false;
    }
    let cut = match plan.outcome {
        Outcome::Answer { cut } => cut,
        _ => None,
    };
    if !w.wait(plan.ttft, keepalive).await {
        return false;
    }
    w.chunk(&meta.chunk(
        Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            ..Delta::default()
        },
        None,
    ));
    for (i, piece) in (0u32..).zip(&meta.pieces) {
        if i > 0 && !w.wait(plan.gaps[i as usize], None).await {
            return false;
        }
        w.chunk(&meta.chunk(
            Delta {
                role: Some("assistant".into()),
                content: Some(piece.clone()),
                ..Delta::default()
            },
            None,
        ));
        w.sent += 1;
        if let Some((how, after)) = cut {
            if i + 1 == after {
                return cut_stream(w, how, meta).await;
            }
        }
    }
    w.chunk(&meta.chunk(
        Delta {
            content: Some(String::new()),
            ..Delta::default()
        },
        Some("stop"),
    ));
    let mut usage_chunk = meta.chunk(Delta::default(), None);
    usage_chunk.choices.clear();
    usage_chunk.usage = Some(meta.usage(meta.pieces.len() as u64));
    w.chunk(&usage_chunk);
    w.event(b"[DONE]");
    w.flush().await
}

async fn cut_stream(w: &mut Writer, how: Cut, meta: &AnswerMeta) -> bool {
    match how {
        Cut::Hang => {
            // What was sent goes out; then nothing, until the client gives up.
            if !w.flush().await {
                return false;
            }
            w.tx.closed().await;
            false
        }
        Cut::ErrorEvent | Cut::ErrorEventEof => {
            let mut c = meta.chunk(
                Delta {
                    content: Some(String::new()),
                    ..Delta::default()
                },
                Some("error"),
            );
            c.error = Some(json!({"code": 502, "message": "Provider disconnected",
                "metadata": {"error_type": "provider_unavailable", "provider_name": meta.provider}}));
            w.chunk(&c);
            if how == Cut::ErrorEvent {
                w.event(b"[DONE]");
            }
            w.flush().await
        }
        Cut::Reset => {
            if !w.flush().await {
                return false;
            }
            // Let hyper take every frame and write it out first: it aborts the connection
            // on a body error without flushing what it holds, which would turn this
            // mid-stream cut into a reset before the first token.
            while w.tx.capacity() < w.tx.max_capacity() {
                if w.tx.is_closed() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            // An error item makes hyper abort the connection: no terminator, no clean end.
            w.tx.send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "mock truncation",
            )))
            .await
            .is_ok()
        }
    }
}

async fn json_answer(w: &mut Writer, plan: &Plan, meta: &AnswerMeta) -> bool {
    let total = plan.ttft + plan.gaps.iter().skip(1).sum::<Duration>();
    let send = |w: &mut Writer, body: serde_json::Value| {
        w.buf.extend_from_slice(body.to_string().as_bytes());
    };
    if plan.outcome == Outcome::Hang {
        w.tx.closed().await;
        return false;
    }
    // A zero delay answers at once: a timer would round it up to the next millisecond.
    if !total.is_zero() {
        tokio::select! {
            _ = w.tx.closed() => return false,
            _ = tokio::time::sleep(total) => {}
        }
    }
    let cut = match plan.outcome {
        Outcome::Answer { cut } => cut,
        _ => None,
    };
    match cut {
        // A whole answer that hangs midway never comes.
        Some((Cut::Hang, _)) => {
            w.tx.closed().await;
            return false;
        }
        Some((Cut::Reset, _)) => {
            let _ =
                w.tx.send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock truncation",
                )))
                .await;
            return true;
        }
        Some((Cut::ErrorEvent | Cut::ErrorEventEof, after)) => {
            let partial: String = meta
                .pieces
                .iter()
                .take(after as usize)
                .map(String::as_str)
                .collect();
            send(
                w,
                json!({
                    "id": meta.id, "object": "chat.completion", "created": meta.created,
                    "model": meta.model, "provider": meta.provider,
                    "choices": [{"index": 0, "finish_reason": "error", "native_finish_reason": "error",
                        "message": {"role": "assistant", "content": partial},
                        "error": {"code": 502, "message": "Provider disconnected",
                            "metadata": {"error_type": "provider_unavailable", "provider_name": meta.provider}}}],
                    "usage": meta.usage(u64::from(after)),
                }),
            );
        }
        None => {
            let text: String = meta.pieces.concat();
            send(
                w,
                json!({
                    "id": meta.id, "object": "chat.completion", "created": meta.created,
                    "model": meta.model, "provider": meta.provider,
                    "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "stop",
                        "message": {"role": "assistant", "content": text}}],
                    "usage": meta.usage(meta.pieces.len() as u64),
                }),
            );
        }
    }
    w.flush().await
}
