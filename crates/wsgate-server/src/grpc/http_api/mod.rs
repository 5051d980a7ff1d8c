//! The HTTP JSON API: every `wsgate.v1.Gateway` method as `POST /api/v1/<method>`
//! (snake_case), on the control listener beside gRPC.
//!
//! A request passes the same checks in a fixed order, cheap and body-free ones first:
//! a known method (else 404 `unknown_method`), `POST` (else 405 with `Allow: POST`), the
//! API key, checked by the same [`ApiKeyCheck`] as gRPC (else 401), a JSON content type
//! (else 415), a body of at most [`MAX_BODY_BYTES`] (else 413), proto3 JSON of the
//! method's request (else 400 `bad_json`). Then the very [`ControlService`] method that
//! gRPC calls runs, so every argument rule and every result is the same both ways; its
//! `tonic::Status` becomes an HTTP status ([`methods::status_rejection`]). Every error is
//! `{"error": code, "message": text}`, like the rest of the gateway's HTTP errors.
//!
//! `WatchEvents`, a server stream in gRPC, is a long poll here ([`watch`]).
//!
//! Each call gets a server span (continuing a caller's `traceparent`) and counts in
//! `wsgate_http_api_requests_total{method, code}`, the method label bounded by the table
//! of [`methods::METHODS`] (any other path is `unknown`).

pub mod methods;
pub mod watch;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use http::header::{self, HeaderValue};
use http::{HeaderMap, StatusCode};
use tracing::Instrument;
use wsgate_core::rejection::{Rejection, quote};

use crate::grpc::{ApiKeyCheck, ControlService, KeyRefusal};
use crate::http::preflight::{RejectionCode, rejection_response};
use crate::metrics::Metrics;
use methods::Method;

/// Largest request body, in bytes: tonic's default limit for a received gRPC message, so
/// a call that fits one way fits the other (binary payloads grow by a third in base64).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What every API request needs.
struct Api {
    control: ControlService,
    keys: ApiKeyCheck,
    metrics: Arc<Metrics>,
}

/// The routes under `/api/`, to merge into the control listener's router.
pub fn router(control: ControlService, keys: ApiKeyCheck, metrics: Arc<Metrics>) -> Router {
    let api = Arc::new(Api {
        control,
        keys,
        metrics,
    });
    let routes = Router::new()
        .route("/api", any(serve))
        .route("/api/", any(serve))
        .route("/api/{*path}", any(serve))
        .with_state(api);
    crate::http::with_edge_layers(routes)
}

/// One request, observed: a span around it, then the metric and the status on the span.
async fn serve(State(api): State<Arc<Api>>, req: Request) -> Response {
    let method = req
        .uri()
        .path()
        .strip_prefix("/api/v1/")
        .and_then(methods::find);
    let name = method.map_or("unknown", |m| m.name);
    let verb = verb(req.method());
    // Bounded like the metric: a known method's route, or the template.
    let route = format!("/api/v1/{}", method.map_or("{method}", |m| m.name));
    let span = tracing::info_span!(
        "http.api",
        otel.name = %format!("{} {route}", span_verb(verb)),
        otel.kind = "server",
        http.request.method = verb,
        http.route = %route,
        rpc.service = "wsgate.v1.Gateway",
        rpc.method = method.map_or("", |m| m.rpc),
        http.response.status_code = tracing::field::Empty,
        wsgate.error = tracing::field::Empty,
    );
    if let Some(parent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        crate::telemetry::extract(&span, parent);
    }
    let response = match call(&api, method, req).instrument(span.clone()).await {
        Ok(json) => json_response(json),
        Err(rejection) => rejection_response(rejection),
    };
    let code = response
        .extensions()
        .get::<RejectionCode>()
        .map_or("ok", |c| c.0);
    span.record("http.response.status_code", response.status().as_u16());
    if code != "ok" {
        span.record("wsgate.error", code);
    }
    api.metrics
        .http_api_requests
        .with_label_values(&[name, code])
        .inc();
    response
}

/// The checks, in order, then the method.
async fn call(api: &Api, method: Option<&Method>, req: Request) -> Result<Vec<u8>, Rejection> {
    let Some(method) = method else {
        return Err(unknown_method(req.uri().path()));
    };
    if req.method() != http::Method::POST {
        return Err(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the API takes POST only",
        )
        .with_header(header::ALLOW, HeaderValue::from_static("POST")));
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    api.keys.check(authorization).map_err(unauthenticated)?;
    if !is_json(req.headers()) {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    // A declared length over the limit is refused before a byte of the body is read.
    if axum::body::HttpBody::size_hint(req.body()).lower() > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(body_error)?;
    (method.call)(api.control.clone(), body).await
}

fn unknown_method(path: &str) -> Rejection {
    let known: Vec<&str> = methods::METHODS.iter().map(|m| m.name).collect();
    Rejection::new(
        StatusCode::NOT_FOUND,
        "unknown_method",
        format!(
            "no API method at \"{}\"; the methods are POST /api/v1/ followed by one of: {}",
            quote(path.as_bytes()),
            known.join(", ")
        ),
    )
}

fn unauthenticated(refusal: KeyRefusal) -> Rejection {
    let message = match refusal {
        KeyRefusal::Missing => "missing API key: send an `Authorization: Bearer <key>` header",
        KeyRefusal::Invalid => "invalid API key",
    };
    Rejection::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

/// `application/json`, with any parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

fn body_error(e: axum::Error) -> Rejection {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return too_large();
        }
        source = err.source();
    }
    Rejection::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "the request body could not be read",
    )
}

fn too_large() -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn json_response(json: Vec<u8>) -> Response {
    let mut response = Response::new(axum::body::Body::from(json));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The request method as OpenTelemetry records it: a known method, else `_OTHER` (a
/// caller may send any token as a method, and attribute values should stay few).
fn verb(method: &http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == method.as_str())
        .unwrap_or("_OTHER")
}

/// The method part of a span name: `HTTP` for an unknown one, as OpenTelemetry says.
fn span_verb(verb: &'static str) -> &'static str {
    if verb == "_OTHER" { "HTTP" } else { verb }
}
