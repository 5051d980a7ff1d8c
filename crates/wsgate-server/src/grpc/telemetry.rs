//! A span and a metric for every gRPC call: `grpc.server` spans (continuing a caller's
//! W3C `traceparent` when it sends one) with `rpc.*` attributes and the status code, and
//! `wsgate_grpc_requests_total{method, code}` (a method a service does not have counts as
//! `<Service>/unknown`). Metadata (the API key among it) is never recorded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::Instrument;

use crate::metrics::Metrics;

/// Wraps the gRPC routes.
#[derive(Clone)]
pub struct GrpcTelemetryLayer {
    metrics: Arc<Metrics>,
}

impl GrpcTelemetryLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcTelemetryLayer`] makes.
#[derive(Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service polled ready is the one that must be called: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let path = req.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let short_service = service.rsplit('.').next().unwrap_or(service).to_owned();
        let method = method.to_owned();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        if let Some(parent) = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            crate::telemetry::extract(&span, parent);
        }
        let fut = inner.call(req);
        Box::pin(async move {
            let result = fut.instrument(span.clone()).await;
            if let Ok(response) = &result {
                // Errors of unary calls come as a trailers-only response: the status is a
                // header. Without one the call succeeded.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                span.record("rpc.grpc.status_code", code);
                // A method the service does not have is the caller's string: one label.
                let method = if code == UNIMPLEMENTED {
                    "unknown"
                } else {
                    &method
                };
                metrics
                    .grpc_requests
                    .with_label_values(&[&format!("{short_service}/{method}"), code_name(code)])
                    .inc();
            }
            result
        })
    }
}

/// The status tonic answers for a method a service does not have.
const UNIMPLEMENTED: i32 = 12;

/// The canonical name of a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
