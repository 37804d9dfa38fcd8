//! The gateway's routes and the layers each takes.

use std::convert::Infallible;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::handlers::{
    chat, healthz, method_not_allowed, metrics_text, models, not_found, status_json, status_page,
};
use crate::keys;
use crate::server::AppState;

/// The router, for embedding the gateway in another axum app.
///
/// Each of the API's routes gets its layers as one stack: axum boxes a route once per
/// `layer` call and clones and boxes through each box on every request, so the hot route is
/// two boxes deep (the handler, its stack), not four.
pub(crate) fn router(state: AppState) -> Router {
    let keys = state.keys().clone();
    let config = state.load().config.clone();
    let traced = tower_http::trace::TraceLayer::new_for_http;
    // The API wants a gateway key, the operator's pages an admin key (when keys are on);
    // /healthz and the status page's shell are open.
    let api_layers = || {
        ServiceBuilder::new()
            .layer(traced())
            .layer(keys::KeyAuthLayer::new(keys.clone()))
    };
    let api = Router::new()
        .route(
            "/v1/chat/completions",
            post(chat).layer::<_, Infallible>(
                api_layers()
                    .layer(RequestBodyTimeoutLayer::new(config.body_read_timeout))
                    .layer(DefaultBodyLimit::max(config.max_body_bytes)),
            ),
        )
        .route(
            "/v1/models",
            get(models).layer::<_, Infallible>(api_layers()),
        );
    let admin = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/status.json", get(status_json))
        .route_layer(keys::KeyAuthLayer::admin(keys));
    let rest = Router::new()
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/status", get(status_page))
        .fallback(not_found)
        .layer(traced());
    Router::new()
        .merge(api)
        .merge(rest)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
