//! What the HTTP handlers share.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;

use crate::node::Node;
use crate::session::SessionParams;
use crate::settings::Settings;

/// State shared by the HTTP handlers.
pub struct AppState {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// This pod.
    pub node: Arc<Node>,
    /// Every session task, so shutdown can wait for them (axum does not track upgraded
    /// connections).
    pub sessions: TaskTracker,
    /// Per-connection WebSocket buffers and limits.
    pub ws_config: WebSocketConfig,
    /// Session tuning.
    pub params: SessionParams,
}

impl AppState {
    /// Derives the WebSocket and session parameters from `settings`.
    pub fn new(settings: Arc<Settings>, node: Arc<Node>) -> Self {
        let s = &settings.session;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(s.read_buffer_bytes)
            .write_buffer_size(s.write_buffer_bytes)
            .max_message_size(Some(s.max_message_bytes))
            .max_frame_size(Some(s.max_frame_bytes));
        let params = SessionParams {
            heartbeat_interval: s.heartbeat_interval,
            heartbeat_timeout: s.heartbeat_timeout,
            outbound_queue: s.outbound_queue,
            token_leeway: settings.auth.jwt.leeway,
        };
        Self {
            settings,
            node,
            sessions: TaskTracker::new(),
            ws_config,
            params,
        }
    }
}
