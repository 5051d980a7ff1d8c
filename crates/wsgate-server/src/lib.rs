//! wsgate-server: the gateway as a library.
//!
//! [`run`] takes bound listeners, validated [`settings::Settings`] and a shutdown future,
//! so the binary and the tests start exactly the same server (tests on `127.0.0.1:0`).
//! Inside: [`http`] (router, preflight layers, WebSocket upgrade), [`session`] (one task
//! per connection), [`grpc`] (the control plane), [`node`] (hub plus backends) and
//! [`shutdown`] (the drain).

pub mod grpc;
pub mod http;
pub mod metrics;
pub mod node;
pub mod session;
pub mod settings;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsgate_core::auth::{Authenticator, JwtConfig, JwtKey};
use wsgate_core::preflight::{HandshakeLimiter, HostPolicy, OriginPolicy};

use crate::http::preflight::Preflight;
use crate::node::Node;
use crate::settings::{AuthMode, Settings};
use crate::state::AppState;

/// How long open gRPC connections get to finish once the pod stops.
const GRPC_DRAIN: Duration = Duration::from_secs(2);

/// The listeners the gateway serves, bound by the caller.
pub struct Listeners {
    /// HTTP and WebSocket.
    pub http: TcpListener,
    /// gRPC control plane.
    pub grpc: TcpListener,
}

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings are invalid (each problem on its own line).
    #[error("invalid configuration:\n{0}")]
    Config(String),
    /// A backend could not be set up.
    #[error(transparent)]
    Backend(#[from] wsgate_core::backend::BackendError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Builds the authenticator `auth.*` describes.
pub fn authenticator(settings: &Settings) -> Result<Authenticator, RunError> {
    let jwt = &settings.auth.jwt;
    match settings.auth.mode {
        AuthMode::None => Ok(Authenticator::None),
        AuthMode::Jwt => {
            let key = match (&jwt.secret, &jwt.public_key_file) {
                (Some(secret), _) => JwtKey::Secret(secret.as_bytes().to_vec()),
                (None, Some(path)) => JwtKey::PublicPem(std::fs::read(path).map_err(|e| {
                    RunError::Config(format!(
                        "auth.jwt.public_key_file: cannot read {}: {e}",
                        path.display()
                    ))
                })?),
                (None, None) => {
                    return Err(RunError::Config(
                        "auth.jwt: a secret or a public_key_file is required".into(),
                    ));
                }
            };
            let algorithm = jwt
                .effective_algorithm()
                .unwrap_or(wsgate_core::auth::JwtAlgorithm::HS256);
            Authenticator::jwt(JwtConfig {
                algorithm,
                key,
                issuer: jwt.issuer.clone(),
                audience: jwt.audience.clone(),
                leeway: jwt.leeway,
            })
            .map_err(|e| RunError::Config(format!("auth.jwt: {e}")))
        }
    }
}

fn preflight(settings: &Settings, node: &Arc<Node>) -> Result<Preflight, RunError> {
    let p = &settings.preflight;
    let limits = &settings.limits;
    Ok(Preflight {
        host: Arc::new(
            HostPolicy::new(&p.allowed_hosts)
                .map_err(|e| RunError::Config(format!("preflight.allowed_hosts: {e}")))?,
        ),
        origin: Arc::new(
            OriginPolicy::new(&p.allowed_origins, p.require_origin)
                .map_err(|e| RunError::Config(format!("preflight.allowed_origins: {e}")))?,
        ),
        limiter: Arc::new(HandshakeLimiter::new(
            limits.handshakes_per_ip_per_s,
            limits.handshake_burst,
        )),
        trusted_proxies: p.trusted_proxies.clone().into(),
        gauge: node.gauge.clone(),
        max_connections: limits.max_connections,
        authenticator: Arc::new(authenticator(settings)?),
        registry: node.registry.clone(),
        max_sessions_per_user: limits.max_sessions_per_user,
    })
}

/// Runs the gateway until `shutdown` resolves, then drains (see [`shutdown`]) and returns.
pub async fn run(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let problems = settings.validate();
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(RunError::Config(lines.join("\n")));
    }
    let settings = Arc::new(settings);
    let pod_id = settings.server.pod_id.clone();
    let node = match &settings.redis.url {
        None => Node::embedded(pod_id).await?,
        Some(url) => {
            use crate::settings::RedisMode;
            let topology = match settings.redis.mode {
                RedisMode::Standalone => wsgate_redis::Topology::Standalone,
                RedisMode::Cluster => wsgate_redis::Topology::Cluster,
                RedisMode::Sentinel => wsgate_redis::Topology::Sentinel {
                    service: settings.redis.sentinel_service.clone().unwrap_or_default(),
                },
            };
            let mut options = wsgate_redis::RedisOptions::new(
                url.clone(),
                settings.redis.namespace.clone(),
                topology,
            );
            options.pod_ttl = settings.registry.pod_ttl;
            tracing::info!(
                redis = %wsgate_redis::redact(url),
                mode = settings.redis.mode.as_str(),
                "cluster mode"
            );
            Node::redis(pod_id, options).await?
        }
    };
    let preflight = preflight(&settings, &node)?;
    let limiter = preflight.limiter.clone();
    let state = Arc::new(AppState::new(settings.clone(), node.clone()));
    let app = http::router(state.clone(), &preflight);

    // gRPC: the control plane, health and reflection.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<wsgate_proto::pb::gateway_server::GatewayServer<grpc::ControlService>>()
        .await;
    // Reflection in both versions: grpcurl before 1.9 speaks only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wsgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| RunError::Config(format!("reflection: {e}")))?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| RunError::Config(format!("reflection: {e}")))?;
    let control = grpc::gateway(
        grpc::ControlService::new(node.clone()),
        &settings.control.api_keys,
    );
    let grpc_stop = CancellationToken::new();
    let mut grpc_builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (
        &settings.control.tls_cert_file,
        &settings.control.tls_key_file,
    ) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| RunError::Config(format!("{}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        grpc_builder = grpc_builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| RunError::Config(format!("control.tls_cert_file: {e}")))?;
    }
    let grpc_server = grpc_builder
        .layer(grpc::telemetry::GrpcTelemetryLayer::new(
            node.metrics.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(control)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
            grpc_stop.clone().cancelled_owned(),
        );
    let grpc_task = tokio::spawn(grpc_server);

    let http_stop = CancellationToken::new();
    let http_tls = match (
        &settings.server.tls_cert_file,
        &settings.server.tls_key_file,
    ) {
        (Some(cert), Some(key)) => Some(
            tls::http_server_config(cert, key)
                .map_err(|e| RunError::Config(format!("server.tls_cert_file: {e}")))?,
        ),
        _ => None,
    };
    let http_task = tokio::spawn(http::serve::serve(
        listeners.http,
        app,
        settings.server.header_read_timeout,
        http_tls,
        http_stop.clone(),
    ));

    // Background upkeep: pod liveness and the rate limiter's memory.
    let upkeep_stop = CancellationToken::new();
    let upkeep = tokio::spawn(upkeep(
        node.clone(),
        health.clone(),
        limiter,
        settings.registry.pod_ttl,
        upkeep_stop.clone(),
    ));

    tracing::info!(
        pod = %settings.server.pod_id,
        ws_path = %settings.server.ws_path,
        "wsgate is serving"
    );
    shutdown.await;

    tracing::info!("shutting down: draining sessions");
    // Readiness off first, so load balancers stop sending before sockets close.
    node.gauge.start_draining();
    health
        .set_not_serving::<wsgate_proto::pb::gateway_server::GatewayServer<grpc::ControlService>>()
        .await;
    http_stop.cancel();
    shutdown::drain(&state.node.hub, &state.sessions, settings.shutdown.grace).await;
    let _ = http_task.await;
    grpc_stop.cancel();
    // tonic's graceful stop waits for every client connection to go away; a caller that
    // keeps its channel open must not hold the pod past its grace period.
    let grpc_task_abort = grpc_task.abort_handle();
    let grpc_result = match tokio::time::timeout(GRPC_DRAIN, grpc_task).await {
        Ok(joined) => joined,
        Err(_) => {
            tracing::warn!("gRPC clients still connected after {GRPC_DRAIN:?}: closing them");
            grpc_task_abort.abort();
            Ok(Ok(()))
        }
    };
    upkeep_stop.cancel();
    let _ = upkeep.await;
    node.leave().await;
    tracing::info!("shutdown complete");
    match grpc_result {
        Ok(res) => res.map_err(RunError::from),
        Err(join) => {
            tracing::error!(error = %join, "gRPC server task failed");
            Ok(())
        }
    }
}

type GatewayServer = wsgate_proto::pb::gateway_server::GatewayServer<grpc::ControlService>;

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

async fn upkeep(
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
