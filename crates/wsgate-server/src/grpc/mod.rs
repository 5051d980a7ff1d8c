//! The gRPC control plane: `wsgate.v1.Gateway` behind a bearer API-key check, plus
//! `grpc.health.v1` and server reflection.

mod control;
pub mod events;
pub mod telemetry;

use std::sync::Arc;

use tonic::{Request, Status};

pub use control::ControlService;

/// The generated `wsgate.v1.Gateway` server over [`ControlService`] (the name gRPC health
/// reports on).
pub type GatewayServer = wsgate_proto::pb::gateway_server::GatewayServer<ControlService>;

/// Checks `authorization: Bearer <key>` against the configured API keys. With no keys
/// configured, every caller is let in (allowed only on loopback; see the settings).
#[derive(Clone)]
pub struct ApiKeyCheck {
    keys: Arc<[String]>,
}

impl ApiKeyCheck {
    /// A check against `keys`.
    pub fn new(keys: &[String]) -> Self {
        Self { keys: keys.into() }
    }
}

impl tonic::service::Interceptor for ApiKeyCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.keys.is_empty() {
            return Ok(req);
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            });
        let Some(presented) = presented else {
            return Err(Status::unauthenticated(
                "missing API key: send `authorization: Bearer <key>` metadata",
            ));
        };
        // Compare against every key in constant time so timing reveals nothing.
        let mut ok = false;
        for key in self.keys.iter() {
            ok |= constant_time_eq(key.as_bytes(), presented.as_bytes());
        }
        if ok {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid API key"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The Gateway service with its API-key interceptor.
pub type GatewayService =
    tonic::service::interceptor::InterceptedService<GatewayServer, ApiKeyCheck>;

/// Builds the intercepted Gateway service.
pub fn gateway(service: ControlService, api_keys: &[String]) -> GatewayService {
    GatewayServer::with_interceptor(service, ApiKeyCheck::new(api_keys))
}

/// How long open gRPC connections get to finish once the pod stops.
const GRPC_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The control-plane listener, serving until [`GrpcServer::stop`].
pub struct GrpcServer {
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop: tokio_util::sync::CancellationToken,
}

/// Starts serving the Gateway service (behind its API keys), gRPC health and reflection
/// (v1 and v1alpha: grpcurl before 1.9 speaks only v1alpha) on `listener`.
pub fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<crate::node::Node>,
    api_keys: &[String],
    tls: Option<tonic::transport::ServerTlsConfig>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<GrpcServer, crate::RunError> {
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wsgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_alpha = reflection_builder().build_v1alpha()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let server = builder
        .layer(telemetry::GrpcTelemetryLayer::new(node.metrics.clone()))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(gateway(ControlService::new(node), api_keys))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    Ok(GrpcServer {
        task: tokio::spawn(server),
        stop,
    })
}

impl GrpcServer {
    /// Stops accepting calls and waits for open connections, at most [`GRPC_DRAIN`]:
    /// tonic's graceful stop waits for every client connection to go away, and a caller
    /// that keeps its channel open must not hold the pod past its grace period.
    pub async fn stop(self) -> Result<(), crate::RunError> {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(GRPC_DRAIN, self.task).await {
            Ok(Ok(result)) => result.map_err(crate::RunError::from),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "gRPC server task failed");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("gRPC clients still connected after {GRPC_DRAIN:?}: closing them");
                abort.abort();
                Ok(())
            }
        }
    }
}
