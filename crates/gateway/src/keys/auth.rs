//! [`KeyAuth`]: the middleware that checks a request's gateway key before its body is read,
//! against the keys in force ([`SharedKeys`], replaced whole by a reload).

use std::sync::Arc;

use super::{GatewayKey, Keys, Refusal};

/// The gateway key a request came with, put in its extensions by [`KeyAuth`] (`None` when
/// the gateway has no keys: open mode).
#[derive(Debug, Clone)]
pub struct Caller(pub Option<GatewayKey>);

/// The gateway keys in force, shared by every `KeyAuth` and replaced whole by a reload: a
/// revoked key is refused from its next request on.
#[derive(Debug, Clone, Default)]
pub struct SharedKeys(Arc<std::sync::RwLock<Arc<Keys>>>);

impl SharedKeys {
    /// These keys, in force.
    pub fn new(keys: Keys) -> SharedKeys {
        SharedKeys(Arc::new(std::sync::RwLock::new(Arc::new(keys))))
    }

    /// The keys in force now.
    pub fn load(&self) -> Arc<Keys> {
        llm_layers_core::sync::read(&self.0).clone()
    }

    /// Puts `keys` in force.
    pub fn store(&self, keys: Keys) {
        *llm_layers_core::sync::write(&self.0) = Arc::new(keys);
    }
}

/// Applies [`KeyAuth`]: every request it wraps must present a gateway key (an admin key when
/// `admin`), or is answered 401 (403 for a non-admin key on an admin route) before anything
/// else runs. With no keys configured, requests pass.
#[derive(Debug, Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct KeyAuthLayer {
    keys: SharedKeys,
    admin: bool,
}

impl KeyAuthLayer {
    /// Any valid key passes.
    pub fn new(keys: SharedKeys) -> Self {
        KeyAuthLayer { keys, admin: false }
    }

    /// Only admin keys pass.
    pub fn admin(keys: SharedKeys) -> Self {
        KeyAuthLayer { keys, admin: true }
    }
}

impl<S> tower::Layer<S> for KeyAuthLayer {
    type Service = KeyAuth<S>;

    fn layer(&self, inner: S) -> KeyAuth<S> {
        KeyAuth {
            inner,
            keys: self.keys.clone(),
            admin: self.admin,
        }
    }
}

/// Checks the gateway key of each request (see [`KeyAuthLayer`]) and hands it to the
/// handler as a [`Caller`] extension.
#[derive(Debug, Clone)]
pub struct KeyAuth<S> {
    inner: S,
    keys: SharedKeys,
    admin: bool,
}

impl<S, B> tower::Service<http::Request<B>> for KeyAuth<S>
where
    S: tower::Service<http::Request<B>, Response = axum::response::Response>,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<axum::response::Response, S::Error>>,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use axum::response::IntoResponse;
        use futures_util::future::Either;
        let refuse =
            |f: crate::error::ApiFailure| Either::Left(std::future::ready(Ok(f.into_response())));
        let keys = self.keys.load();
        if keys.is_empty() {
            req.extensions_mut().insert(Caller(None));
            return Either::Right(self.inner.call(req));
        }
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let key = match keys.check(auth) {
            Ok(k) => k.clone(),
            Err(Refusal::Missing) => {
                return refuse(crate::error::ApiFailure::unauthorized(
                    "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                ));
            }
            Err(Refusal::Wrong) => {
                return refuse(crate::error::ApiFailure::unauthorized(
                    "Incorrect API key provided.",
                ));
            }
        };
        if self.admin && !key.admin {
            return refuse(crate::error::ApiFailure::invalid(
                http::StatusCode::FORBIDDEN,
                "admin_only",
                "this key may not read this page",
            ));
        }
        req.extensions_mut().insert(Caller(Some(key)));
        Either::Right(self.inner.call(req))
    }
}
