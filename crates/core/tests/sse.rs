//! The SSE parser against the event-stream rules of the WHATWG HTML standard (§9.2.6:
//! `data:` lines joined by `\n`, comments ignored, CR/LF/CRLF line ends), split at every byte
//! boundary and re-chunked arbitrarily.

use bytes::Bytes;
use llm_layers_core::sse::{SseError, SseParser};
use proptest::prelude::*;

#[derive(Debug, PartialEq, Eq, Clone)]
enum Out {
    Ev(String),
    Err(SseError),
}

fn run(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<Out> {
    let mut out = Vec::new();
    for c in chunks {
        parser.push(Bytes::copy_from_slice(c));
        while let Some(ev) = parser.next_event() {
            out.push(match ev {
                Ok(e) => Out::Ev(e.data().to_owned()),
                Err(e) => Out::Err(e),
            });
        }
    }
    parser.finish();
    out
}

fn parse(chunks: &[&[u8]]) -> Vec<Out> {
    run(&mut SseParser::new(), chunks)
}

fn ev(s: &str) -> Out {
    Out::Ev(s.to_owned())
}

/// Feeds `input` split at every single position (two chunks), and byte by byte, and checks
/// every way gives `expected`.
fn check_all_splits(input: &[u8], expected: &[Out]) {
    assert_eq!(parse(&[input]), expected, "whole input");
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(parse(&[a, b]), expected, "split at {i}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(parse(&bytes), expected, "byte by byte");
}

struct Vector {
    chunks: &'static [&'static [u8]],
    expected: Vec<Out>,
}

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            chunks: &[b"data: A\r\n", b"data: B\r", b"\ndata: C\r\n", b"\r\n"],
            expected: vec![ev("A\nB\nC")],
        },
        Vector {
            chunks: &[b"data: \xe4\xbd", b"\xa0\n\n"],
            expected: vec![ev("你")],
        },
        Vector {
            chunks: &[b": OPENROUTER PROCESSING\n\ndata: {\"a\":1}\n\ndata: [DONE]\n\n"],
            expected: vec![ev("{\"a\":1}"), ev("[DONE]")],
        },
        Vector {
            chunks: &[b"data\n\ndata:nospace\n\n"],
            expected: vec![ev(""), ev("nospace")],
        },
        Vector {
            chunks: &[b"id: a\0b\ndata: i\n\n"],
            expected: vec![ev("i")],
        },
        Vector {
            chunks: &[b"data: tail\n"],
            expected: vec![],
        },
        Vector {
            chunks: &[b"retry: +5\ndata: r\n\n"],
            expected: vec![ev("r")],
        },
        Vector {
            chunks: &[b"\xEF\xBB\xBFdata: x\n\n"],
            expected: vec![ev("x")],
        },
        Vector {
            chunks: &[b"data: a\rdata: b\r\r"],
            expected: vec![ev("a\nb")],
        },
        Vector {
            chunks: &[b"data: \xff\xfe\n\n", b"data: after\n\n"],
            expected: vec![Out::Err(SseError::InvalidUtf8), ev("after")],
        },
    ]
}

#[test]
fn wire_vectors_as_given() {
    for v in vectors() {
        assert_eq!(parse(v.chunks), v.expected, "{:?}", v.chunks);
    }
}

#[test]
fn wire_vectors_split_at_every_byte() {
    for v in vectors() {
        let whole: Vec<u8> = v.chunks.concat();
        check_all_splits(&whole, &v.expected);
    }
}

#[test]
fn id_and_retry_fields() {
    let mut p = SseParser::new();
    let out = run(
        &mut p,
        &[b"id: 7\nretry: 1500\ndata: x\n\nid: a\0b\nretry: +5\ndata: y\n\n"],
    );
    assert_eq!(out, vec![ev("x"), ev("y")]);
    assert_eq!(p.last_event_id(), Some("7"), "an id with NUL is ignored");
    assert_eq!(p.retry(), Some(1500), "a retry with a sign is ignored");
}

#[test]
fn event_type_and_unknown_fields() {
    let mut p = SseParser::new();
    p.push(Bytes::from_static(
        b"event: error\nfoo: bar\ndata: x\n\ndata: y\n\n",
    ));
    let first = p.next_event().unwrap().unwrap();
    assert_eq!(first.event_type(), Some("error"));
    assert_eq!(first.data(), "x");
    let second = p.next_event().unwrap().unwrap();
    assert_eq!(second.event_type(), None, "the type resets after dispatch");
}

#[test]
fn only_one_space_is_stripped_and_bom_only_at_start() {
    assert_eq!(parse(&[b"data:  two\n\n"]), vec![ev(" two")]);
    // A BOM that is not at the very start is content (and then not a valid field name).
    assert_eq!(
        parse(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]),
        vec![ev("a")]
    );
    // A lone partial BOM followed by other bytes is content.
    assert_eq!(parse(&[b"\xEF", b"data: a\n\n"]), vec![]);
}

#[test]
fn oversize_event_is_a_typed_error_and_memory_stays_bounded() {
    let limit = 1024;
    let mut p = SseParser::with_max_event_size(limit);
    let mut big = b"data: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 10 * limit));
    big.extend_from_slice(b"\ndata: more\n\ndata: next\n\n");
    let mut out = Vec::new();
    for c in big.chunks(100) {
        p.push(Bytes::copy_from_slice(c));
        assert!(p.buffered() <= limit, "buffered {} > {limit}", p.buffered());
        while let Some(e) = p.next_event() {
            out.push(e.map(|e| e.data().to_owned()));
        }
    }
    assert_eq!(
        out,
        vec![Err(SseError::Oversize { limit }), Ok("next".to_owned())],
        "the rest of the oversize event is skipped; the next one parses"
    );
    // The same in one chunk, and with many small data lines adding up.
    let mut p = SseParser::with_max_event_size(limit);
    let many: Vec<u8> = b"data: 0123456789\n"
        .repeat(200)
        .into_iter()
        .chain(*b"\ndata: ok\n\n")
        .collect();
    assert_eq!(
        run(&mut p, &[&many]),
        vec![Out::Err(SseError::Oversize { limit }), ev("ok")]
    );
}

#[test]
fn eight_mib_line_is_linear_in_one_byte_and_one_kib_chunks() {
    let n = 8 * 1024 * 1024;
    let mut input = Vec::with_capacity(n + 10);
    input.extend_from_slice(b"data: ");
    input.resize(n, b'a');
    input.extend_from_slice(b"\n\n");
    let input = Bytes::from(input);
    for chunk in [1usize, 1024] {
        let mut p = SseParser::with_max_event_size(16 * 1024 * 1024);
        let mut events = 0;
        let mut i = 0;
        while i < input.len() {
            let end = (i + chunk).min(input.len());
            p.push(input.slice(i..end));
            while let Some(e) = p.next_event() {
                assert_eq!(e.unwrap().data().len(), n - 6);
                events += 1;
            }
            i = end;
        }
        assert_eq!(events, 1);
        // Work is counted, not timed: every byte was scanned exactly once.
        assert_eq!(p.bytes_scanned(), input.len() as u64, "chunk size {chunk}");
    }
}

fn rechunk(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for c in cuts {
        out.push(input[last..c].to_vec());
        last = c;
    }
    out.push(input[last..].to_vec());
    out
}

fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"data: hello".to_vec()),
        Just(b"data:x".to_vec()),
        Just(b"data".to_vec()),
        Just(b": OPENROUTER PROCESSING".to_vec()),
        Just("data: 你好 ünï".as_bytes().to_vec()),
        Just(b"event: e".to_vec()),
        Just(b"id: 1".to_vec()),
        Just(b"retry: 10".to_vec()),
        Just(b"".to_vec()),
        Just(b"data: \xff".to_vec()),
    ];
    let eol = prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec())
    ];
    (any::<bool>(), prop::collection::vec((line, eol), 0..30)).prop_map(|(bom, lines)| {
        let mut v = if bom {
            b"\xEF\xBB\xBF".to_vec()
        } else {
            Vec::new()
        };
        for (l, e) in lines {
            v.extend(l);
            v.extend(e);
        }
        v
    })
}

proptest! {
    #[test]
    fn any_rechunking_yields_the_same_events(
        input in sse_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = parse(&[&input]);
        let chunks = rechunk(&input, &cuts);
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(parse(&refs), whole);
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded(
        input in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut p = SseParser::with_max_event_size(256);
        for c in rechunk(&input, &cuts) {
            p.push(Bytes::from(c));
            while let Some(ev) = p.next_event() {
                if let Ok(ev) = ev {
                    prop_assert!(ev.data().len() <= 256);
                }
            }
            prop_assert!(p.buffered() <= 256);
        }
        p.finish();
    }
}

/// A chunk read to its end is a slice of the HTTP client's read buffer: the parser must not
/// keep it while the stream idles, whole events or a cut line alike.
#[test]
fn a_chunk_read_to_its_end_is_let_go() {
    for input in [&b"data: a\n\n"[..], b"data: a\n\ndata: b", b"data: cut"] {
        let chunk = Bytes::from(input.to_vec());
        let mut p = SseParser::new();
        p.push(chunk.clone());
        while let Some(ev) = p.next_event() {
            drop(ev);
        }
        assert!(
            chunk.is_unique(),
            "{:?}: the parser still holds the chunk",
            String::from_utf8_lossy(input)
        );
    }
    // The cut line is kept (copied) and completed by the next chunk.
    let mut p = SseParser::new();
    assert_eq!(
        run(&mut p, &[b"data: c", b"ut\n\n"]),
        vec![Out::Ev("cut".into())]
    );
}

/// Input not yet parsed when the next chunk arrives is kept, in order; a chunk pushed after
/// the last one was read to its end is used as it is: a one-line event is a slice of it.
#[test]
fn push_keeps_unparsed_input_and_slices_a_fresh_chunk() {
    let mut p = SseParser::new();
    p.push(Bytes::from_static(b"data: a\n\ndata: b\n\n"));
    let first = p.next_event().expect("an event").expect("valid");
    assert_eq!(first.data(), "a");
    // "data: b" is still unparsed: the next push must not replace it.
    p.push(Bytes::from_static(b"data: c\n\n"));
    let rest: Vec<String> = std::iter::from_fn(|| p.next_event())
        .map(|e| e.expect("valid").data().to_owned())
        .collect();
    assert_eq!(rest, ["b", "c"]);

    let fresh = Bytes::from(b"data: zero-copy\n\n".to_vec());
    p.push(fresh.clone());
    let ev = p.next_event().expect("an event").expect("valid");
    assert_eq!(ev.data_bytes(), &Bytes::from_static(b"zero-copy"));
    let range = fresh.as_ptr() as usize..fresh.as_ptr() as usize + fresh.len();
    assert!(
        range.contains(&(ev.data_bytes().as_ptr() as usize)),
        "the event's data was copied out of the chunk it came in"
    );
}

/// The default bound is 4 MiB: an event just under it passes, one just over it does not.
#[test]
fn the_default_bound_is_four_mib() {
    assert_eq!(llm_layers_core::sse::DEFAULT_MAX_EVENT_SIZE, 4 << 20);
    let body = |n: usize| {
        let mut v = b"data: ".to_vec();
        v.resize(6 + n, b'x');
        v.extend_from_slice(b"\n\n");
        v
    };
    let under = body((4 << 20) - 64);
    assert!(matches!(&parse(&[&under])[..], [Out::Ev(d)] if d.len() == (4 << 20) - 64));
    let over = body(4 << 20);
    assert_eq!(
        parse(&[&over]),
        vec![Out::Err(SseError::Oversize { limit: 4 << 20 })]
    );
}

/// The errors say what went wrong and the bound, for logs and for the caller's message.
#[test]
fn errors_say_what_went_wrong() {
    assert_eq!(
        SseError::Oversize { limit: 1024 }.to_string(),
        "SSE event larger than 1024 bytes"
    );
    assert_eq!(
        SseError::InvalidUtf8.to_string(),
        "SSE event is not valid UTF-8"
    );
    let e: llm_layers_core::LlmError = SseError::Oversize { limit: 7 }.into();
    assert!(e.to_string().contains("larger than 7 bytes"), "{e}");
}

/// `finish` says whether input was left that made no event: a cut line, a data line or a
/// field without its blank line, input not yet parsed, an oversize event being skipped; a
/// clean end says false.
#[test]
fn finish_says_whether_a_partial_event_was_dropped() {
    let left = |input: &[u8], parse: bool, max: usize| {
        let mut p = SseParser::with_max_event_size(max);
        p.push(Bytes::copy_from_slice(input));
        if parse {
            while p.next_event().is_some() {}
        }
        p.finish()
    };
    assert!(!left(b"data: a\n\n", true, 64), "a clean end");
    assert!(!left(b"", true, 64), "nothing at all");
    assert!(left(b"data: a\n\n", false, 64), "input not parsed yet");
    assert!(left(b"data: ab", true, 64), "a cut line");
    assert!(left(b"data: a\n", true, 64), "one data line, no blank line");
    assert!(
        left(b"data: a\ndata: b\n", true, 64),
        "two data lines, no blank line"
    );
    assert!(
        left(b"event: x\n", true, 64),
        "a field, no data, no blank line"
    );
    assert!(
        left(b"data: 0123456789\n", true, 8),
        "an oversize event being skipped"
    );
    // finish forgets: a second finish has nothing left.
    let mut p = SseParser::new();
    p.push(Bytes::from_static(b"data: a\n"));
    assert!(p.next_event().is_none());
    assert!(p.finish());
    assert!(!p.finish());
}

/// `buffered` counts every byte held for partial lines and events.
#[test]
fn buffered_counts_cut_lines_and_unfinished_events() {
    let held = |input: &'static [u8]| {
        let mut p = SseParser::new();
        p.push(Bytes::from_static(input));
        while p.next_event().is_some() {}
        p.buffered()
    };
    assert_eq!(held(b"data: a\n\n"), 0);
    assert_eq!(held(b"data: abc"), 9, "the cut line");
    assert_eq!(
        held(b"data: ab\ndata"),
        2 + 4,
        "the first data line and the cut one"
    );
    assert_eq!(
        held(b"data: a\ndata: b\ndata: c"),
        3 + 7,
        "two data lines joined and the cut one"
    );
}

/// A cut line at the end of a chunk is measured by what is left of that chunk, not by where
/// it starts in it: the events before it in the chunk do not count against it.
#[test]
fn a_cut_line_after_events_in_its_chunk_counts_only_itself() {
    let mut p = SseParser::with_max_event_size(32);
    assert_eq!(
        run(&mut p, &[b"data: aaaaaaaaaa\n\ndata: bbbb", b"\n\n"]),
        vec![ev("aaaaaaaaaa"), ev("bbbb")]
    );
}

/// While the rest of an oversize event is skipped, a cut line of it is not kept either.
#[test]
fn the_rest_of_an_oversize_event_is_not_buffered() {
    let mut p = SseParser::with_max_event_size(16);
    p.push(Bytes::from_static(b"data: 0123456789abcdef\n"));
    assert_eq!(p.next_event(), Some(Err(SseError::Oversize { limit: 16 })));
    p.push(Bytes::from_static(b"data: partial"));
    assert!(p.next_event().is_none());
    assert_eq!(p.buffered(), 0, "a line of a skipped event is not kept");
    p.push(Bytes::from_static(b"\n\ndata: next\n\n"));
    assert_eq!(
        p.next_event().map(|e| e.map(|e| e.data().to_owned())),
        Some(Ok("next".into()))
    );
}

/// An event of exactly the limit passes, cut or whole; one byte more does not. Every line
/// counts its line end: three 10-byte lines are 33 bytes against the limit.
#[test]
fn the_limit_is_inclusive_and_counts_line_ends() {
    let exact = b"data: 0123456789";
    assert_eq!(exact.len(), 16);
    let whole: &[u8] = b"data: 0123456789\n\n";
    let cut: [&[u8]; 2] = [exact, b"\n\n"];
    for chunks in [&cut[..], &[whole][..]] {
        let mut p = SseParser::with_max_event_size(16);
        assert_eq!(run(&mut p, chunks), vec![ev("0123456789")], "{chunks:?}");
    }
    let three = b"data: aaaa\ndata: bbbb\ndata: cccc\n\n";
    let mut p = SseParser::with_max_event_size(30);
    assert_eq!(
        run(&mut p, &[three]),
        vec![Out::Err(SseError::Oversize { limit: 30 })],
        "11 + 11 + 10 bytes are past 30"
    );
    let mut p = SseParser::with_max_event_size(32);
    assert_eq!(run(&mut p, &[three]), vec![ev("aaaa\nbbbb\ncccc")]);
}
