//! The drain: every socket is closed with 1001 and a reason telling the client to
//! reconnect ([`close::SHUTDOWN`]), spread over the grace period so that clients do not
//! all reconnect to the remaining pods in the same instant; then every session task is
//! awaited.
//!
//! A leaf: it takes the hub and the session tasks, not the whole application state, so
//! nothing it imports can import it back.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use wsgate_core::close;
use wsgate_core::hub::Hub;

/// Closes every session of `hub` spread over three quarters of `grace` (the last quarter
/// is left for close handshakes), then closes `tasks` and waits for the session tasks
/// until `grace` is up.
pub async fn drain(hub: &Hub, tasks: &TaskTracker, grace: Duration) {
    let started = Instant::now();
    let deadline = started + grace;
    let spread = grace.mul_f64(0.75);
    let sessions = hub.sessions();
    let n = sessions.len().max(1) as u32;
    for (i, session) in sessions.iter().enumerate() {
        tokio::time::sleep_until(started + spread * i as u32 / n).await;
        session.close_with(close::SHUTDOWN);
    }
    // Sessions that registered while the first ones were closing.
    for session in hub.sessions() {
        session.close_with(close::SHUTDOWN);
    }
    tasks.close();
    if tokio::time::timeout_at(deadline, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tasks.len(),
            "grace period over with sessions still closing"
        );
    }
}
