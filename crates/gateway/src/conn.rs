//! Serving accepted connections: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart
//! by peeking at the first bytes, and a graceful shutdown that waits for every connection.
//!
//! `axum::serve` (hyper-util's auto builder) reads the first 24 bytes to look for the HTTP/2
//! preface and hands them to the HTTP/1.1 connection through a rewind buffer. hyper's read
//! buffer then holds those 24 bytes when it reserves 8 KiB for the rest of the head, which
//! `BytesMut` rounds up by doubling: every HTTP/1.1 connection held a 16 KiB read buffer
//! where 8 KiB does. A peek leaves the bytes in the socket, so hyper reads the whole head
//! into one 8 KiB buffer. (axum's serve also rebuilt the router's route table for every
//! connection, ≈ 4.8 KiB and 25 allocations; a clone of a `Router` is one `Arc`.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Http1,
    Http2,
    /// Fewer bytes than the preface arrived so far, all of them the preface's: hyper-util's
    /// auto builder reads on until it knows.
    Unsure,
}

/// Tells the version from `first`, the bytes a peek saw (at least one).
fn version_of(first: &[u8]) -> Version {
    if first != &PREFACE[..first.len()] {
        Version::Http1
    } else if first.len() == PREFACE.len() {
        Version::Http2
    } else {
        Version::Unsure
    }
}

/// Accepts connections on `listener` and serves `app` on each until `stop` resolves; then
/// stops accepting, asks every connection to finish gracefully (an HTTP/1.1 connection closes
/// after its answer in flight, an HTTP/2 one sends GOAWAY and ends its open streams) and
/// waits for all of them to end. A connection whose first bytes, or an HTTP/1.1 request head
/// (the next one on a kept-alive connection included), take longer than `head_timeout` is
/// closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    head_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    // One channel both ways: the flag tells connections to finish, and the server waits
    // until every connection's receiver is gone.
    let (stopping, stopped) = watch::channel(false);
    tokio::pin!(stop);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let tcp = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) if is_per_connection(&e) => continue,
                // Out of descriptors (EMFILE) or memory: the error repeats at once, so
                // retrying at once would spin a core; wait for connections to close.
                Err(e) => {
                    // Said at most once a minute, not twenty times a second.
                    let now = tokio::time::Instant::now();
                    let minute = Duration::from_secs(60);
                    if warned.is_none_or(|w| now.saturating_duration_since(w) >= minute) {
                        tracing::warn!(error = %e, "accept failed; retrying every 50 ms");
                        warned = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small SSE events must leave when written, not wait for the last one's ACK.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(tcp, app.clone(), head_timeout, stopped.clone()));
    }
    drop(listener);
    let _ = stopping.send(true);
    drop(stopped);
    stopping.closed().await;
    Ok(())
}

/// An accept error that concerns one connection only (it went away before it was accepted).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection in the version its first bytes show.
async fn connection(
    tcp: TcpStream,
    app: Router,
    head_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut first = [0u8; PREFACE.len()];
    let peeked = tokio::select! {
        p = tokio::time::timeout(head_timeout, tcp.peek(&mut first)) => p,
        () = until_stopped(&mut stopped) => return,
    };
    // Closed, failed or silent before its first byte: nothing to serve.
    let Ok(Ok(n @ 1..)) = peeked else { return };
    let io = TokioIo::new(tcp);
    let svc = TowerToHyperService::new(app);
    match version_of(&first[..n]) {
        Version::Http1 => {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout);
            let conn = std::pin::pin!(builder.serve_connection(io, svc));
            drive(conn, stopped, |c| c.graceful_shutdown()).await;
        }
        // Boxed, so that the task of every HTTP/1.1 connection is not the size of these: it
        // was 3.6 KiB with both inline and is 1.0 KiB now (an HTTP/1.1 connection is
        // 0.6 KiB). An HTTP/2 connection carries many streams, and the rest is rare.
        Version::Http2 => {
            let builder = http2::Builder::new(TokioExecutor::new());
            let mut conn = Box::pin(builder.serve_connection(io, svc));
            drive(conn.as_mut(), stopped, |c| c.graceful_shutdown()).await;
        }
        Version::Unsure => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout);
            let mut conn = Box::pin(builder.serve_connection(io, svc));
            drive(conn.as_mut(), stopped, |c| c.graceful_shutdown()).await;
        }
    }
}

/// Resolves once the server is stopping (or gone). The flag's read guard ends here: it must
/// not be held across the connection's graceful end.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Runs `conn` to its end, starting its graceful shutdown (`shutdown`) once `stopped` says so.
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    mut stopped: watch::Receiver<bool>,
    shutdown: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = until_stopped(&mut stopped) => {
            shutdown(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_the_version() {
        assert_eq!(version_of(b"POST /v1/chat"), Version::Http1);
        assert_eq!(version_of(b"G"), Version::Http1);
        // "PRI" is not enough: an HTTP/1.1 method could start so.
        assert_eq!(version_of(b"PRI * HTTP/1.1\r\n"), Version::Http1);
        assert_eq!(version_of(b"P"), Version::Unsure);
        assert_eq!(version_of(&PREFACE[..23]), Version::Unsure);
        assert_eq!(version_of(PREFACE), Version::Http2);
    }
}
