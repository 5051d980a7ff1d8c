//! `[auth.proxy]`: the connect proxy's backend client and verifier, built once when
//! `auth.mode = "proxy"`, and the rules on its keys (a URL under the same rule as the
//! JWKS URL, a non-empty list of valid header names, bounded timeout and cache TTL, and
//! an Origin allow-list whenever cookies are forwarded).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use wsgate_core::auth::proxy::ProxyVerifier;

use super::Problem;
use super::auth::outbound_url;
use super::rules::fmt_duration;
use super::sections::{AuthMode, Settings};
use crate::connect_proxy::HttpConnectProxy;

/// Bounds of `auth.proxy.timeout`: long enough for a backend across a region, short
/// enough that a hung backend does not pile up handshakes.
pub(super) const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(30));

/// Longest `auth.proxy.cache_ttl`: a cached answer outlives a logout by up to this long.
pub(super) const MAX_CACHE_TTL: Duration = Duration::from_secs(600);

/// The connect proxy `auth.proxy.*` describes: the HTTP client (kept to attach the
/// metrics when the gateway starts) and the verifier over it.
pub(super) type ConnectProxy = (Arc<HttpConnectProxy>, ProxyVerifier);

impl Settings {
    /// The connect proxy when `auth.mode = "proxy"` (`None` in other modes, whatever the
    /// keys say, or when a problem was reported). Problems never quote the URL: it may
    /// carry credentials.
    pub(super) fn connect_proxy(&self, p: &mut Vec<Problem>) -> Option<ConnectProxy> {
        if self.auth.mode != AuthMode::Proxy {
            return None;
        }
        let before = p.len();
        let proxy = &self.auth.proxy;
        let (min, max) = TIMEOUT_RANGE;
        if !(min..=max).contains(&proxy.timeout) {
            p.push(Problem::new(
                "auth.proxy.timeout",
                format!(
                    "must be between 100ms and 30s, got {}",
                    fmt_duration(proxy.timeout)
                ),
            ));
        }
        if proxy.cache_ttl > MAX_CACHE_TTL {
            p.push(Problem::new(
                "auth.proxy.cache_ttl",
                format!(
                    "must be at most 10m (a cached answer outlives a logout by up to this \
                     long), got {}",
                    fmt_duration(proxy.cache_ttl)
                ),
            ));
        }
        let headers = header_names(p, &proxy.headers);
        if headers.contains(&http::header::COOKIE)
            && self.preflight.allowed_origins.is_empty()
            && !self.auth.allow_insecure
        {
            // Browsers send cookies with a cross-site WebSocket handshake: without an
            // Origin allow-list any web page could open a session as its visitor.
            p.push(Problem::new(
                "preflight.allowed_origins",
                "auth.proxy.headers forwards Cookie, which browsers send on cross-site \
                 WebSocket handshakes too: list the origins of your pages here (or set \
                 auth.allow_insecure = true)",
            ));
        }
        let url = match proxy.url.as_deref() {
            Some(raw) => outbound_url(p, "auth.proxy.url", raw, self.auth.allow_insecure),
            None => {
                p.push(Problem::new(
                    "auth.proxy.url",
                    "auth.mode = \"proxy\" needs the URL of the backend that authenticates \
                     handshakes",
                ));
                None
            }
        };
        if p.len() > before {
            return None;
        }
        match HttpConnectProxy::new(url?, proxy.timeout) {
            Ok(client) => {
                let client = Arc::new(client);
                let verifier = ProxyVerifier::new(headers, proxy.cache_ttl, client.clone());
                Some((client, verifier))
            }
            Err(e) => {
                p.push(Problem::new("auth.proxy.url", e));
                None
            }
        }
    }
}

/// `auth.proxy.headers` as header names, duplicates dropped; a problem when the list is
/// empty or a name is not a valid header name.
fn header_names(p: &mut Vec<Problem>, raw: &[String]) -> Vec<HeaderName> {
    if raw.is_empty() {
        p.push(Problem::new(
            "auth.proxy.headers",
            "list the request headers the backend needs (at least one, e.g. [\"Cookie\"]); \
             no other header is forwarded",
        ));
        return Vec::new();
    }
    let mut names: Vec<HeaderName> = Vec::with_capacity(raw.len());
    for entry in raw {
        match HeaderName::from_bytes(entry.trim().as_bytes()) {
            Ok(name) if !names.contains(&name) => names.push(name),
            Ok(_) => {}
            Err(_) => p.push(Problem::new(
                "auth.proxy.headers",
                format!(
                    "invalid header name {entry:?}: use the token characters of RFC 9110 \
                     (letters, digits, !#$%&'*+-.^_`|~)"
                ),
            )),
        }
    }
    names
}
