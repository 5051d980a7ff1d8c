//! wsgate-server: the gateway as a library.
//!
//! [`run`] takes bound listeners, a built [`GatewayConfig`] and a shutdown future, so the
//! binary and the tests start exactly the same server (tests on `127.0.0.1:0`). It runs
//! in three phases: [`start`] builds the node and the services from the configuration,
//! [`Gateway::serve`] puts them on the listeners, and [`Serving::drain`] takes the pod down
//! gracefully. Inside: [`settings`] (loading and building the configuration), [`http`]
//! (router, preflight layers, WebSocket upgrade), [`session`] (one task per connection),
//! [`grpc`] (the control plane), [`node`] (hub plus backends), [`events`] (session events:
//! the topic-event writer and consumers' reads), [`removals`] (session removals kept for
//! retrying), [`rpc`] (clients' calls to the application's backend), [`jwks`] (the
//! fetcher of a JWKS key set), [`connect_proxy`] (the POST of the connect proxy's auth), [`upkeep`] (liveness and readiness), [`shutdown`] (the
//! drain of the sessions) and [`webhooks`] (session events POSTed to endpoints, fed from
//! the event log).

pub mod accept;
pub mod connect_proxy;
pub mod events;
pub mod grpc;
pub mod http;
pub mod http_client;
mod inbox;
pub mod jwks;
pub mod metrics;
pub mod node;
pub mod propagation;
pub mod removals;
pub mod revocations;
pub mod rpc;
pub mod session;
pub mod settings;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upkeep;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::grpc::{GatewayServer, GrpcServer};
use crate::http::preflight::Preflight;
use crate::node::Node;
use crate::settings::Backend;
pub use crate::settings::GatewayConfig;
use crate::state::AppState;

/// The listeners the gateway serves, bound by the caller.
pub struct Listeners {
    /// HTTP and WebSocket.
    pub http: TcpListener,
    /// gRPC control plane.
    pub grpc: TcpListener,
    /// The operations endpoints (`/metrics`, `/healthz`, `/readyz`) alone, bound where
    /// `server.admin_listen` says. With it they leave `http`; without it (`None`) they
    /// stay there.
    pub admin: Option<TcpListener>,
}

/// Why the gateway could not start or stopped with an error. Configuration is not among
/// the reasons: a [`GatewayConfig`] is valid by construction.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A backend could not be set up.
    #[error(transparent)]
    Backend(#[from] wsgate_core::backend::BackendError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The reflection service could not read the embedded descriptors (a build defect).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Runs the gateway until `shutdown` resolves, then drains it and returns.
pub async fn run(
    listeners: Listeners,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let serving = start(config).await?.serve(listeners).await?;
    tracing::info!(
        pod = %serving.gateway.node.pod_id,
        ws_path = %serving.gateway.state.settings.server.ws_path,
        "wsgate is serving"
    );
    shutdown.await;
    serving.drain().await
}

/// A gateway built from its configuration, not serving yet.
pub struct Gateway {
    config: GatewayConfig,
    node: Arc<Node>,
    state: Arc<AppState>,
    preflight: Preflight,
}

/// Builds the node on its backends (connecting to Redis in cluster mode) and the state
/// the handlers share.
pub async fn start(config: GatewayConfig) -> Result<Gateway, RunError> {
    let pod_id = config.settings.server.pod_id.clone();
    let node = match &config.backend {
        Backend::Embedded => {
            Node::embedded(pod_id, config.history.clone(), config.events.clone()).await?
        }
        Backend::Redis(options) => {
            tracing::info!(
                redis = %wsgate_redis::redact(&options.url),
                mode = %config.settings.redis.mode,
                "cluster mode"
            );
            Node::redis(
                pod_id,
                config.history.clone(),
                options.clone(),
                config.events.clone(),
            )
            .await?
        }
    };
    let policies = &config.preflight;
    let limits = &config.settings.limits;
    let preflight = Preflight {
        host: policies.host.clone(),
        origin: policies.origin.clone(),
        limiter: policies.limiter.clone(),
        trusted_proxies: policies.trusted_proxies.clone(),
        gauge: node.gauge.clone(),
        max_connections: limits.max_connections,
        authenticator: config.authenticator.clone(),
        registry: node.registry.clone(),
        max_sessions_per_user: limits.max_sessions_per_user,
        revocations: node.revocations.clone(),
    };
    if let Some(proxy) = &config.connect_proxy {
        proxy.attach_metrics(node.metrics.clone());
    }
    let state = Arc::new(AppState::new(&config, node.clone()));
    Ok(Gateway {
        config,
        node,
        state,
        preflight,
    })
}

/// A gateway on its listeners.
pub struct Serving {
    gateway: Gateway,
    health: tonic_health::server::HealthReporter,
    grpc: GrpcServer,
    http: JoinHandle<()>,
    http_stop: CancellationToken,
    /// The admin listener's task, stopped last so probes and scrapes see the drain.
    admin: Option<JoinHandle<()>>,
    admin_stop: CancellationToken,
    upkeep: JoinHandle<()>,
    upkeep_stop: CancellationToken,
    /// The webhook endpoints' tasks, when there are endpoints.
    webhooks: Option<webhooks::Webhooks>,
    /// The JWKS fetcher, stopped with the upkeep.
    jwks: Option<JoinHandle<()>>,
}

impl Gateway {
    /// The HTTP routes with the preflight chain, as [`Gateway::serve`] serves them on
    /// the public listener when there is no admin listener.
    pub fn router(&self) -> axum::Router {
        self.public_router(http::OpsEndpoints::Public)
    }

    fn public_router(&self, ops: http::OpsEndpoints) -> axum::Router {
        http::router(self.state.clone(), &self.preflight, ops)
    }

    /// Serves HTTP/WebSocket and gRPC on `listeners` and starts the background upkeep.
    pub async fn serve(self, listeners: Listeners) -> Result<Serving, RunError> {
        let settings = &self.config.settings;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<GatewayServer>().await;
        let grpc = grpc::serve(
            listeners.grpc,
            self.node.clone(),
            &settings.control.api_keys,
            self.config.grpc_tls.clone(),
            health_service,
        )?;
        let ops = match listeners.admin {
            Some(_) => http::OpsEndpoints::Admin,
            None => http::OpsEndpoints::Public,
        };
        let http_stop = CancellationToken::new();
        let http = tokio::spawn(http::serve::serve(
            listeners.http,
            self.public_router(ops),
            settings.server.header_read_timeout,
            self.config.http_tls.clone(),
            http_stop.clone(),
        ));
        // Plain HTTP: kubelet probes and Prometheus scrapes stay inside the cluster.
        let admin_stop = CancellationToken::new();
        let admin = listeners.admin.map(|listener| {
            tokio::spawn(http::serve::serve(
                listener,
                http::ops::admin_router(self.state.clone()),
                settings.server.header_read_timeout,
                None,
                admin_stop.clone(),
            ))
        });
        let upkeep_stop = CancellationToken::new();
        let upkeep = tokio::spawn(upkeep::run(
            self.node.clone(),
            health.clone(),
            self.preflight.limiter.clone(),
            settings.registry.pod_ttl,
            self.config.jwks.as_ref().map(|source| source.keys.clone()),
            upkeep_stop.clone(),
        ));
        let webhooks = match self.node.events() {
            Some(events) if !self.config.webhooks.endpoints.is_empty() => {
                Some(webhooks::Webhooks::start(
                    &self.config.webhooks,
                    events.clone(),
                    &self.node.pod_id,
                    self.node.metrics.clone(),
                ))
            }
            _ => None,
        };
        let jwks = self.config.jwks.clone().map(|source| {
            tokio::spawn(jwks::run(
                source,
                self.node.metrics.clone(),
                upkeep_stop.clone(),
            ))
        });
        Ok(Serving {
            webhooks,
            gateway: self,
            health,
            grpc,
            http,
            http_stop,
            admin,
            admin_stop,
            upkeep,
            upkeep_stop,
            jwks,
        })
    }
}

impl Serving {
    /// Takes the pod down: readiness off first (so load balancers stop sending), no new
    /// connections, every session closed with 1001 spread over `shutdown.grace`, the gRPC
    /// listener drained, the upkeep stopped and the pod removed from the registry. The
    /// admin listener serves throughout (`/readyz` answering 503) and stops last.
    pub async fn drain(self) -> Result<(), RunError> {
        let Gateway {
            config,
            node,
            state,
            ..
        } = self.gateway;
        tracing::info!("shutting down: draining sessions");
        node.gauge.start_draining();
        self.health.set_not_serving::<GatewayServer>().await;
        self.http_stop.cancel();
        shutdown::drain(&node.hub, &state.sessions, config.settings.shutdown.grace).await;
        let _ = self.http.await;
        // The sessions' last events are in the log: webhooks catch up briefly, then hand
        // their endpoints over (cursor stored, lease released) to the pods that stay.
        if let Some(webhooks) = self.webhooks {
            webhooks.stop(std::time::Duration::from_secs(2)).await;
        }
        // Event watchers end with a status telling them to resume elsewhere, so the gRPC
        // server is not held open by their streams.
        node.stop_event_reads();
        let grpc = self.grpc.stop().await;
        self.upkeep_stop.cancel();
        let _ = self.upkeep.await;
        if let Some(jwks) = self.jwks {
            let _ = jwks.await;
        }
        node.leave().await;
        self.admin_stop.cancel();
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
        tracing::info!("shutdown complete");
        grpc
    }
}
