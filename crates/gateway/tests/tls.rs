//! HTTPS on the listener: a certificate made at test time, a client that verifies it,
//! HTTP/2 by ALPN, and a reload that swaps the certificate for the next connection.

mod common;
use common::*;

use std::path::PathBuf;
use std::sync::Arc;

use hyper_rustls::HttpsConnector;

/// A self-signed certificate for `localhost` in `dir`: (cert path, key path, its DER).
fn certificate(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, signing_key.serialize_pem()).unwrap();
    (c, k, cert.der().to_vec())
}

/// A client that trusts `trusted` alone and offers HTTP/2 and HTTP/1.1 by ALPN.
fn https_client(trusted: &[u8]) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    https_client_as(trusted, true)
}

/// [`https_client`], offering HTTP/2 only when `h2`.
fn https_client_as(trusted: &[u8], h2: bool) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    let https = if h2 {
        https.enable_http2().build()
    } else {
        https.build()
    };
    Client::builder(TokioExecutor::new()).build(https)
}

async fn ask(
    c: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    port: u16,
) -> Result<(hyper::Version, String), String> {
    let m = json!({"model": "m", "messages": [{"role": "user", "content": "over tls"}], "max_tokens": 3});
    let req = hyper::Request::post(format!("https://localhost:{port}/v1/chat/completions"))
        .header("authorization", "Bearer sk-anything")
        .body(Full::new(Bytes::from(m.to_string())))
        .unwrap();
    let r = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let version = r.version();
    Ok((version, answer_text(r, false).await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_verified_certificate_http2_by_alpn_and_a_reloaded_certificate() {
    let dir = std::env::temp_dir().join(format!("llm-gw-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, der) = certificate(&dir, "first");
    let cfg = Config {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..config()
    };
    let (gw, _mock) = gateway_on(Scenario::healthy().with_time_scale(0.0), cfg.clone()).await;
    let port = gw.addr().port();
    let body = ChatBody {
        messages: vec![Message::user("over tls")],
        ..ChatBody::default()
    };
    let want = expected_answer(&body, 3);

    // A client that verifies the certificate gets the exact answer over HTTP/2 (ALPN).
    let (version, text) = ask(&https_client(&der), port).await.unwrap();
    assert_eq!(version, hyper::Version::HTTP_2);
    assert_eq!(text, want);
    // HTTP/1.1 when the client offers only that.
    let h1 = https_client_as(&der, false);
    let (version, text) = ask(&h1, port).await.unwrap();
    assert_eq!(version, hyper::Version::HTTP_11);
    assert_eq!(text, want);
    // A client that does not trust it refuses; plain HTTP gets no answer.
    let (_, _, other) = certificate(&dir, "other");
    let e = ask(&https_client(&other), port).await.unwrap_err();
    assert!(
        e.contains("Certificate") || e.contains("certificate"),
        "{e}"
    );
    let plain = client()
        .request(
            hyper::Request::get(format!("http://127.0.0.1:{port}/healthz"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert!(plain.is_err(), "plain HTTP on the TLS port: {plain:?}");

    // A renewed certificate: the next connection gets it.
    let (cert2, key2, der2) = certificate(&dir, "second");
    gw.reload(Config {
        tls_cert: Some(cert2),
        tls_key: Some(key2.clone()),
        ..cfg.clone()
    })
    .await
    .unwrap();
    let (_, text) = ask(&https_client(&der2), port).await.unwrap();
    assert_eq!(text, want);
    assert!(
        ask(&https_client(&der), port).await.is_err(),
        "the old one is gone"
    );
    // A broken one changes nothing (and the error names the file, not its contents).
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let e = gw
        .reload(Config {
            tls_cert: Some(broken.clone()),
            tls_key: Some(key2),
            ..cfg
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.pem"), "{e}");
    assert!(!e.contains("not base64"), "{e}");
    let (_, text) = ask(&https_client(&der2), port).await.unwrap();
    assert_eq!(text, want);
    gw.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
