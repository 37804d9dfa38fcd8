//! Connections: HTTP/1.1 and h2c on one port, pieces, shutdown, silent clients.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_http1_or_h2c_on_the_same_port() {
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), config()).await;
    for (name, c) in [("http/1.1", client()), ("h2c", h2c_client())] {
        for stream in [true, false] {
            let m = json!({"model": "m", "messages": [{"role": "user", "content": format!("{name} {stream}")}], "max_tokens": 4, "stream": stream});
            let r = post(&c, &gw, m.to_string()).await;
            let want = if name == "h2c" {
                hyper::Version::HTTP_2
            } else {
                hyper::Version::HTTP_11
            };
            assert_eq!(r.version(), want, "{name}");
            let text = answer_text(r, stream).await;
            assert_eq!(
                text,
                expected_answer(&body_of(&m), 4),
                "{name} stream={stream}"
            );
        }
    }
}

/// A connection whose first write sends one byte, and whose next write waits 50 ms: the
/// gateway sees a lone `P`, which could start the HTTP/2 preface or `POST`.
struct SplitFirstWrite {
    tcp: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    writes: usize,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::rt::Read for SplitFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SplitFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.writes += 1;
        let buf = match this.writes {
            1 => &buf[..1],
            2 => {
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                if pause.as_mut().poll(cx).is_pending() {
                    this.writes -= 1;
                    return std::task::Poll::Pending;
                }
                buf
            }
            _ => buf,
        };
        std::pin::Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_or_a_request_that_arrives_in_pieces_is_served() {
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), config()).await;
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "in pieces"}], "max_tokens": 3, "stream": true});
    let req = || {
        hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(m.to_string())))
            .unwrap()
    };
    let open = || async {
        SplitFirstWrite {
            tcp: hyper_util::rt::TokioIo::new(
                tokio::net::TcpStream::connect(gw.addr()).await.unwrap(),
            ),
            writes: 0,
            pause: None,
        }
    };
    // HTTP/2: "P", then the rest of the preface.
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), open().await)
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = send.send_request(req()).await.unwrap();
    assert_eq!(r.version(), hyper::Version::HTTP_2);
    assert_eq!(answer_text(r, true).await, expected_answer(&body_of(&m), 3));
    // HTTP/1.1: "P", then "OST /v1/chat/completions ...".
    let (mut send, conn) = hyper::client::conn::http1::handshake(open().await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = send.send_request(req()).await.unwrap();
    assert_eq!(r.version(), hyper::Version::HTTP_11);
    assert_eq!(answer_text(r, true).await, expected_answer(&body_of(&m), 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_stream_in_flight_at_shutdown_is_cut_with_an_error_event() {
    let (gw, _mock) = gateway_with_open_streams(60_000.0).await;
    let (version, last) = shut_down_mid_stream(&h2c_client(), gw).await;
    assert_eq!(version, hyper::Version::HTTP_2);
    assert_eq!(last["error"]["code"], "server_shutting_down");
}

/// A client that connects and says nothing, trickles a request head or leaves a keep-alive
/// connection idle loses its connection after `--header-read-timeout-ms`, not before; one that
/// sends its request in time is served.
#[tokio::test(start_paused = true)]
async fn silent_trickling_and_idle_clients_are_cut_at_the_head_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = Config {
        header_read_timeout: Duration::from_secs(5),
        ..config()
    };
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), cfg).await;
    let silent = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut trickle = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    trickle
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut conns = [("silent", silent), ("trickling", trickle)];
    // Still open just before the limit...
    for (name, s) in &mut conns {
        let mut buf = [0u8; 64];
        let early =
            tokio::time::timeout_at(started + Duration::from_millis(4_900), s.read(&mut buf)).await;
        assert!(early.is_err(), "{name}: closed before the head timeout");
    }
    // ...and closed after it (hyper may say 408 first).
    for (name, s) in &mut conns {
        let mut buf = Vec::new();
        tokio::time::timeout_at(started + Duration::from_secs(6), s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name}: still open a second after the head timeout"))
            .unwrap();
        let closed_at = tokio::time::Instant::now().saturating_duration_since(started);
        assert!(closed_at >= Duration::from_secs(5), "{name}: {closed_at:?}");
        let said = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || said.starts_with("HTTP/1.1 408"),
            "{name}: {said}"
        );
    }
    // A client that sends its request in time is served; its keep-alive connection may then
    // sit idle for as long, and no longer.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "in time"}], "max_tokens": 3, "stream": true});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(m.to_string())))
        .unwrap();
    let text = answer_text(send.send_request(req).await.unwrap(), true).await;
    assert_eq!(text, expected_answer(&body_of(&m), 3));
    let idle = tokio::time::Instant::now();
    let mut conn = conn;
    let early = tokio::time::timeout_at(idle + Duration::from_millis(4_900), &mut conn).await;
    assert!(early.is_err(), "an idle keep-alive connection closed early");
    tokio::time::timeout_at(idle + Duration::from_secs(6), conn)
        .await
        .expect("an idle keep-alive connection outlived the head timeout")
        .unwrap()
        .unwrap();
}

/// Reads until the peer closes, or panics if it is still open at `by`.
async fn closed_by(s: &mut tokio::net::TcpStream, by: tokio::time::Instant, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout_at(by, s.read_to_end(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open"))
        .ok();
    buf
}

/// Still open at `until`.
async fn open_until(s: &mut tokio::net::TcpStream, until: tokio::time::Instant, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return,
            Ok(Ok(0)) | Ok(Err(_)) => panic!("{what}: closed before {until:?}"),
            // The server's own SETTINGS: read on.
            Ok(Ok(_)) => {}
        }
    }
}

/// Sockets that speak a prefix of the HTTP/2 preface (one byte), or the preface and a
/// SETTINGS frame and then nothing, are closed at the first-request deadline (the head
/// timeout), like a silent HTTP/1.1 client; an HTTP/2 connection that made its request and
/// then sits with no stream is told to go away after as long.
#[tokio::test(start_paused = true)]
async fn http2_sockets_that_never_ask_or_sit_idle_are_closed() {
    use tokio::io::AsyncWriteExt;
    let cfg = Config {
        header_read_timeout: Duration::from_secs(5),
        max_streams_per_connection: 7,
        ..config()
    };
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), cfg).await;
    let started = tokio::time::Instant::now();
    let mut one_byte = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    one_byte.write_all(b"P").await.unwrap();
    let mut preface = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // The server's SETTINGS announce the cap on streams (SETTINGS_MAX_CONCURRENT_STREAMS).
    let mut head = [0u8; 9];
    tokio::io::AsyncReadExt::read_exact(&mut preface, &mut head)
        .await
        .unwrap();
    assert_eq!(head[3], 4, "a SETTINGS frame first");
    let mut payload = vec![
        0u8;
        usize::from(u16::from_be_bytes([head[1], head[2]]))
            + usize::from(head[0]) * 65536
    ];
    tokio::io::AsyncReadExt::read_exact(&mut preface, &mut payload)
        .await
        .unwrap();
    let streams = payload
        .chunks(6)
        .find(|e| e[..2] == [0, 3])
        .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
    assert_eq!(streams, Some(7));
    let early = started + Duration::from_millis(4_900);
    open_until(&mut one_byte, early, "one byte").await;
    open_until(&mut preface, early, "preface").await;
    let by = started + Duration::from_secs(7);
    closed_by(&mut one_byte, by, "one byte of the preface").await;
    closed_by(&mut preface, by, "the preface and SETTINGS").await;

    // A real HTTP/2 client: served, then idle, then told to go away.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "h2"}], "max_tokens": 3});
    let req = hyper::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(m.to_string())))
        .unwrap();
    let text = answer_text(send.send_request(req).await.unwrap(), false).await;
    assert_eq!(text, expected_answer(&body_of(&m), 3));
    let idle = tokio::time::Instant::now();
    let mut conn = conn;
    let early = tokio::time::timeout_at(idle + Duration::from_millis(4_900), &mut conn).await;
    assert!(early.is_err(), "an idle HTTP/2 connection closed early");
    tokio::time::timeout_at(idle + Duration::from_secs(7), conn)
        .await
        .expect("an idle HTTP/2 connection outlived the idle limit")
        .unwrap()
        .unwrap();
}

/// Past `--max-connections`, a connection is closed as it is accepted, before anything of
/// it is read; the ones open are served, and a place that frees up is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_accept() {
    use tokio::io::AsyncWriteExt;
    let cfg = Config {
        max_connections: 2,
        ..config()
    };
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), cfg).await;
    // Two kept-alive connections, each served once: both accepted and held.
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let get = hyper::Request::get("/healthz")
            .header("host", "gw")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send.send_request(get).await.unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap();
        held.push((send, conn));
    }
    let mut third = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let answer = closed_by(
        &mut third,
        tokio::time::Instant::now() + Duration::from_secs(5),
        "a third connection",
    )
    .await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // The two held are still served.
    for (send, _) in &mut held {
        let get = hyper::Request::get("/healthz")
            .header("host", "gw")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send.send_request(get).await.unwrap().status(), 200);
    }
    for (_, conn) in &held {
        conn.abort();
    }
    drop(held);
    // Their places are free again.
    let c = client();
    for _ in 0..20 {
        let r = c
            .get(format!("http://{}/healthz", gw.addr()).parse().unwrap())
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no place freed");
}
