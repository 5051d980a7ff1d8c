//! The operations endpoints: `/healthz` (alive), `/readyz` (takes connections) and
//! `/metrics` (Prometheus). They sit on the public listener, or alone on the admin
//! listener when `server.admin_listen` is set, so probes and scrapes need not share a
//! port with the internet-facing WebSocket endpoint.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// The three routes, to merge into a router over the shared state.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The admin listener's whole router: the operations endpoints and a 404 for anything
/// else, with the same edge layers as the public router.
pub fn admin_router(state: Arc<AppState>) -> Router {
    super::with_edge_layers(routes().fallback(super::not_found).with_state(state))
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"alive"}"#,
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.node.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match crate::upkeep::ready(&state.node, state.auth_keys.as_deref()).await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"ready"}"#,
        )
            .into_response(),
        Err(reason) => super::json_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason),
    }
}
