//! What the HTTP handlers share.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;

use crate::node::Node;
use crate::session::SessionParams;
use crate::settings::{GatewayConfig, Settings};

/// State shared by the HTTP handlers.
pub struct AppState {
    /// The settings as loaded.
    pub settings: Arc<Settings>,
    /// This pod.
    pub node: Arc<Node>,
    /// Every session task, so shutdown can wait for them (axum does not track upgraded
    /// connections).
    pub sessions: TaskTracker,
    /// Per-connection WebSocket buffers and limits.
    pub ws_config: WebSocketConfig,
    /// Session tuning.
    pub params: Arc<SessionParams>,
    /// The JWKS key store when tokens are verified with one: readiness waits for a set.
    pub auth_keys: Option<Arc<wsgate_core::jwks::JwksKeys>>,
}

impl AppState {
    /// The handlers' state for `node`, configured by `config`.
    pub fn new(config: &GatewayConfig, node: Arc<Node>) -> Self {
        Self {
            settings: config.settings.clone(),
            node,
            sessions: TaskTracker::new(),
            ws_config: config.websocket,
            params: Arc::new(config.session.clone()),
            auth_keys: config.jwks.as_ref().map(|source| source.keys.clone()),
        }
    }
}
