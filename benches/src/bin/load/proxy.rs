//! The physical limit, as a row: a bare pass-through proxy (a hyper server and the same
//! hyper client the gateway uses, bytes forwarded untouched: no parsing, no layers) in front
//! of the same mock. What any gateway must pay for being a server and a client at once.

use std::convert::Infallible;

use http::Uri;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

type PassClient = Client<HttpConnector, Incoming>;

/// Serves on a loopback port, forwarding every request's body to `upstream`'s
/// `/chat/completions` and its answer back as it comes; prints `ready http://ADDR`.
pub(crate) fn child_proxy(upstream: &str) -> Result<(), String> {
    let target: Uri = format!("{upstream}/chat/completions")
        .parse()
        .map_err(|e| format!("bad upstream {upstream:?}: {e}"))?;
    runtime()?.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("ready http://{addr}");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: PassClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        let auth = HeaderValue::from_static("Bearer sk-or-v1-load");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (client, target, auth) = (client.clone(), target.clone(), auth.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (client, target, auth) = (client.clone(), target.clone(), auth.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        parts.uri = target;
                        parts.headers.insert(header::AUTHORIZATION, auth);
                        parts.headers.remove(header::HOST);
                        let answer = match client.request(Request::from_parts(parts, body)).await {
                            Ok(r) => r.map(http_body_util::Either::Left),
                            Err(_) => {
                                let mut r = http::Response::new(http_body_util::Either::Right(
                                    Full::new(Bytes::from_static(b"upstream failed")),
                                ));
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(answer)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
