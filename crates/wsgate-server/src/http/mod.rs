//! The HTTP edge: the router (`/ws` behind the preflight chain, and the operations
//! endpoints of [`ops`] unless the admin listener serves them), the connection loop that
//! serves it, and the WebSocket upgrade.

pub mod demo;
pub mod handshake;
pub mod ops;
pub mod preflight;
pub mod serve;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::any;
use tower_http::catch_panic::CatchPanicLayer;
use wsgate_core::rejection::Rejection;

use crate::state::AppState;

/// Where `/healthz`, `/readyz` and `/metrics` are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsEndpoints {
    /// On the public listener, beside the WebSocket path (no admin listener).
    Public,
    /// On the admin listener only: the public router answers them 404.
    Admin,
}

/// The gateway's HTTP routes with the preflight in front of the WebSocket path.
pub fn router(
    state: Arc<AppState>,
    preflight: &preflight::Preflight,
    ops_endpoints: OpsEndpoints,
) -> Router {
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
        .merge(match ops_endpoints {
            OpsEndpoints::Public => ops::routes(),
            OpsEndpoints::Admin => Router::new(),
        })
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

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
