//! Background upkeep while the pod serves: pod liveness in the registry, reaping dead
//! pods, readiness followed into gRPC health and the metrics, and the rate limiter's
//! memory.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wsgate_core::preflight::HandshakeLimiter;

use crate::grpc::GatewayServer;
use crate::node::Node;

/// Checks readiness every second so gRPC health and the readiness metrics follow the
/// same state as `/readyz` (which checks on every request).
async fn follow_readiness(
    node: &Node,
    health: &tonic_health::server::HealthReporter,
    was: &mut Option<bool>,
) {
    let ready = node.ready().await;
    let serving = ready.is_ok();
    if *was != Some(serving) {
        match &ready {
            Ok(()) => {
                health.set_serving::<GatewayServer>().await;
                if was.is_some() {
                    tracing::info!("ready again");
                }
            }
            Err(reason) => {
                health.set_not_serving::<GatewayServer>().await;
                tracing::warn!(%reason, "not ready");
            }
        }
        *was = Some(serving);
    }
}

/// Runs until `stop`.
pub async fn run(
    node: Arc<Node>,
    health: tonic_health::server::HealthReporter,
    limiter: Arc<HandshakeLimiter>,
    pod_ttl: Duration,
    stop: CancellationToken,
) {
    // Three refreshes per TTL: one lost refresh never makes a live pod look dead.
    let mut liveness = tokio::time::interval((pod_ttl / 3).max(Duration::from_millis(100)));
    let mut reap = tokio::time::interval(pod_ttl);
    let mut readiness = tokio::time::interval(Duration::from_secs(1));
    let mut purge = tokio::time::interval(Duration::from_secs(60));
    for timer in [&mut liveness, &mut reap, &mut readiness, &mut purge] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut was_ready = Some(true);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = liveness.tick() => {
                if let Err(e) = node.heartbeat().await {
                    tracing::warn!(error = %e, "pod liveness refresh failed");
                }
            }
            _ = reap.tick() => node.reap().await,
            _ = readiness.tick() => follow_readiness(&node, &health, &mut was_ready).await,
            _ = purge.tick() => limiter.retain_recent(),
        }
    }
}
