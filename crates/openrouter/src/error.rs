//! Mapping transport failures to [`LlmError`] kinds.

use std::error::Error as StdError;
use std::io;

use llm_layers_core::{ErrorKind, LlmError, TimeoutKind};

/// Classifies a failure of the pooled client before response headers.
pub(crate) fn from_client(e: hyper_util::client::legacy::Error) -> LlmError {
    let kind = if chain_has(&e, |s| s.downcast_ref::<rustls::Error>().is_some()) {
        ErrorKind::Tls
    } else if chain_has(&e, |s| {
        s.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
    }) && e.is_connect()
    {
        ErrorKind::Timeout(TimeoutKind::Connect)
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Transport
    };
    let message = match kind {
        ErrorKind::Tls => "TLS handshake with the upstream failed",
        ErrorKind::Timeout(_) => "connecting to the upstream timed out",
        ErrorKind::Connect => "could not connect to the upstream",
        _ => "the connection to the upstream broke before the response",
    };
    LlmError::new(kind).with_message(message).with_source(e)
}

fn chain_has(
    e: &(dyn StdError + 'static),
    pred: impl Fn(&(dyn StdError + 'static)) -> bool,
) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if pred(err) {
            return true;
        }
        cur = err.source();
    }
    false
}
