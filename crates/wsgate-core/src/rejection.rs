//! Why a handshake (or a call of the control plane's HTTP API) is refused, and the
//! refusals that more than one place can give.
//!
//! A [`Rejection`] is the whole answer: status, a stable machine-readable code, a human
//! message and the headers the status calls for. The HTTP edge turns it into the JSON
//! body `{"error": code, "message": message}`. Refusals that several checks share (the
//! pod is full, the registry is down, …) have a named constructor here, so each has one
//! code and one message wherever it is raised; one-off refusals stay next to their check.

use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};

/// `Retry-After` for 503s and the session limit: long enough for a reconnect loop not to
/// hammer a full or draining pod, short enough for a rolling update.
pub const RETRY_AFTER_BUSY_S: u64 = 5;

/// How many bytes of a client-supplied value a message may quote.
pub const ECHO_LIMIT: usize = 64;

/// A client-supplied value made safe to quote in a message: at most [`ECHO_LIMIT`] bytes
/// (cut at a char boundary), control characters escaped.
pub fn quote(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut end = text.len().min(ECHO_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end].escape_debug().collect();
    if end < text.len() {
        out.push('…');
    }
    out
}

/// Why a handshake is refused: the status, a stable machine-readable `code`, a human
/// `message` and any headers the status calls for (`Allow`, `Retry-After`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// Stable error code, the `error` field of the JSON body.
    pub code: &'static str,
    /// Human-readable explanation, the `message` field of the JSON body.
    pub message: String,
    /// Extra response headers required by the status.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A rejection without extra headers.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// 503 `draining`: the pod is shutting down.
    pub fn draining() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this gateway is shutting down; reconnect to another one",
        )
        .with_retry_after(RETRY_AFTER_BUSY_S)
    }

    /// 503 `at_capacity`: the pod holds `limits.max_connections` connections.
    pub fn at_capacity() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "at_capacity",
            "this gateway is at its connection limit; retry later",
        )
        .with_retry_after(RETRY_AFTER_BUSY_S)
    }

    /// 429 `too_many_sessions`: the user already holds `max` sessions.
    pub fn too_many_sessions(max: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            format!("this user already has the maximum of {max} open sessions"),
        )
        .with_retry_after(RETRY_AFTER_BUSY_S)
    }

    /// 503 `backend_unavailable`: the session registry failed or did not answer.
    pub fn backend_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            "the session registry is unavailable; retry shortly",
        )
        .with_retry_after(RETRY_AFTER_BUSY_S)
    }

    /// 401 `revoked_token`: a revocation names the handshake's user or its token's `jti`.
    /// It says no more than that (not which, nor until when).
    pub fn revoked_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "revoked_token",
            "the credentials are revoked",
        )
        .with_header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
    }

    /// 503 `auth_unavailable`: tokens are verified with a JWKS (`auth.jwt.jwks_url`) and
    /// no key set could be fetched yet.
    pub fn auth_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            "the gateway has no keys to verify tokens with yet; retry shortly",
        )
        .with_retry_after(RETRY_AFTER_BUSY_S)
    }

    /// 503 `auth_unavailable` in connect-proxy mode (`auth.proxy.url`): the
    /// authentication backend did not give a usable answer (down, too slow, 5xx,
    /// unreadable); the code is the JWKS one, since a client does the same: retry later.
    pub fn auth_backend_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            "the authentication backend is unavailable; retry shortly",
        )
        .with_retry_after(RETRY_AFTER_BUSY_S)
    }

    /// 401 or 403 `proxy_refused`: the connect proxy's backend refused the handshake's
    /// credentials with that status, which is passed on.
    pub fn proxy_refused(status: StatusCode) -> Self {
        Self::new(
            status,
            "proxy_refused",
            "the authentication backend refused these credentials",
        )
    }

    /// 429 `rate_limited`: the client's address is over its handshake rate; it may try
    /// again in `retry_after_s` seconds (at least 1 is sent).
    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many handshakes from this address; retry later",
        )
        .with_retry_after(retry_after_s.max(1))
    }

    /// 500 `internal`: the gateway itself is at fault (a wiring bug or a panic); the
    /// message says nothing about internals.
    pub fn internal(message: &'static str) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After: seconds`.
    pub fn with_retry_after(self, seconds: u64) -> Self {
        self.with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    /// The response body: `{"error":code,"message":message}`.
    pub fn json_body(&self) -> String {
        serde_json::json!({ "error": self.code, "message": self.message }).to_string()
    }

    /// The value of `name` among [`Rejection::headers`], if set.
    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for Rejection {}
