//! The WebSocket upgrade, after the preflight chain has accepted the request: the 101
//! answer with `Sec-WebSocket-Accept` and the negotiated subprotocol, then one tracked
//! task per session.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use wsgate_core::auth::query_param;
use wsgate_core::auth::{Identity, TopicPolicy};
use wsgate_core::deflate::{self, Deframer, InflateStream};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::{SUBPROTOCOL, parse_since};
use wsgate_core::rejection::Rejection;

use super::json_error;
use super::preflight::{ClientAddr, rejection_response};
use crate::node::OpenError;
use crate::session::{self, Registered, SessionContext, SessionParams};
use crate::state::AppState;

/// Picks `wsgate.v1` when the client offers it among its subprotocols.
pub fn negotiate_subprotocol(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
        .then_some(SUBPROTOCOL)
}

/// The `Sec-WebSocket-Extensions` answer: permessage-deflate when `session.compression`
/// is on and the client offers it in a form the server can honour (see
/// [`wsgate_core::deflate::negotiate`]); never a reason to refuse the handshake.
pub fn negotiate_extensions(
    headers: &axum::http::HeaderMap,
    enabled: bool,
) -> Option<&'static str> {
    if !enabled {
        return None;
    }
    deflate::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// Completes the handshake and starts the session task.
pub async fn upgrade(State(state): State<Arc<AppState>>, req: Request) -> Response {
    upgrade_session(state, req, false).await
}

/// The conformance echo endpoint (`server.echo_path`): the same session, echoing data
/// frames instead of reading ops.
pub async fn echo(State(state): State<Arc<AppState>>, req: Request) -> Response {
    upgrade_session(state, req, true).await
}

async fn upgrade_session(state: Arc<AppState>, mut req: Request, echo: bool) -> Response {
    let Some(identity) = req.extensions_mut().remove::<Identity>() else {
        // The preflight chain always sets it; reaching here without means a wiring bug.
        tracing::error!("upgrade reached without an authenticated identity");
        return rejection_response(Rejection::internal("internal error"));
    };
    let remote_addr = match req.extensions().get::<ClientAddr>() {
        Some(ClientAddr(ip)) => ip.to_string(),
        None => req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default(),
    };
    // The preflight's capacity check is an early answer; this slot is the real one.
    let Some(slot) = state
        .node
        .gauge
        .try_acquire(state.settings.limits.max_connections)
    else {
        return rejection_response(Rejection::at_capacity());
    };
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_key",
            "missing Sec-WebSocket-Key",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let subprotocol = negotiate_subprotocol(req.headers());
    let extensions = negotiate_extensions(req.headers(), state.params.compression);
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    // `?since=epoch:offset`: the user stream's last position the client saw.
    let user_since = match query_param(req.uri(), "since") {
        None => None,
        Some(value) => match value.as_deref().and_then(parse_since) {
            Some(position) => Some(position),
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_since",
                    "?since= must be epoch:offset, as the welcome frame's user_stream gives them",
                );
            }
        },
    };
    let on_upgrade = hyper::upgrade::on(&mut req);

    let ctx = SessionContext {
        session_id: SessionId::generate(),
        user_id: identity.user_id,
        topics: identity.topics,
        // Auth off: `session.client_publish` allows every topic (the settings refuse it
        // with JWT, where only the token's claim grants publishing).
        publish: if state.params.client_publish {
            TopicPolicy::Any
        } else {
            identity.publish
        },
        remote_addr,
        user_agent,
        subprotocol,
        echo,
        expires_at: identity.expires_at,
        token_id: identity.token_id,
        user_since,
        compression: extensions.is_some(),
    };
    // Registered before the 101: the registry enforces the per-user limit atomically
    // (this is the only check of it; the preflight does not count first), and pushes
    // that arrive while the upgrade completes wait in the session's queue.
    let registered = match session::register(
        &state.node,
        &ctx,
        &state.params,
        state.settings.limits.max_sessions_per_user,
    )
    .await
    {
        Ok(r) => r,
        Err(OpenError::UserLimit) => {
            return rejection_response(Rejection::too_many_sessions(
                state.settings.limits.max_sessions_per_user,
            ));
        }
        Err(OpenError::Backend(e)) => {
            tracing::warn!(error = %e, "session registration failed");
            return rejection_response(Rejection::backend_unavailable());
        }
    };
    let params = state.params.clone();
    let config = state.ws_config;
    // Compressed client messages are inflated under tungstenite, within its limits.
    let deframer = extensions.map(|_| {
        state.node.metrics.compression_negotiated.inc();
        let limit = config.max_message_size.unwrap_or(usize::MAX);
        Deframer::server(limit, config.max_frame_size.unwrap_or(limit))
    });
    let handshake = tracing::Span::current();
    handshake.record("user.id", ctx.user_id.as_str());
    handshake.record("session.id", ctx.session_id.as_str());
    // The session's span is a child of its handshake and lives until the close.
    let session_span = tracing::info_span!(
        "ws.session",
        session.id = %ctx.session_id,
        user.id = %ctx.user_id,
        client.address = %ctx.remote_addr,
        ws.subprotocol = ctx.subprotocol.unwrap_or(""),
        ws.close.code = tracing::field::Empty,
        ws.close.by = tracing::field::Empty,
        ws.close.error = tracing::field::Empty,
        ws.messages.received = tracing::field::Empty,
        ws.messages.sent = tracing::field::Empty,
        ws.bytes.received = tracing::field::Empty,
        ws.bytes.sent = tracing::field::Empty,
        ws.duration_ms = tracing::field::Empty,
    );
    let connections = state.node.metrics.connections.clone();
    // One box for what the session starts with: the task's future keeps its captures for
    // its whole life, so capturing these by value would hold a second copy of the
    // session's state (and the socket's settings) beside the one `session::run` builds.
    let start = Box::new(Start {
        config,
        deframer,
        ctx,
        params,
        registered,
    });
    let task = async move {
        let _slot = slot;
        let _open = OpenConnection::new(connections);
        match on_upgrade.await {
            Ok(upgraded) => {
                // Moved out of the capture into a block of its own, so the box is freed
                // before the session runs (a capture lives as long as the task). The
                // session's parts stay in the box while the socket is set up, which
                // awaits: the task keeps room for the largest set of locals held across
                // an await.
                let session = {
                    let start = start;
                    let ws = WebSocketStream::from_raw_socket(
                        InflateStream::new(TokioIo::new(upgraded), start.deframer),
                        Role::Server,
                        Some(start.config),
                    )
                    .await;
                    session::run(ws, start.ctx, start.params, start.registered)
                };
                session.await;
            }
            // Dropping `registered` unregisters the session.
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
    };
    state
        .sessions
        .spawn(tracing::Instrument::instrument(task, session_span));

    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = subprotocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    if let Some(e) = extensions {
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(e),
        );
    }
    response
}

/// What a session's task starts with, boxed until the upgrade completes.
struct Start {
    config: WebSocketConfig,
    deframer: Option<Deframer>,
    ctx: SessionContext,
    params: Arc<SessionParams>,
    registered: Registered,
}

/// Counts a connection in `wsgate_connections` for as long as it lives, whatever way
/// its task ends.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_only_our_subprotocol() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(negotiate_subprotocol(&h), None);
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, wsgate.v1"),
        );
        assert_eq!(negotiate_subprotocol(&h), Some("wsgate.v1"));
        let mut other = axum::http::HeaderMap::new();
        other.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("wsgate.v2"),
        );
        assert_eq!(negotiate_subprotocol(&other), None);
    }

    #[test]
    fn negotiates_deflate_only_when_enabled() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(negotiate_extensions(&h, true), None);
        h.append(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; server_max_window_bits=10"),
        );
        assert_eq!(negotiate_extensions(&h, true), None);
        h.append(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
        );
        assert_eq!(negotiate_extensions(&h, true), Some(deflate::RESPONSE));
        assert_eq!(negotiate_extensions(&h, false), None);
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
