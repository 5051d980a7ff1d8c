//! Background upkeep while the pod serves: pod liveness in the registry, reaping dead
//! pods, readiness followed into gRPC health and the metrics, and the rate limiter's
//! memory.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wsgate_core::jwks::JwksKeys;
use wsgate_core::preflight::HandshakeLimiter;

use crate::node::Node;

/// The control service's name in gRPC health (named here rather than through the gRPC
/// module, which itself starts this upkeep).
const GATEWAY: &str = wsgate_proto::pb::gateway_server::SERVICE_NAME;

/// Whether the pod takes connections: the node's readiness (backends healthy, not
/// draining) and, when tokens are verified with a JWKS, a key set fetched at least once —
/// without one every handshake would be 503 `auth_unavailable`. A failed refresh later
/// keeps the last good set, so it does not take a ready pod out.
pub async fn ready(node: &Node, auth_keys: Option<&JwksKeys>) -> Result<(), String> {
    node.ready().await?;
    if auth_keys.is_some_and(|keys| keys.current().is_none()) {
        node.metrics.ready.set(0);
        return Err("no JWKS key set fetched yet (auth.jwt.jwks_url)".to_owned());
    }
    Ok(())
}

/// Checks readiness every second so gRPC health and the readiness metrics follow the
/// same state as `/readyz` (which checks on every request).
async fn follow_readiness(
    node: &Node,
    auth_keys: Option<&JwksKeys>,
    health: &tonic_health::server::HealthReporter,
    was: &mut Option<bool>,
) {
    let ready = ready(node, auth_keys).await;
    let serving = ready.is_ok();
    if *was != Some(serving) {
        match &ready {
            Ok(()) => {
                health
                    .set_service_status(GATEWAY, tonic_health::ServingStatus::Serving)
                    .await;
                if was.is_some() {
                    tracing::info!("ready again");
                }
            }
            Err(reason) => {
                health
                    .set_service_status(GATEWAY, tonic_health::ServingStatus::NotServing)
                    .await;
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
    auth_keys: Option<Arc<JwksKeys>>,
    stop: CancellationToken,
) {
    // Three refreshes per TTL: one lost refresh never makes a live pod look dead.
    let mut liveness = tokio::time::interval((pod_ttl / 3).max(Duration::from_millis(100)));
    let mut reap = tokio::time::interval(pod_ttl);
    let mut readiness = tokio::time::interval(Duration::from_secs(1));
    let mut purge = tokio::time::interval(Duration::from_secs(60));
    let mut revocations = tokio::time::interval(crate::revocations::REFRESH_EVERY);
    for timer in [
        &mut liveness,
        &mut reap,
        &mut readiness,
        &mut purge,
        &mut revocations,
    ] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut was_ready = Some(true);
    // Logged when reading revocations starts or stops failing, not on every attempt.
    let mut revocations_failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = liveness.tick() => {
                if let Err(e) = node.heartbeat().await {
                    tracing::warn!(error = %e, "pod liveness refresh failed");
                }
            }
            _ = reap.tick() => node.reap(pod_ttl).await,
            _ = readiness.tick() => follow_readiness(&node, auth_keys.as_deref(), &health, &mut was_ready).await,
            _ = purge.tick() => limiter.retain_recent(),
            _ = revocations.tick() => match node.refresh_revocations().await {
                Ok(()) if revocations_failing => {
                    revocations_failing = false;
                    tracing::info!("revocations read again");
                }
                Ok(()) => {}
                Err(error) if !revocations_failing => {
                    revocations_failing = true;
                    tracing::warn!(%error, "cannot read revocations; keeping the last set read");
                }
                Err(_) => {}
            },
        }
    }
}
