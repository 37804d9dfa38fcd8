//! TLS on the listener (rustls with ring): a certificate chain and its key from PEM files,
//! HTTP/2 and HTTP/1.1 offered by ALPN. The acceptor in force is swapped whole by a reload, so
//! a renewed certificate is served from the next connection on.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::server::StartError;

/// The acceptor in force (`None`: plain HTTP), read once per accepted connection.
pub(crate) type TlsSlot = Arc<RwLock<Option<TlsAcceptor>>>;

/// The acceptor `config` asks for: `None` without `tls_cert`. The errors name the file and
/// what is wrong with it, never its contents.
pub(crate) fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, StartError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(StartError::Tls(
                "--tls-cert and --tls-key go together: give both or neither".into(),
            ));
        }
    };
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            StartError::Tls(format!(
                "{} and {} do not make a certificate and its key: {e}",
                cert.display(),
                config.tls_key.as_deref().unwrap_or(cert).display()
            ))
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            StartError::Tls(format!("--tls-cert {}: {}", path.display(), pem_error(&e)))
        })?;
    if chain.is_empty() {
        return Err(StartError::Tls(format!(
            "--tls-cert {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, StartError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| StartError::Tls(format!("--tls-key {}: {}", path.display(), pem_error(&e))))
}

/// What went wrong reading a PEM file, without its contents.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot read it ({io})"),
        Error::NoItemsFound => "no PEM item of the expected kind in it".into(),
        _ => "not valid PEM".into(),
    }
}
