//! The drain: every socket is closed with 1001 and a reason telling the client to
//! reconnect, spread over the grace period so that clients do not all reconnect to the
//! remaining pods in the same instant; then every session task is awaited.

use std::time::Duration;

use tokio::time::Instant;
use wsgate_core::close;

use crate::state::AppState;

/// The reason sent with 1001 on shutdown.
pub const RECONNECT_REASON: &str = "server shutting down; reconnect";

/// Closes every session spread over three quarters of `grace` (the last quarter is left
/// for close handshakes), then waits for the session tasks until `grace` is up.
pub async fn drain(state: &AppState, grace: Duration) {
    let started = Instant::now();
    let deadline = started + grace;
    let spread = grace.mul_f64(0.75);
    let sessions = state.node.hub.sessions();
    let n = sessions.len().max(1) as u32;
    for (i, session) in sessions.iter().enumerate() {
        tokio::time::sleep_until(started + spread * i as u32 / n).await;
        session.close(close::GOING_AWAY, RECONNECT_REASON);
    }
    // Sessions that registered while the first ones were closing.
    for session in state.node.hub.sessions() {
        session.close(close::GOING_AWAY, RECONNECT_REASON);
    }
    state.sessions.close();
    if tokio::time::timeout_at(deadline, state.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.sessions.len(),
            "grace period over with sessions still closing"
        );
    }
}
