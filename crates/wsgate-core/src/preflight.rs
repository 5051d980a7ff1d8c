//! The handshake preflight as pure functions over request parts.
//!
//! Each function answers one row of the preflight table in `docs/protocol.md` and returns a
//! [`Rejection`] that the HTTP edge (`wsgate-server`'s `http::preflight`) turns into a JSON
//! response. Nothing here touches a socket or a web framework, so every rule is tested
//! directly. The order in which the checks run is the edge's business: cheap header
//! checks first, then Host and Origin, then the per-IP rate limit and the pod's capacity,
//! and only then the token (see [`crate::auth`]) and the per-user session limit.
//!
//! Messages are written for a developer reading a failed handshake in the browser's
//! network tab. They never echo a client-controlled value beyond [`ECHO_LIMIT`] bytes.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};
use ipnet::IpNet;

use crate::admission::ConnectionGauge;
pub use crate::hosts::{HostPolicy, OriginPolicy};
pub use crate::rejection::{ECHO_LIMIT, Rejection, quote};

/// Whether the request is an RFC 8441 WebSocket bootstrap over HTTP/2 (extended CONNECT).
///
/// Such a request has no `Upgrade`, `Connection` or `Sec-WebSocket-Key` headers (HTTP/2
/// forbids connection-specific headers and the key/accept dance is not used), so those
/// checks pass it through. Whether `:protocol` really is `websocket` is settled by the
/// upgrade itself, which refuses anything else.
pub fn is_extended_connect(parts: &Parts) -> bool {
    parts.method == Method::CONNECT && parts.version >= Version::HTTP_2
}

/// The method must be `GET` (or an HTTP/2 extended CONNECT): else 405 with `Allow: GET`.
pub fn check_method(parts: &Parts) -> Result<(), Rejection> {
    if parts.method == Method::GET || is_extended_connect(parts) {
        return Ok(());
    }
    Err(Rejection::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "a WebSocket handshake must use GET, not {}",
            quote(parts.method.as_str().as_bytes())
        ),
    )
    .with_header(header::ALLOW, HeaderValue::from_static("GET")))
}

/// The request must be HTTP/1.1 or later: HTTP/1.0 and 0.9 cannot upgrade (400).
pub fn check_http_version(parts: &Parts) -> Result<(), Rejection> {
    if parts.version >= Version::HTTP_11 {
        return Ok(());
    }
    Err(Rejection::new(
        StatusCode::BAD_REQUEST,
        "http_version",
        "a WebSocket handshake needs HTTP/1.1 or later",
    ))
}

/// Whether any of the `name` headers, read as comma-separated token lists, holds `token`
/// (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// `Upgrade` must list the token `websocket`, case-insensitively (400 otherwise).
pub fn check_upgrade_header(parts: &Parts) -> Result<(), Rejection> {
    if is_extended_connect(parts) || has_token(&parts.headers, &header::UPGRADE, "websocket") {
        return Ok(());
    }
    Err(Rejection::new(
        StatusCode::BAD_REQUEST,
        "upgrade_required",
        "the Upgrade header must contain \"websocket\"",
    ))
}

/// `Connection` (possibly several headers) must list the token `upgrade` (400 otherwise).
pub fn check_connection_header(parts: &Parts) -> Result<(), Rejection> {
    if is_extended_connect(parts) || has_token(&parts.headers, &header::CONNECTION, "upgrade") {
        return Ok(());
    }
    Err(Rejection::new(
        StatusCode::BAD_REQUEST,
        "connection_upgrade",
        "the Connection header must contain \"Upgrade\"",
    ))
}

/// `Sec-WebSocket-Version` must be `13`: missing is 400, any other value 426 with
/// `Sec-WebSocket-Version: 13` so the client knows what to retry with (RFC 6455 §4.4).
pub fn check_ws_version(parts: &Parts) -> Result<(), Rejection> {
    let mut values = parts.headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    let Some(first) = values.next() else {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "missing_version",
            "the Sec-WebSocket-Version header is required and must be 13",
        ));
    };
    if values.next().is_none() && first.as_bytes().trim_ascii() == b"13" {
        return Ok(());
    }
    Err(Rejection::new(
        StatusCode::UPGRADE_REQUIRED,
        "unsupported_version",
        "only WebSocket version 13 is supported",
    )
    .with_header(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    ))
}

/// `Sec-WebSocket-Key` must be present once and be the standard base64 encoding of
/// exactly 16 bytes (400 otherwise).
pub fn check_ws_key(parts: &Parts) -> Result<(), Rejection> {
    if is_extended_connect(parts) {
        return Ok(());
    }
    let bad = |message: &str| Err(Rejection::new(StatusCode::BAD_REQUEST, "bad_key", message));
    let mut values = parts.headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let Some(key) = values.next() else {
        return bad("the Sec-WebSocket-Key header is required");
    };
    if values.next().is_some() {
        return bad("send exactly one Sec-WebSocket-Key header");
    }
    let key = key.as_bytes().trim_ascii();
    // 16 bytes encode to exactly 24 characters with padding; checking the length first
    // keeps a huge header from being decoded at all.
    let valid = key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16);
    if valid {
        Ok(())
    } else {
        bad("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case
/// `X-Forwarded-For` is walked right to left past trusted hops and the first untrusted
/// address is the client (the leftmost one if every hop is trusted).
///
/// Addresses to the left of the first untrusted hop were written by the client itself and
/// are never believed. A malformed `X-Forwarded-For` yields the peer's address.
/// IPv4-mapped IPv6 addresses (dual-stack sockets) are reported as IPv4.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return peer_ip;
        };
        for hop in value.split(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip.to_canonical()),
                Err(_) => return peer_ip,
            }
        }
    }
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or_else(|| hops.first())
        .copied()
        .unwrap_or(peer_ip)
}

pub use crate::limiter::HandshakeLimiter;

/// The client's address after trusted proxies ([`client_ip`]), as the edge's rate-limit
/// check computed it and put it in the request extensions. The session records it, and
/// the connect proxy (`crate::auth::proxy`) forwards it to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The pod must be neither draining nor at `max` open connections: 503 `draining` or
/// `at_capacity`, each with `Retry-After: 5`.
///
/// This is the cheap early answer; [`ConnectionGauge::try_acquire`] settles races.
pub fn check_capacity(gauge: &ConnectionGauge, max: usize) -> Result<(), Rejection> {
    if gauge.is_draining() {
        return Err(Rejection::draining());
    }
    if gauge.open() >= max {
        return Err(Rejection::at_capacity());
    }
    Ok(())
}

/// A user may hold at most `max` sessions (0 = unlimited): 429 `too_many_sessions` with
/// `Retry-After: 5` when `current` already reaches it.
pub fn check_user_sessions(current: usize, max: usize) -> Result<(), Rejection> {
    if max == 0 || current < max {
        return Ok(());
    }
    Err(Rejection::too_many_sessions(max))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn parts(build: http::request::Builder) -> Parts {
        build.body(()).unwrap().into_parts().0
    }

    fn handshake() -> http::request::Builder {
        http::Request::get("/ws")
            .header("host", "gw.example.com")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", KEY)
    }

    fn all_checks(p: &Parts) -> Result<(), Rejection> {
        check_method(p)?;
        check_http_version(p)?;
        check_upgrade_header(p)?;
        check_connection_header(p)?;
        check_ws_version(p)?;
        check_ws_key(p)
    }

    #[test]
    fn a_valid_handshake_passes_every_header_check() {
        assert_eq!(all_checks(&parts(handshake())), Ok(()));
    }

    #[test]
    fn method() {
        let p = parts(handshake().method("POST"));
        let r = check_method(&p).unwrap_err();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.code, "method_not_allowed");
        assert_eq!(r.header(&header::ALLOW).unwrap(), "GET");
        // HTTP/1.1 CONNECT is a proxy tunnel, not a WebSocket.
        assert!(check_method(&parts(handshake().method("CONNECT"))).is_err());
    }

    #[test]
    fn http2_extended_connect_skips_http1_only_headers() {
        let p = parts(
            http::Request::connect("https://gw.example.com/ws")
                .version(Version::HTTP_2)
                .header("sec-websocket-version", "13"),
        );
        assert_eq!(all_checks(&p), Ok(()));
        // The version header is still required.
        let p = parts(http::Request::connect("https://gw.example.com/ws").version(Version::HTTP_2));
        assert_eq!(check_ws_version(&p).unwrap_err().code, "missing_version");
    }

    #[test]
    fn http_version() {
        for v in [Version::HTTP_10, Version::HTTP_09] {
            let r = check_http_version(&parts(handshake().version(v))).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (StatusCode::BAD_REQUEST, "http_version")
            );
        }
        assert!(check_http_version(&parts(handshake().version(Version::HTTP_2))).is_ok());
    }

    #[test]
    fn upgrade_header_is_a_case_insensitive_token_list() {
        for ok in ["websocket", "WebSocket", "h2c, websocket", " WEBSOCKET "] {
            let mut p = parts(handshake());
            p.headers.insert("upgrade", HeaderValue::from_static(ok));
            assert!(check_upgrade_header(&p).is_ok(), "{ok}");
        }
        for bad in ["websockets", "h2c", "", "web socket"] {
            let mut p = parts(handshake());
            p.headers.insert("upgrade", HeaderValue::from_static(bad));
            let r = check_upgrade_header(&p).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (StatusCode::BAD_REQUEST, "upgrade_required")
            );
        }
        let mut p = parts(handshake());
        p.headers.remove("upgrade");
        assert!(check_upgrade_header(&p).is_err());
    }

    #[test]
    fn connection_header_may_be_a_list_over_several_headers() {
        for ok in ["keep-alive, Upgrade", "UPGRADE", "upgrade,keep-alive"] {
            let mut p = parts(handshake());
            p.headers.insert("connection", HeaderValue::from_static(ok));
            assert!(check_connection_header(&p).is_ok(), "{ok}");
        }
        let mut p = parts(handshake());
        p.headers
            .insert("connection", HeaderValue::from_static("keep-alive"));
        p.headers
            .append("connection", HeaderValue::from_static("upgrade"));
        assert!(check_connection_header(&p).is_ok());

        for bad in ["keep-alive", "upgraded", "close"] {
            let mut p = parts(handshake());
            p.headers
                .insert("connection", HeaderValue::from_static(bad));
            let r = check_connection_header(&p).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (StatusCode::BAD_REQUEST, "connection_upgrade")
            );
        }
        let mut p = parts(handshake());
        p.headers.remove("connection");
        assert!(check_connection_header(&p).is_err());
    }

    #[test]
    fn ws_version() {
        let mut p = parts(handshake());
        p.headers.remove("sec-websocket-version");
        let r = check_ws_version(&p).unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::BAD_REQUEST, "missing_version")
        );

        for bad in ["8", "13, 8", "", "130"] {
            let mut p = parts(handshake());
            p.headers
                .insert("sec-websocket-version", HeaderValue::from_static(bad));
            let r = check_ws_version(&p).unwrap_err();
            assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{bad}");
            assert_eq!(r.code, "unsupported_version");
            assert_eq!(r.header(&header::SEC_WEBSOCKET_VERSION).unwrap(), "13");
        }
        let mut p = parts(handshake());
        p.headers
            .append("sec-websocket-version", HeaderValue::from_static("13"));
        assert!(check_ws_version(&p).is_err(), "two version headers");
    }

    #[test]
    fn ws_key() {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
        let key_of = |value: &str| {
            let mut p = parts(handshake());
            p.headers
                .insert("sec-websocket-key", HeaderValue::from_str(value).unwrap());
            check_ws_key(&p)
        };
        assert!(key_of(&STANDARD.encode([7u8; 16])).is_ok());
        let mut bad = vec![
            STANDARD.encode([7u8; 15]),
            STANDARD.encode([7u8; 17]),
            STANDARD_NO_PAD.encode([7u8; 16]),
            "not base64 at all!!!!!!!".to_owned(),
            "dGhlIHNhbXBsZSBub25jZQ=".to_owned(),
            "dGhlIHNhbXBsZSBub25jZR==".to_owned(), // non-zero trailing bits
            String::new(),
            "A".repeat(10_000),
        ];
        // Bytes whose URL-safe encoding differs from the standard one.
        bad.push(URL_SAFE.encode([0xfb_u8; 16]));
        for value in bad {
            let r = key_of(&value).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (StatusCode::BAD_REQUEST, "bad_key"),
                "{value}"
            );
            assert!(r.message.len() < 100);
        }
        let mut p = parts(handshake());
        p.headers.remove("sec-websocket-key");
        assert_eq!(check_ws_key(&p).unwrap_err().code, "bad_key");
        let mut p = parts(handshake());
        p.headers
            .append("sec-websocket-key", HeaderValue::from_static(KEY));
        assert_eq!(check_ws_key(&p).unwrap_err().code, "bad_key");
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn with_host(host: &str) -> Parts {
        let mut p = parts(handshake());
        p.headers
            .insert("host", HeaderValue::from_str(host).unwrap());
        p
    }

    #[test]
    fn host_policy() {
        let policy = HostPolicy::new(&strings(&[
            "gw.example.com",
            "Local.Test:8080",
            "[::1]:9000",
        ]))
        .unwrap();
        for ok in [
            "gw.example.com",
            "GW.Example.COM",
            "gw.example.com:443",
            "gw.example.com:1234",
            "gw.example.com.",
            "local.test:8080",
            "[::1]:9000",
        ] {
            assert!(policy.check(&with_host(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.com",
            "local.test",
            "local.test:8081",
            "[::1]",
            "gw.example.com.evil.com",
            "user@gw.example.com",
            "",
        ] {
            let r = policy.check(&with_host(bad)).unwrap_err();
            assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{bad}");
            assert_eq!(r.code, "misdirected_host");
        }
        let mut p = parts(handshake());
        p.headers.remove("host");
        assert!(policy.check(&p).is_err());
        let mut p = parts(handshake());
        p.headers
            .append("host", HeaderValue::from_static("evil.com"));
        assert!(policy.check(&p).is_err(), "two Host headers");

        // Absolute-form: the URI authority wins over the Host header.
        let p = parts(handshake().uri("http://evil.com/ws"));
        assert!(policy.check(&p).is_err());
        let p = parts(
            handshake()
                .uri("http://gw.example.com/ws")
                .header("host", "evil.com"),
        );
        assert!(policy.check(&p).is_ok());

        // Empty list allows everything, even a missing Host.
        let open = HostPolicy::new(&[]).unwrap();
        assert!(open.check(&with_host("anything")).is_ok());

        // A huge Host is quoted truncated.
        let long = "a".repeat(5000);
        let r = policy.check(&with_host(&long)).unwrap_err();
        assert!(r.message.len() < 200);
    }

    #[test]
    fn host_policy_rejects_bad_entries() {
        for bad in [
            "",
            "http://a.com",
            "a.com/x",
            "a.com:99999",
            "u@a.com",
            "a.com:",
        ] {
            assert!(HostPolicy::new(&strings(&[bad])).is_err(), "{bad}");
        }
    }

    fn with_origin(origin: Option<&str>) -> Parts {
        let mut p = parts(handshake());
        if let Some(origin) = origin {
            p.headers
                .insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        p
    }

    #[test]
    fn origin_policy_exact_and_wildcard() {
        let policy = OriginPolicy::new(
            &strings(&[
                "https://app.com",
                "http://Dev.Local:3000",
                "https://*.example.org",
            ]),
            false,
        )
        .unwrap();
        for ok in [
            "https://app.com",
            "HTTPS://APP.COM",
            "https://app.com:443",
            "http://dev.local:3000",
            "https://x.example.org",
            "https://a.b.example.org",
            "https://a.b.example.org:443",
        ] {
            assert!(policy.check(&with_origin(Some(ok))).is_ok(), "{ok}");
        }
        for bad in [
            "https://app.com:8443",
            "http://app.com",
            "https://app.com.evil.com",
            "https://evilapp.com",
            "http://dev.local",
            "https://example.org",
            "https://example.org.evil.com",
            "https://evilexample.org",
            "http://x.example.org",
            "https://x.example.org:8443",
            "https://.example.org",
            "https://app.com/",
            "https://app.com/path",
            "https://*.example.org",
            "null",
            "garbage",
            "",
        ] {
            let r = policy.check(&with_origin(Some(bad))).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (StatusCode::FORBIDDEN, "origin_forbidden"),
                "{bad}"
            );
        }
        // Missing Origin is allowed unless required.
        assert!(policy.check(&with_origin(None)).is_ok());
        let mut p = with_origin(Some("https://app.com"));
        p.headers
            .append("origin", HeaderValue::from_static("https://app.com"));
        assert!(policy.check(&p).is_err(), "two Origin headers");
    }

    #[test]
    fn origin_policy_star_null_and_required() {
        let star = OriginPolicy::new(&strings(&["*"]), false).unwrap();
        assert!(
            star.check(&with_origin(Some("https://anything.io:9")))
                .is_ok()
        );
        assert!(star.check(&with_origin(Some("null"))).is_err());
        let null = OriginPolicy::new(&strings(&["null"]), false).unwrap();
        assert!(null.check(&with_origin(Some("null"))).is_ok());
        assert!(null.check(&with_origin(Some("https://a.com"))).is_err());

        let required = OriginPolicy::new(&strings(&["*"]), true).unwrap();
        let r = required.check(&with_origin(None)).unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::FORBIDDEN, "origin_required")
        );

        let open = OriginPolicy::new(&[], false).unwrap();
        assert!(open.check(&with_origin(None)).is_ok());
        assert!(open.check(&with_origin(Some("whatever"))).is_ok());
        let open_required = OriginPolicy::new(&[], true).unwrap();
        assert!(open_required.check(&with_origin(None)).is_err());
        assert!(
            open_required
                .check(&with_origin(Some("https://a.com")))
                .is_ok()
        );
    }

    #[test]
    fn origin_policy_rejects_bad_entries() {
        for bad in [
            "",
            "app.com",
            "https://",
            "https://a.com/x",
            "https://*",
            "1http://a.com",
        ] {
            assert!(OriginPolicy::new(&strings(&[bad]), false).is_err(), "{bad}");
        }
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn client_ip_trusts_only_trusted_hops() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let proxy: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let direct: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();

        // An untrusted peer's XFF is ignored.
        assert_eq!(
            client_ip(direct, &xff(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // No XFF: the peer.
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            ip("10.1.1.1")
        );
        // Rightmost untrusted wins; spoofed entries to its left are ignored.
        assert_eq!(
            client_ip(proxy, &xff(&["6.6.6.6, 1.2.3.4, 10.2.2.2"]), &trusted),
            ip("1.2.3.4")
        );
        // Several headers form one list.
        assert_eq!(
            client_ip(proxy, &xff(&["6.6.6.6", "1.2.3.4", "10.2.2.2"]), &trusted),
            ip("1.2.3.4")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            client_ip(proxy, &xff(&["10.9.9.9, 10.2.2.2"]), &trusted),
            ip("10.9.9.9")
        );
        // Malformed: the peer.
        assert_eq!(
            client_ip(proxy, &xff(&["1.2.3.4, junk"]), &trusted),
            ip("10.1.1.1")
        );
        assert_eq!(client_ip(proxy, &xff(&[""]), &trusted), ip("10.1.1.1"));
        // IPv6 and IPv4-mapped peers.
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(
            client_ip(v6, &xff(&["2001:db8::1"]), &trusted),
            ip("2001:db8::1")
        );
        let mapped: SocketAddr = "[::ffff:10.1.1.1]:80".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &xff(&["1.2.3.4"]), &trusted),
            ip("1.2.3.4")
        );
        // Nothing trusted: always the peer.
        assert_eq!(client_ip(proxy, &xff(&["1.2.3.4"]), &[]), ip("10.1.1.1"));
    }

    #[test]
    fn capacity() {
        let gauge = std::sync::Arc::new(ConnectionGauge::new());
        assert!(check_capacity(&gauge, 1).is_ok());
        let _slot = gauge.try_acquire(1).unwrap();
        let r = check_capacity(&gauge, 1).unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::SERVICE_UNAVAILABLE, "at_capacity")
        );
        assert_eq!(r.header(&header::RETRY_AFTER).unwrap(), "5");
        gauge.start_draining();
        let r = check_capacity(&gauge, 100).unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        );
        assert_eq!(r.header(&header::RETRY_AFTER).unwrap(), "5");
    }

    #[test]
    fn user_sessions() {
        assert!(check_user_sessions(1000, 0).is_ok());
        assert!(check_user_sessions(2, 3).is_ok());
        let r = check_user_sessions(3, 3).unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions")
        );
    }

    #[test]
    fn json_body_and_quote() {
        let r = Rejection::new(StatusCode::BAD_REQUEST, "bad_key", "say \"hi\"");
        let v: serde_json::Value = serde_json::from_str(&r.json_body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "bad_key", "message": "say \"hi\""})
        );
        let q = quote("é".repeat(100).as_bytes());
        assert!(q.len() <= ECHO_LIMIT + '…'.len_utf8());
        assert_eq!(quote(b"a\nb"), "a\\nb");
    }

    mod properties {
        use super::*;
        use base64::engine::general_purpose::STANDARD;
        use proptest::prelude::*;

        fn key_check(value: &str) -> Result<(), Rejection> {
            let mut p = parts(handshake());
            match HeaderValue::from_str(value) {
                Ok(v) => {
                    p.headers.insert("sec-websocket-key", v);
                    check_ws_key(&p)
                }
                // Not representable as a header: nothing to check.
                Err(_) => Ok(()),
            }
        }

        proptest! {
            #[test]
            fn any_16_byte_key_passes(bytes in prop::array::uniform16(any::<u8>())) {
                prop_assert!(key_check(&STANDARD.encode(bytes)).is_ok());
            }

            #[test]
            fn keys_of_other_lengths_fail(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                prop_assume!(bytes.len() != 16);
                prop_assert_eq!(key_check(&STANDARD.encode(&bytes)).unwrap_err().code, "bad_key");
            }

            #[test]
            fn arbitrary_keys_never_panic_and_are_never_echoed(value in "\\PC{0,300}") {
                if let Err(r) = key_check(&value) {
                    prop_assert!(r.message.len() < 100);
                }
            }

            #[test]
            fn upgrade_token_found_in_any_case_and_position(
                before in prop::collection::vec("[a-z0-9]{1,8}", 0..4),
                after in prop::collection::vec("[a-z0-9]{1,8}", 0..4),
                mask in any::<u16>(),
            ) {
                let token: String = "websocket"
                    .chars()
                    .enumerate()
                    .map(|(i, c)| if mask & (1 << i) != 0 { c.to_ascii_uppercase() } else { c })
                    .collect();
                let mut items = before.clone();
                items.push(token);
                items.extend(after);
                let mut p = parts(handshake());
                p.headers.insert("upgrade", HeaderValue::from_str(&items.join(" , ")).unwrap());
                prop_assert!(check_upgrade_header(&p).is_ok());
            }

            #[test]
            fn quote_is_bounded(bytes in prop::collection::vec(any::<u8>(), 0..1000)) {
                let q = quote(&bytes);
                // Each kept char may be escaped to at most 10 bytes (`\u{10ffff}`).
                prop_assert!(q.len() <= ECHO_LIMIT * 10 + 3);
            }

            #[test]
            fn wildcard_origins_match_only_strict_subdomains(
                label in "[a-z0-9-]{0,12}",
                sep in prop::sample::select(vec!["", ".", "-", "x"]),
            ) {
                let entries = ["https://*.example.org".to_owned()];
                let policy = OriginPolicy::new(&entries, false).unwrap();
                let origin = format!("https://{label}{sep}example.org");
                let allowed = policy.check(&with_origin(Some(&origin))).is_ok();
                prop_assert_eq!(allowed, sep == "." && !label.is_empty(), "{}", origin);
            }

            #[test]
            fn client_ip_is_the_peer_or_a_forwarded_hop(
                peer in (any::<bool>(), any::<[u8; 3]>()),
                hops in prop::collection::vec((any::<bool>(), any::<[u8; 3]>()), 0..6),
            ) {
                // Half of all addresses fall in the trusted 10.0.0.0/8, the rest in 11/8.
                let ip = |(trusted, [a, b, c]): (bool, [u8; 3])| {
                    IpAddr::from([if trusted { 10 } else { 11 }, a, b, c])
                };
                let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
                let peer = SocketAddr::new(ip(peer), 1);
                let hop_ips: Vec<IpAddr> = hops.into_iter().map(ip).collect();
                let list: Vec<String> = hop_ips.iter().map(ToString::to_string).collect();
                let headers = if list.is_empty() {
                    HeaderMap::new()
                } else {
                    xff(&[&list.join(", ")])
                };
                let got = client_ip(peer, &headers, &trusted);
                let is_trusted = |ip: &IpAddr| trusted[0].contains(ip);
                if !is_trusted(&peer.ip()) || hop_ips.is_empty() {
                    prop_assert_eq!(got, peer.ip());
                } else {
                    prop_assert!(hop_ips.contains(&got));
                    // Everything to the right of the answer is a trusted hop.
                    let pos = hop_ips.iter().rposition(|ip| *ip == got).unwrap();
                    prop_assert!(hop_ips[pos + 1..].iter().all(is_trusted));
                    prop_assert!(!is_trusted(&got) || hop_ips.iter().all(is_trusted));
                }
            }
        }
    }
}
