//! The HTTP edge: the router (`/ws` behind the preflight chain, `/healthz`, `/readyz`),
//! the connection loop that serves it, and the WebSocket upgrade.

pub mod demo;
pub mod handshake;
pub mod preflight;
pub mod serve;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower_http::catch_panic::CatchPanicLayer;
use wsgate_core::rejection::Rejection;

use crate::state::AppState;

/// The gateway's HTTP routes with the preflight in front of the WebSocket path.
pub fn router(state: Arc<AppState>, preflight: &preflight::Preflight) -> Router {
    let ws_path = state.settings.server.ws_path.clone();
    let routes = Router::new()
        .route(
            &ws_path,
            preflight
                .wrap(any(ws::upgrade))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    handshake::observe,
                )),
        )
        .merge(echo_route(&state, preflight))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(demo::routes(&state.settings))
        .fallback(not_found)
        .with_state(state);
    with_edge_layers(routes)
}

/// The conformance echo endpoint, when `server.echo_path` is set.
fn echo_route(state: &Arc<AppState>, preflight: &preflight::Preflight) -> Router<Arc<AppState>> {
    let Some(path) = &state.settings.server.echo_path else {
        return Router::new();
    };
    Router::new().route(
        path,
        preflight
            .wrap_echo(any(ws::echo))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                handshake::observe,
            )),
    )
}

/// Layers every route gets: a panic in a handler becomes a JSON 500 for that request
/// and the process carries on.
pub fn with_edge_layers(routes: Router) -> Router {
    routes.layer(CatchPanicLayer::custom(on_panic))
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    preflight::rejection_response(Rejection::internal(
        "internal error; the request was not completed",
    ))
}

/// A JSON error response `{"error": code, "message": message}`, built like every
/// preflight rejection.
pub fn json_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    preflight::rejection_response(Rejection::new(status, code, message))
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"alive"}"#,
    )
        .into_response()
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.node.metrics.render(),
    )
        .into_response()
}

async fn readyz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    match crate::upkeep::ready(&state.node, state.auth_keys.as_deref()).await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"ready"}"#,
        )
            .into_response(),
        Err(reason) => json_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason),
    }
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
