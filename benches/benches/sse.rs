//! SSE parsing throughput: llm-layers' `SseParser` side by side with `eventsource-stream` and
//! `sse-stream`, on OpenRouter-like chunk events delivered in reads of 64 B, 1460 B (one TCP
//! segment) and 16 KiB. Each parser gets the same `Bytes` slices and must find every event.
//!
//! Then the chunk codec on the same events: the stream decoder (which parses the head a
//! stream repeats once) against parsing each event on its own with `decode_event_str`, and
//! `ChatChunk::write_json` (and `ChunkWriter`, which writes the repeated head once) against
//! `serde_json::to_writer` for re-encoding them.
//!
//! `cargo bench -p llm-layers-bench --bench sse` (`-- chunk/` for the codec alone)
//!
//! Wall time on this VM drifts by more than the codec's differences; instructions do not.
//! `CODEC_ONLY=<arm> CODEC_ROUNDS=<n>` runs only that codec arm, `n` times over the 4,000
//! events (after the same set-up), to be counted by valgrind: the difference between 1 and 0
//! rounds, over 4,000, is the arm's instructions per event (`benches/codec-instructions.sh`
//! does it for every arm). Arms: `decode-alone`, `decode-stream`, `encode-serde`,
//! `encode-write-json`, `encode-writer`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use eventsource_stream::Eventsource;
use futures_util::Stream;
use llm_layers_core::decode::{SseChatDecoder, decode_event_str};
use llm_layers_core::sse::SseParser;
use llm_layers_core::{ChatChunk, ChunkWriter};

const EVENTS: usize = 4_000;

/// About 1 MiB of events as OpenRouter streams them, with a keep-alive comment now and then.
fn payload() -> Bytes {
    let mut s = String::new();
    for i in 0..EVENTS {
        if i % 500 == 0 {
            s.push_str(": OPENROUTER PROCESSING\n\n");
        }
        s.push_str(&format!(
            "data: {{\"id\":\"gen-1732456789-AbCdEfGhIjKlMnOpQrSt\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o-mini\",\"object\":\"chat.completion.chunk\",\"created\":1732456789,\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\" token{i}\"}},\"finish_reason\":null,\"native_finish_reason\":null,\"logprobs\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

fn chunks(all: &Bytes, size: usize) -> Vec<Bytes> {
    (0..all.len())
        .step_by(size)
        .map(|i| all.slice(i..(i + size).min(all.len())))
        .collect()
}

/// Drains a stream that is always ready (its source is in memory), counting items.
fn drain<S: Stream<Item = Result<T, E>> + Unpin, T, E: std::fmt::Debug>(mut s: S) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    loop {
        match Pin::new(&mut s).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(_))) => n += 1,
            Poll::Ready(Some(Err(e))) => panic!("{e:?}"),
            Poll::Ready(None) => return n,
            Poll::Pending => unreachable!("in-memory source"),
        }
    }
}

/// Feeds `chunks` to our parser; counts the events `f` says yes to.
fn each_event(chunks: &[Bytes], mut f: impl FnMut(&str) -> bool) -> usize {
    let mut p = SseParser::new();
    let mut n = 0;
    for c in chunks {
        p.push(c.clone());
        while let Some(ev) = p.next_event() {
            if f(ev.unwrap().data()) {
                n += 1;
            }
        }
    }
    n
}

fn ours(chunks: &[Bytes]) -> usize {
    each_event(chunks, |_| true)
}

fn source(chunks: &[Bytes]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin + '_ {
    futures_util::stream::iter(chunks.iter().cloned().map(Ok))
}

fn bench(c: &mut Criterion) {
    let all = payload();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(all.len() as u64));
    for size in [64, 1460, 16 * 1024] {
        let chunks = chunks(&all, size);
        let expected = EVENTS + 1;
        assert_eq!(ours(&chunks), expected);
        assert_eq!(drain(source(&chunks).eventsource()), expected);
        assert_eq!(
            drain(sse_stream::SseStream::from_bytes_stream(source(&chunks))),
            expected
        );
        g.bench_function(format!("llm-layers/{size}B"), |b| b.iter(|| ours(&chunks)));
        g.bench_function(format!("eventsource-stream/{size}B"), |b| {
            b.iter(|| drain(source(&chunks).eventsource()))
        });
        g.bench_function(format!("sse-stream/{size}B"), |b| {
            b.iter(|| drain(sse_stream::SseStream::from_bytes_stream(source(&chunks))))
        });
    }
    g.finish();
}

/// Every event parsed on its own (no head carried from one to the next).
fn each_alone(chunks: &[Bytes]) -> usize {
    each_event(chunks, |data| decode_event_str(data).unwrap().is_some())
}

fn decoder(chunks: &[Bytes]) -> usize {
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks
            .iter()
            .cloned()
            .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))),
    ));
    drain(SseChatDecoder::new(body))
}

fn codec(c: &mut Criterion) {
    let all = payload();
    let chunks = chunks(&all, 1460);
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Elements(EVENTS as u64));
    assert_eq!(each_alone(&chunks), EVENTS);
    assert_eq!(decoder(&chunks), EVENTS);
    g.bench_function("decode/each event alone", |b| {
        b.iter(|| each_alone(&chunks))
    });
    g.bench_function("decode/stream decoder (head once)", |b| {
        b.iter(|| decoder(&chunks))
    });
    let parsed = parsed(&all);
    let mut out = Vec::with_capacity(512);
    for (name, _, encode) in ENCODERS {
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| encode(&parsed, &mut out))
        });
    }
    g.finish();
}

/// Every event of `all`, parsed.
fn parsed(all: &Bytes) -> Vec<ChatChunk> {
    let mut p = SseParser::new();
    p.push(all.clone());
    std::iter::from_fn(|| p.next_event())
        .filter_map(|ev| decode_event_str(ev.unwrap().data()).unwrap())
        .collect()
}

/// An encoder arm: writes each chunk of a stream into `out`, one after the other.
type Encode = fn(&[ChatChunk], &mut Vec<u8>);

/// The encoder arms: criterion's name and `CODEC_ONLY`'s.
const ENCODERS: [(&str, &str, Encode); 3] = [
    ("serde_json::to_writer", "encode-serde", |chunks, out| {
        for c in chunks {
            out.clear();
            serde_json::to_writer(&mut *out, c).unwrap();
        }
    }),
    (
        "ChatChunk::write_json",
        "encode-write-json",
        |chunks, out| {
            for c in chunks {
                out.clear();
                c.write_json(out);
            }
        },
    ),
    ("ChunkWriter (head once)", "encode-writer", |chunks, out| {
        let mut writer = ChunkWriter::default();
        for c in chunks {
            out.clear();
            writer.write(c, out);
        }
    }),
];

/// One codec arm, `rounds` times over the events (see the module docs).
fn codec_only(arm: &str, rounds: usize) {
    let all = payload();
    let chunks = chunks(&all, 1460);
    let parsed = parsed(&all);
    let mut out = Vec::with_capacity(512);
    for _ in 0..rounds {
        match arm {
            "decode-alone" => assert_eq!(each_alone(&chunks), EVENTS),
            "decode-stream" => assert_eq!(decoder(&chunks), EVENTS),
            _ => {
                let (_, _, encode) = ENCODERS
                    .iter()
                    .find(|(_, name, _)| *name == arm)
                    .unwrap_or_else(|| panic!("CODEC_ONLY={arm} is not an arm"));
                encode(&parsed, &mut out);
                std::hint::black_box(&out);
            }
        }
    }
}

criterion_group!(benches, bench, codec);

fn main() {
    if let Ok(arm) = std::env::var("CODEC_ONLY") {
        let rounds = std::env::var("CODEC_ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        codec_only(&arm, rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
