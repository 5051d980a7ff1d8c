//! Calls from clients to the application's backend (the `rpc` op): each call is one
//! `POST {rpc.url}` of `{"user_id","session_id","method","data"}` as JSON, and the answer
//! is what the client gets back.
//!
//! One [`RpcClient`] per gateway, built with the configuration: a pooled HTTP client
//! (reqwest on the rustls and ring the listeners use, HTTP/1.1 and HTTP/2), no proxies
//! and no redirects (the backend is one known URL), the bearer token as a sensitive
//! header. [`RpcClient::call`] runs one call to its end and says how it went in an
//! [`RpcOutcome`]; it knows nothing of sessions, which decide when to call and where the
//! answer goes (`session/rpc.rs`).
//!
//! Each call has a `ws.rpc` client span (a child of the session's span), whose W3C
//! `traceparent` goes with the request, so the backend's spans join the client's trace.
//! The span records the method, outcome and status, never the URL (it may hold
//! credentials) or the token. Calls are counted in `wsgate_rpc_calls_total{outcome}` and
//! timed in `wsgate_rpc_duration_seconds`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use tracing::Instrument;
use wsgate_core::protocol::RawJson;

use crate::metrics::Metrics;

/// Longest message taken from a backend's error answer, in bytes.
pub const MAX_BACKEND_MESSAGE_BYTES: usize = 256;

/// What [`RpcClient::new`] is built from (the `rpc.*` keys, checked).
pub struct RpcConfig {
    /// `rpc.url`: an `http` or `https` URL with a host.
    pub url: url::Url,
    /// `rpc.timeout`.
    pub timeout: Duration,
    /// `rpc.max_in_flight`.
    pub max_in_flight: usize,
    /// `rpc.max_response_bytes`.
    pub max_response_bytes: usize,
    /// `rpc.bearer_token`.
    pub bearer_token: Option<String>,
}

/// The gateway's client for the backend; shared by every session.
pub struct RpcClient {
    http: reqwest::Client,
    url: url::Url,
    authorization: Option<HeaderValue>,
    /// No complete answer within this long is a timeout.
    pub timeout: Duration,
    /// Calls one session may have in flight.
    pub max_in_flight: usize,
    max_response_bytes: usize,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Host and port only: the URL may carry credentials.
        f.debug_struct("RpcClient")
            .field("host", &self.url.host_str())
            .field("port", &self.url.port_or_known_default())
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// Why an [`RpcClient`] could not be built; never quotes the token or the URL.
#[derive(Debug, thiserror::Error)]
pub enum RpcSetupError {
    /// `rpc.bearer_token` cannot go into a header.
    #[error("must be visible ASCII characters without spaces")]
    BearerToken,
    /// The HTTP client or its TLS roots.
    #[error("{0}")]
    Client(String),
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcOutcome {
    /// The backend answered 200 with this JSON body.
    Ok(RawJson),
    /// The backend could not be reached, answered another status, or with a body that
    /// is not JSON or too large; `message` is for the client.
    Failed {
        /// The backend's own message when it gave one, else what went wrong.
        message: String,
        /// The backend's HTTP status, when it answered.
        status: Option<u16>,
    },
    /// No complete answer within `rpc.timeout`.
    Timeout,
}

impl RpcOutcome {
    /// The `outcome` label and span attribute: `ok`, `failed` or `timeout`.
    pub fn label(&self) -> &'static str {
        match self {
            RpcOutcome::Ok(_) => "ok",
            RpcOutcome::Failed { .. } => "failed",
            RpcOutcome::Timeout => "timeout",
        }
    }

    fn failed(message: impl Into<String>, status: Option<u16>) -> Self {
        RpcOutcome::Failed {
            message: message.into(),
            status,
        }
    }
}

/// One call, as the session asks for it.
pub struct RpcRequest<'a> {
    /// The caller's user id.
    pub user_id: &'a str,
    /// The caller's session id.
    pub session_id: &'a str,
    /// The method the client named.
    pub method: &'a str,
    /// The client's `data`, as it wrote it.
    pub data: &'a RawJson,
}

impl RpcClient {
    /// The client for `config`: its TLS roots loaded (the system's, for an https URL) and
    /// its token checked.
    pub fn new(config: RpcConfig) -> Result<Self, RpcSetupError> {
        let authorization = match &config.bearer_token {
            None => None,
            Some(token) => Some(bearer(token).ok_or(RpcSetupError::BearerToken)?),
        };
        let tls = tls_config(config.url.scheme() == "https").map_err(RpcSetupError::Client)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| RpcSetupError::Client(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: config.url,
            authorization,
            timeout: config.timeout,
            max_in_flight: config.max_in_flight,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// Starts a call: its span opens now, as a child of the current span (the
    /// session's), and the returned future runs it to its end. Dropping the future
    /// cancels the call (the connection is closed) and counts it as `cancelled`.
    pub fn call(
        self: &Arc<Self>,
        request: RpcRequest<'_>,
        metrics: Arc<Metrics>,
    ) -> impl Future<Output = RpcOutcome> + Send + 'static {
        #[derive(Serialize)]
        struct Body<'a> {
            user_id: &'a str,
            session_id: &'a str,
            method: &'a str,
            data: &'a RawJson,
        }
        let body = serde_json::to_vec(&Body {
            user_id: request.user_id,
            session_id: request.session_id,
            method: request.method,
            data: request.data,
        });
        let span = tracing::info_span!(
            "ws.rpc",
            otel.kind = "client",
            rpc.method = %request.method,
            session.id = %request.session_id,
            http.request.method = "POST",
            server.address = self.url.host_str().unwrap_or_default(),
            server.port = self.url.port_or_known_default().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
            wsgate.outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let traceparent = span.in_scope(crate::propagation::inject);
        let client = self.clone();
        let mut pending = Pending {
            metrics,
            span: span.clone(),
            started: Instant::now(),
            finished: false,
        };
        async move {
            let outcome = match body {
                // Strings and checked JSON always serialize; a failure, not a panic.
                Err(e) => RpcOutcome::failed(format!("the call could not be encoded: {e}"), None),
                Ok(body) => {
                    let exchange = client.exchange(body, traceparent);
                    match tokio::time::timeout(client.timeout, exchange).await {
                        Ok(outcome) => outcome,
                        Err(_) => RpcOutcome::Timeout,
                    }
                }
            };
            pending.finish(&outcome);
            outcome
        }
        .instrument(span)
    }

    /// The request and its answer, without the time limit.
    async fn exchange(&self, body: Vec<u8>, traceparent: Option<String>) -> RpcOutcome {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                // Not a warning per call: clients decide how often this happens, and the
                // metrics and the span show it. The error's text would name the URL.
                tracing::debug!(error = %e.without_url(), "rpc backend unreachable");
                return RpcOutcome::failed("the backend could not be reached", None);
            }
        };
        let status = response.status().as_u16();
        let body = read_bounded(&mut response, self.max_response_bytes).await;
        match (status, body) {
            (200, Ok(body)) => match std::str::from_utf8(&body).map(RawJson::parse) {
                Ok(Ok(json)) => RpcOutcome::Ok(json),
                _ => RpcOutcome::failed("the backend's answer is not JSON", Some(status)),
            },
            (200, Err(BodyError::TooLarge)) => RpcOutcome::failed(
                format!(
                    "the backend's answer is larger than {} bytes",
                    self.max_response_bytes
                ),
                Some(status),
            ),
            (_, Ok(body)) => RpcOutcome::failed(backend_message(status, &body), Some(status)),
            (_, Err(BodyError::TooLarge)) => {
                RpcOutcome::failed(format!("the backend answered HTTP {status}"), Some(status))
            }
            (_, Err(BodyError::Read)) => {
                RpcOutcome::failed("the backend's answer was cut off", Some(status))
            }
        }
    }
}

/// A call in flight, for its span and the metrics: a call dropped before it finished
/// (its session ended) counts as `cancelled`.
struct Pending {
    metrics: Arc<Metrics>,
    span: tracing::Span,
    started: Instant,
    finished: bool,
}

impl Pending {
    fn finish(&mut self, outcome: &RpcOutcome) {
        self.finished = true;
        let label = outcome.label();
        self.span.record("wsgate.outcome", label);
        match outcome {
            RpcOutcome::Ok(_) => {
                self.span.record("http.response.status_code", 200);
            }
            RpcOutcome::Failed { message, status } => {
                if let Some(status) = status {
                    self.span.record("http.response.status_code", status);
                }
                self.span.record("otel.status_code", "ERROR");
                tracing::debug!(%message, "rpc failed");
            }
            RpcOutcome::Timeout => {
                self.span.record("otel.status_code", "ERROR");
                tracing::debug!("rpc timed out");
            }
        }
        self.metrics.rpc_calls.with_label_values(&[label]).inc();
        self.metrics
            .rpc_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.finished {
            self.span.record("wsgate.outcome", "cancelled");
            self.metrics
                .rpc_calls
                .with_label_values(&["cancelled"])
                .inc();
        }
    }
}

/// Why a body was not read whole.
#[derive(Debug)]
enum BodyError {
    /// Over the limit.
    TooLarge,
    /// The connection failed while reading.
    Read,
}

/// Reads a body of at most `limit` bytes, refusing a larger one as soon as it shows (by
/// its `Content-Length`, or once that much has arrived), so a huge answer costs at most
/// `limit` bytes of memory.
async fn read_bounded(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What a backend's error answer says, for the client: the `message` (or `error`) string
/// of a JSON object, else the body as trimmed text, else the status; at most
/// [`MAX_BACKEND_MESSAGE_BYTES`].
pub fn backend_message(status: u16, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_owned))
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let text = text.trim();
    if text.is_empty() {
        return format!("the backend answered HTTP {status}");
    }
    let mut end = text.len().min(MAX_BACKEND_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// `Bearer <token>` as a header value marked sensitive (kept out of HTTP/2 tables and
/// debug output); `None` unless the token is visible ASCII without spaces.
fn bearer(token: &str) -> Option<HeaderValue> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// rustls on ring, trusting the system's CA certificates (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured) when `https` calls are to be made.
pub(crate) fn tls_config(https: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(
                "no CA certificates found in the system store for an https URL (install \
                 ca-certificates or set SSL_CERT_FILE)"
                    .to_owned(),
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backend_messages_come_from_json_fields_or_text_and_are_bounded() {
        assert_eq!(
            backend_message(500, br#"{"message":"order 7 not found","error":"x"}"#),
            "order 7 not found"
        );
        assert_eq!(
            backend_message(400, br#"{"error":"bad_input"}"#),
            "bad_input"
        );
        assert_eq!(backend_message(502, b"  upstream down\n"), "upstream down");
        assert_eq!(backend_message(503, b""), "the backend answered HTTP 503");
        assert_eq!(
            backend_message(500, br#"{"detail":"x"}"#),
            r#"{"detail":"x"}"#,
            "an object without message or error is shown as text"
        );
        let long = "é".repeat(300);
        let cut = backend_message(500, long.as_bytes());
        assert!(cut.len() <= MAX_BACKEND_MESSAGE_BYTES);
        assert!(cut.starts_with("éé"), "cut on a character boundary");
    }

    #[test]
    fn the_token_must_be_one_visible_word() {
        assert!(bearer("abc.DEF-123_~+/=").unwrap().is_sensitive());
        for bad in ["", "two words", "tab\there", "naïve", "line\n"] {
            assert!(bearer(bad).is_none(), "{bad:?}");
        }
    }
}
