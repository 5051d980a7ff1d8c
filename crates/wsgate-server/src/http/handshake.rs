//! The `ws.handshake` span and the `wsgate_handshakes_total` metric around every upgrade
//! attempt, accepted or not.
//!
//! It wraps the whole preflight chain, so every check, the upgrade handler and the
//! session span run inside it; checks name the user on it once known. Only the path is
//! recorded, never the query string (it may hold `access_token`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::preflight::RejectionCode;
use crate::state::AppState;

/// Longest header value copied onto a span.
const MAX_ATTRIBUTE: usize = 256;

fn header_value(req: &Request, name: header::HeaderName) -> String {
    req.headers()
        .get(name)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(MAX_ATTRIBUTE)
                .collect()
        })
        .unwrap_or_default()
}

/// The middleware: a span for the attempt, its outcome recorded from the response.
pub async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "ws.handshake",
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        network.peer.address = %peer,
        http.request.header.origin = %header_value(&req, header::ORIGIN),
        user_agent.original = %header_value(&req, header::USER_AGENT),
        http.response.status_code = tracing::field::Empty,
        wsgate.outcome = tracing::field::Empty,
        wsgate.rejection = tracing::field::Empty,
        user.id = tracing::field::Empty,
        session.id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(parent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        crate::telemetry::extract(&span, parent);
    }
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    let result = if status == 101 {
        span.record("wsgate.outcome", "accepted");
        "accepted"
    } else {
        let code = response
            .extensions()
            .get::<RejectionCode>()
            .map_or("error", |c| c.0);
        span.record("wsgate.outcome", "rejected");
        span.record("wsgate.rejection", code);
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        code
    };
    state
        .node
        .metrics
        .handshakes
        .with_label_values(&[result])
        .inc();
    response
}
