//! The gRPC control plane: `wsgate.v1.Gateway` behind a bearer API-key check, plus
//! `grpc.health.v1` and server reflection.

mod control;
pub mod telemetry;

use std::sync::Arc;

use tonic::{Request, Status};

pub use control::ControlService;
use wsgate_proto::pb::gateway_server::GatewayServer;

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
    tonic::service::interceptor::InterceptedService<GatewayServer<ControlService>, ApiKeyCheck>;

/// Builds the intercepted Gateway service.
pub fn gateway(service: ControlService, api_keys: &[String]) -> GatewayService {
    GatewayServer::with_interceptor(service, ApiKeyCheck::new(api_keys))
}
