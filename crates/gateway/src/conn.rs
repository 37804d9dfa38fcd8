//! Serving accepted connections: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart
//! by peeking at the first bytes, and a graceful shutdown that waits for every connection.
//!
//! Limits, so that a socket that never speaks holds nothing for long: at most
//! `max_connections` at once (one more is closed as it is accepted); a deadline on every
//! connection's first request whatever its protocol (HTTP/1.1 heads by hyper's header
//! timeout, HTTP/2 and a preface still arriving by [`Activity`]); HTTP/2 keep-alive pings and
//! an idle limit (no stream open for as long as the head timeout: GOAWAY); a cap on the
//! streams of one HTTP/2 connection.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

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
    limits: Limits,
    tls: crate::tls::TlsSlot,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    // One channel both ways: the flag tells connections to finish, and the server waits
    // until every connection's receiver is gone.
    let (stopping, stopped) = watch::channel(false);
    tokio::pin!(stop);
    let mut warned: Option<tokio::time::Instant> = None;
    let mut refused_said: Option<tokio::time::Instant> = None;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        // Over the cap: closed now, before a byte of it is read.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("llm_gateway_connections_refused_total").increment(1);
            let now = tokio::time::Instant::now();
            if refused_said
                .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(60))
            {
                tracing::warn!(
                    max = limits.max_connections,
                    "connection refused: --max-connections are open"
                );
                refused_said = Some(now);
            }
            drop(tcp);
            continue;
        };
        // Small SSE events must leave when written, not wait for the last one's ACK.
        let _ = tcp.set_nodelay(true);
        // The acceptor in force now (a reload may have swapped the certificate).
        let tls = llm_layers_core::sync::read(&tls).clone();
        tokio::spawn(connection(
            tcp,
            tls,
            app.clone(),
            limits,
            stopped.clone(),
            slot,
        ));
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

/// What limits connections (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The deadline of a connection's first bytes and first request, of every HTTP/1.1
    /// request head, and an HTTP/2 connection's idle limit.
    pub(crate) head_timeout: Duration,
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Streams at once on one HTTP/2 connection.
    pub(crate) max_streams: u32,
}

/// How often an HTTP/2 connection is pinged, and how long its answer may take.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Serves one connection: over TLS when `tls` is set (in the version ALPN chose), else in
/// the version its first bytes show; `_slot` is its place under `max_connections`, given back
/// when it ends.
async fn connection(
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let head_timeout = limits.head_timeout;
    if let Some(acceptor) = tls {
        // Boxed: a plain connection's task would otherwise be the size of a TLS one (the
        // handshake and a TLS stream inline: +4.5 KiB resident per HTTP/1.1 connection).
        return Box::pin(tls_connection(tcp, acceptor, app, limits, stopped)).await;
    }
    let mut first = [0u8; PREFACE.len()];
    let peeked = tokio::select! {
        p = tokio::time::timeout(head_timeout, tcp.peek(&mut first)) => p,
        () = until_stopped(&mut stopped) => return,
    };
    // Closed, failed or silent before its first byte: nothing to serve.
    let Ok(Ok(n @ 1..)) = peeked else { return };
    serve_io(
        TokioIo::new(tcp),
        version_of(&first[..n]),
        app,
        limits,
        stopped,
    )
    .await;
}

/// Serves one connection over TLS, in the version ALPN chose; the handshake is part of the
/// first request's deadline.
async fn tls_connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let handshake = tokio::select! {
        h = tokio::time::timeout(limits.head_timeout, acceptor.accept(tcp)) => h,
        () = until_stopped(&mut stopped) => return,
    };
    let Ok(Ok(stream)) = handshake else {
        metrics::counter!("llm_gateway_tls_handshakes_failed_total").increment(1);
        return;
    };
    let version = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Version::Http2,
        Some(_) => Version::Http1,
        // No ALPN: HTTP/1.1, or HTTP/2 with prior knowledge; the auto builder tells.
        None => Version::Unsure,
    };
    serve_io(TokioIo::new(stream), version, app, limits, stopped).await;
}

/// Serves `io` in `version` until it ends or the server stops.
async fn serve_io<I>(
    io: TokioIo<I>,
    version: Version,
    app: Router,
    limits: Limits,
    stopped: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let head_timeout = limits.head_timeout;
    match version {
        // The task of every HTTP/1.1 connection holds this arm's state while it lives, so
        // it keeps nothing it does not need: the builder is gone before the first await, and
        // the driver has no timer of its own (hyper's head timeout is the deadline).
        Version::Http1 => {
            let conn = {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(head_timeout);
                builder.serve_connection(io, TowerToHyperService::new(app))
            };
            drive_plain(std::pin::pin!(conn), stopped, |c| c.graceful_shutdown()).await;
        }
        // Boxed, so that the task of every HTTP/1.1 connection is not the size of these: it
        // was 3.6 KiB with both inline and is 1.0 KiB now (an HTTP/1.1 connection is
        // 0.6 KiB). An HTTP/2 connection carries many streams, and the rest is rare.
        Version::Http2 => {
            let activity = Arc::new(Activity::new(head_timeout));
            let svc = TowerToHyperService::new(Tracked {
                inner: app,
                activity: activity.clone(),
            });
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .max_concurrent_streams(limits.max_streams);
            let mut conn = Box::pin(builder.serve_connection(io, svc));
            drive(conn.as_mut(), stopped, Some(&activity), |c| {
                c.graceful_shutdown()
            })
            .await;
        }
        Version::Unsure => {
            let activity = Arc::new(Activity::new(head_timeout));
            let svc = TowerToHyperService::new(Tracked {
                inner: app,
                activity: activity.clone(),
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .max_concurrent_streams(limits.max_streams);
            let mut conn = Box::pin(builder.serve_connection(io, svc));
            drive(conn.as_mut(), stopped, Some(&activity), |c| {
                c.graceful_shutdown()
            })
            .await;
        }
    }
}

/// What a connection has been doing, for its first-request deadline and its idle limit:
/// whether it made a request, how many of its responses are still open, since when none is.
#[derive(Debug)]
struct Activity {
    limit: Duration,
    started: Instant,
    served: AtomicBool,
    open: AtomicUsize,
    /// Milliseconds after `started` at which the last open response ended.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new(limit: Duration) -> Activity {
        Activity {
            limit,
            started: Instant::now(),
            served: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// When the connection may be closed if nothing changes: its first-request deadline
    /// until it made a request, then the idle limit after its last response ended; `None`
    /// while a response is open.
    fn deadline(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.started + since + self.limit)
    }

    fn opened(&self) {
        self.served.store(true, Ordering::Release);
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    fn closed(&self) {
        let since = Instant::now().saturating_duration_since(self.started);
        self.idle_since_ms
            .store(since.as_millis() as u64, Ordering::Release);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The app, counting the responses of one connection open (from the request until its
/// body is done or dropped) in its [`Activity`].
#[derive(Clone)]
struct Tracked {
    inner: Router,
    activity: Arc<Activity>,
}

impl<B> tower::Service<http::Request<B>> for Tracked
where
    Router: tower::Service<
            http::Request<B>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
    <Router as tower::Service<http::Request<B>>>::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let open = OpenResponse::new(self.activity.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| {
                axum::body::Body::new(TrackedBody {
                    inner: body,
                    _open: open,
                })
            }))
        })
    }
}

/// One open response of a connection: counted from the request until dropped.
struct OpenResponse(Arc<Activity>);

impl OpenResponse {
    fn new(activity: Arc<Activity>) -> OpenResponse {
        activity.opened();
        OpenResponse(activity)
    }
}

impl Drop for OpenResponse {
    fn drop(&mut self) {
        self.0.closed();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection's response open until it is dropped.
    struct TrackedBody {
        #[pin]
        inner: axum::body::Body,
        _open: OpenResponse,
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once the server is stopping (or gone). The flag's read guard ends here: it must
/// not be held across the connection's graceful end.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// How long a connection told to go away (GOAWAY, or the end of its keep-alive) has to
/// end before it is dropped.
const GOING: Duration = Duration::from_secs(1);

/// Runs `conn` to its end, starting its graceful shutdown (`shutdown`) once `stopped` says
/// so, or once `activity` says it made no request by its deadline or sat idle past it.
async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    mut stopped: watch::Receiver<bool>,
    activity: Option<&Activity>,
    shutdown: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let ended = loop {
        // While a response is open, look again after a limit's worth of time.
        let limit = activity.map_or(Duration::MAX, |a| a.limit);
        let check = activity.map(|a| a.deadline().unwrap_or_else(|| Instant::now() + limit));
        tokio::select! {
            r = conn.as_mut() => break r,
            () = until_stopped(&mut stopped) => {
                shutdown(conn.as_mut());
                break conn.await;
            }
            () = sleep_until_some(check) => {
                let Some(a) = activity else { continue };
                if a.deadline().is_some_and(|d| d <= Instant::now()) {
                    // Silent before its first request: closed now (it may not even have
                    // said which protocol it speaks). Idle with no stream: told to go away,
                    // and dropped if it does not.
                    if !a.served.load(Ordering::Acquire) {
                        return;
                    }
                    shutdown(conn.as_mut());
                    match tokio::time::timeout(GOING, conn.as_mut()).await {
                        Ok(r) => break r,
                        Err(_) => return,
                    }
                }
            }
        }
    };
    said_ended(ended);
}

/// [`drive`] for a connection with no [`Activity`] to watch: runs `conn` to its end, starting
/// its graceful shutdown once `stopped` says so. No timer, so no room for one in the task of
/// every HTTP/1.1 connection (256 bytes for this future, 424 for `drive`).
async fn drive_plain<C, E>(
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
    said_ended(ended);
}

fn said_ended<E: std::fmt::Display>(ended: Result<(), E>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

    /// Every open connection is a task of this future's size: the rare cases (TLS, HTTP/2,
    /// a version still unsure) must stay boxed, or each plain HTTP/1.1 connection pays for
    /// them (the TLS path inline cost 4.5 KiB resident per connection).
    #[tokio::test]
    async fn a_plain_connection_task_is_not_the_size_of_the_rare_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_stopping, stopped) = watch::channel(false);
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let limits = Limits {
            head_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_streams: 1,
        };
        let task = connection(tcp, None, Router::new(), limits, stopped, slot);
        let size = std::mem::size_of_val(&task);
        // An HTTP/1.1 connection inline, the rest boxed: 1.27 KiB (debug and release alike;
        // 1.53 KiB with the builder kept and a driver with room for a timer, 6.4 KiB with the
        // TLS path inline).
        assert!(size <= 1344, "a connection task is {size} bytes");
    }
}
