//! The control plane on one listener: `wsgate.v1.Gateway` over gRPC behind a bearer
//! API-key check, `grpc.health.v1`, server reflection, and the same Gateway methods as
//! `POST /api/v1/<method>` with JSON bodies ([`http_api`]). tonic serves HTTP/2 and
//! HTTP/1.1 on the port; requests are routed by path, gRPC's `/<service>/<method>` and the
//! API's `/api/…` never overlap.

mod control;
pub mod events;
pub mod http_api;
mod listener;
pub mod telemetry;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
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

    /// Checks the value of an `authorization` header or metadata entry, `Bearer <key>`
    /// (the scheme in any case), against every key in constant time.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), KeyRefusal> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let presented = authorization.and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        });
        let Some(presented) = presented else {
            return Err(KeyRefusal::Missing);
        };
        // Compare against every key so timing reveals nothing.
        let mut ok = false;
        for key in self.keys.iter() {
            ok |= constant_time_eq(key.as_bytes(), presented.as_bytes());
        }
        if ok { Ok(()) } else { Err(KeyRefusal::Invalid) }
    }
}

/// Why [`ApiKeyCheck::check`] refused a caller; each edge words it for its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No `Bearer` credential at all.
    Missing,
    /// A key that is not configured.
    Invalid,
}

impl tonic::service::Interceptor for ApiKeyCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.check(authorization) {
            Ok(()) => Ok(req),
            Err(KeyRefusal::Missing) => Err(Status::unauthenticated(
                "missing API key: send `authorization: Bearer <key>` metadata",
            )),
            Err(KeyRefusal::Invalid) => Err(Status::unauthenticated("invalid API key")),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// How long open control connections (gRPC and HTTP API alike) get to finish once the
/// pod stops.
const GRPC_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The control-plane listener, serving until [`GrpcServer::stop`].
pub struct GrpcServer {
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop: tokio_util::sync::CancellationToken,
}

/// Starts serving, on `listener`: the Gateway service over gRPC (behind its API keys),
/// gRPC health and reflection (v1 and v1alpha: grpcurl before 1.9 speaks only v1alpha),
/// and the HTTP JSON API (behind the same keys). With `tls`, every connection is TLS,
/// offering `h2` and `http/1.1`.
pub fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<crate::node::Node>,
    api_keys: &[String],
    tls: Option<Arc<rustls::ServerConfig>>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<GrpcServer, crate::RunError> {
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wsgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let control = ControlService::new(node.clone());
    let keys = ApiKeyCheck::new(api_keys);
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(health)
        .add_service(reflection_builder().build_v1()?)
        .add_service(reflection_builder().build_v1alpha()?)
        .add_service(GatewayServer::with_interceptor(
            control.clone(),
            keys.clone(),
        ));
    // The gRPC telemetry wraps the gRPC services only; the JSON API records its own.
    let routes = grpc
        .routes()
        .into_axum_router()
        .layer(telemetry::GrpcTelemetryLayer::new(node.metrics.clone()))
        .merge(http_api::router(control, keys, node.metrics.clone()))
        .fallback(no_route);
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes.into());
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let task = match tls {
        None => tokio::spawn(server.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            signal,
        )),
        Some(tls) => {
            tokio::spawn(server.serve_with_incoming_shutdown(listener::tls(listener, tls), signal))
        }
    };
    Ok(GrpcServer { task, stop })
}

/// Neither a served gRPC service nor `/api/…`: gRPC callers get UNIMPLEMENTED as from
/// tonic, anyone else a JSON 404. Not counted in any metric: the path is the caller's.
async fn no_route(req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        Status::unimplemented("no such service")
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        crate::http::json_error(
            http::StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: this listener serves gRPC and POST /api/v1/<method>",
        )
    }
}

impl GrpcServer {
    /// Stops accepting calls and waits for open connections, at most [`GRPC_DRAIN`]:
    /// tonic's graceful stop waits for every client connection to go away (idle HTTP/1.1
    /// keep-alive connections close at once), and a caller that keeps its channel open
    /// must not hold the pod past its grace period.
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
