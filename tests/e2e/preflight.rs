//! The preflight chain of docs/protocol.md through a real socket: raw HTTP/1.x bytes in, the
//! status, headers and `{"error":…,"message":…}` body out, for every row of the table,
//! plus the token rules of §3 "Auth" and the order in which the checks run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use wsgate_server::settings::{AuthMode, JwtAlgorithm, Settings};
use wsgate_tests::{
    Gateway, RawResponse, SECRET, WAIT, base_settings, jwt_settings, raw_request, token,
    upgrade_request,
};

/// The RFC 6455 §1.3 example key and its accept value.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A test-only RSA key pair (never used outside tests). The public half is what an
/// RS256 gateway verifies with; the private half only signs the positive control.
const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA4zn29ej6z6DUos3SSEEc
mR+DpjdCvRNeAQEMd/qg+Sw84OApmRN+1K+0B6Twv8EYg5GMcykLpVATbkXuIR6J
D1W+Anoj1StBeIQhxnjLkbd8FT9CIU4fLnyi19hC9GmkM6sGU7dbFhjYYHuP1LCs
HlcLlkdw7t5bnANDIWnLcdcAkwwhi9qErzRZP0Di09pjxCenFBpmycZdbbHMFKcC
RqeG3j94+sqBfL22kxDXOKmDl4Gr1Nq82PdtyYupcEKGCAta7I4iLVO0YW/gxRgM
AwYgTs6+6+1kTHsAT34Q1XUBZN7Ln1iUWShvuv1i/dS0oXXdFxtEIGSqbt1R+z5u
gwIDAQAB
-----END PUBLIC KEY-----
";

const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDjOfb16PrPoNSi
zdJIQRyZH4OmN0K9E14BAQx3+qD5LDzg4CmZE37Ur7QHpPC/wRiDkYxzKQulUBNu
Re4hHokPVb4CeiPVK0F4hCHGeMuRt3wVP0IhTh8ufKLX2EL0aaQzqwZTt1sWGNhg
e4/UsKweVwuWR3Du3lucA0Mhactx1wCTDCGL2oSvNFk/QOLT2mPEJ6cUGmbJxl1t
scwUpwJGp4beP3j6yoF8vbaTENc4qYOXgavU2rzY923Ji6lwQoYIC1rsjiItU7Rh
b+DFGAwDBiBOzr7r7WRMewBPfhDVdQFk3sufWJRZKG+6/WL91LShdd0XG0QgZKpu
3VH7Pm6DAgMBAAECggEAKHadhkv/QfMTeoxpammB5LiqcnJ7xXzJ7CbaKBFvEgAx
NSBl9/bzSn+hcQ0LvDHwIhnMp4NDKiSY2TXFwosUADGWHQ3QDLlftszc0OGY6rGA
fK4fohutzNLwErzVq32Weob1oPnRVB2HhqLqSYdOlzaL/y5oq3jYWm9wSGZ1DqfT
cIKvZhQKDMOXg1q4ek2U9LrSkek1LiOG+P9WEcjjmR/y3N4PDi0edUlvqpg9A0er
y8Twrq4Qxz8GimTtHiB3flWB4lBysUgSnYVNm9MTbRh2Vq+iXMYK4bScFAnQihAG
uWy3aX/WxzcWxzI7gsed01ojzmhBtJMoRA3JjpzoeQKBgQDzrcRLvaU83w6UxyI5
GhI30M8lybKyxWn/KXzmjMIXL38UPVV1I82DBBQdk8AdzndlJHN61uWjQmliwTTL
2IGwOJC8N/b1X8TAqSX6m3/4ZGxZnePDnM/Q0X1Kgw5r5UZHCEDlgndwkwW76Skl
/tlJDsqrTGeoj8f5RClD6TurGwKBgQDutzwlPVuAJex8xhLuXKGBIX4CKE+dqDGR
v7ViGcoETiCxnB92gNUJCREzZAYkBY0NL/iV+Fu/rZHU6Hp/8sX8yJSIOa2ELbfu
GjBzbN3cAkdauHbgDld1+4XvbmZ8BRuSZWc/8g447gGq3+aJ/Wkx4gK/RpTwbTjP
wy1Hp1PYuQKBgQDI4ehf9DBjFROFLQCWiFqabuZGJZfObpZqRr5zpXhf+sTNX56y
mdhS+KrIk0QejlW5KKqWis/2ncoZImOu5IZNSuRudch+Efw2Q3tOtKBzmf4Ehvf8
C6r6X6jlI1NhOTqNVk2BpuNmB54Dgjxs2UIxSyNiwfL2b8mQQVOva3fIHwKBgHqm
GnjntYN5+K+C9WcSoMg/9QYWwBE4wX8pCICGz4y2t4WJuYChYNNrnTLSSXVohLgp
1Yb4O+uXuj2x1H64tZDTXb1AJS6sbrwfKJWlcbgAU7kA3dLwi29K8924018VIL1u
7EWmkDgf0SuCLmjnkozWmqK8GPoOpAnbNgCCsEnBAoGBAI3Uqduwb+84Li7Mim9h
W2kYllEU4kPHq53rFr2BBY5yQM6EF4bOC5JFtiZBEggT6BvYcfkw4NFf/4J4YqH8
Wi8CGH8ab17GZc6GWZnhRMlHN9FguoIwexrjA4P0gH5poE6UDcmp8KoPXezABwgx
rxL5ymYmkFpHPaLzbu6joCgp
-----END PRIVATE KEY-----
";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A raw HTTP request under construction: a valid upgrade request by default, which
/// each test bends in exactly one way.
#[derive(Debug, Clone)]
struct Hs {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Hs {
    /// `GET target HTTP/1.1` with Host, Upgrade, Connection, version 13 and the RFC key.
    fn new(target: &str) -> Self {
        Self {
            method: "GET".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), "localhost".into()),
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
                ("Sec-WebSocket-Key".into(), RFC_KEY.into()),
            ],
        }
    }

    /// A valid upgrade request with auth off, as `user`.
    fn user(user: &str) -> Self {
        Self::new(&format!("/ws?user={user}"))
    }

    fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Replaces every header `name` (case-insensitive) with one `name: value`.
    fn set(self, name: &str, value: &str) -> Self {
        let mut s = self.remove(name);
        s.headers.push((name.into(), value.into()));
        s
    }

    /// Removes every header `name` (case-insensitive).
    fn remove(mut self, name: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    async fn send(&self, gw: &Gateway) -> RawResponse {
        raw_request(gw.http, &self.bytes())
            .await
            .expect("the gateway answered")
    }
}

/// Asserts a preflight rejection: the status, a JSON content type and a body
/// `{"error": code, "message": <non-empty string>}`.
#[track_caller]
fn assert_rejected(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}, got {r:?}");
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?} in {r:?}"
    );
    let body = r.json();
    assert_eq!(body["error"], code, "{r:?}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.trim().is_empty(), "empty message in {r:?}");
    assert!(
        r.header("sec-websocket-accept").is_none(),
        "a rejection must not carry Sec-WebSocket-Accept: {r:?}"
    );
}

/// Asserts a 101 with `Upgrade: websocket` and the accept value of the RFC key.
#[track_caller]
fn assert_upgraded(r: &RawResponse) {
    assert_eq!(r.status, 101, "expected 101, got {r:?}");
    assert!(
        r.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{r:?}"
    );
    assert_eq!(r.header("sec-websocket-accept"), Some(RFC_ACCEPT), "{r:?}");
}

/// `Retry-After` as whole seconds, asserted to be present, an integer and at least 1.
#[track_caller]
fn retry_after(r: &RawResponse) -> u64 {
    let value = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After in {r:?}"));
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not an integer"));
    assert!(secs >= 1, "Retry-After {secs} < 1");
    assert!(secs <= 3600, "Retry-After {secs} is absurd");
    secs
}

/// Asserts the `WWW-Authenticate` challenge of an invalid token.
#[track_caller]
fn assert_invalid_token(r: &RawResponse, token: &str) {
    assert_rejected(r, 401, "invalid_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\""),
        "{r:?}"
    );
    assert!(!r.body.contains(token), "the token leaked: {r:?}");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Base64url without padding (JWT segments).
fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Standard base64 with padding (Sec-WebSocket-Key).
fn b64std(data: &[u8]) -> String {
    let mut s = b64url(data).replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

/// Signs `claims` with HS256 and `secret`.
fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Valid claims for `sub`, expiring in ten minutes.
fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iat": now(), "exp": now() + 600 })
}

/// A request authenticated with `Authorization: Bearer token`.
fn bearer(token: &str) -> Hs {
    Hs::new("/ws").set("Authorization", &format!("Bearer {token}"))
}

/// Settings for an RS256 gateway verifying with [`RSA_PUBLIC`], written to `dir`.
fn rs256_settings(dir: &tempfile::TempDir) -> Settings {
    let path = dir.path().join("jwt-public.pem");
    std::fs::write(&path, RSA_PUBLIC).unwrap();
    let mut s = base_settings();
    s.auth.mode = AuthMode::Jwt;
    s.auth.jwt.public_key_file = Some(path);
    s.auth.jwt.algorithm = Some(JwtAlgorithm::RS256);
    s
}

async fn gateway_with(edit: impl FnOnce(&mut Settings)) -> Gateway {
    let mut s = base_settings();
    edit(&mut s);
    Gateway::start(s).await
}

// ---------------------------------------------------------------------------
// Protocol headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn post_is_405_with_allow_get() {
    let gw = Gateway::start(base_settings()).await;
    for method in ["POST", "PUT", "DELETE"] {
        let r = Hs::user("a")
            .method(method)
            .set("Content-Length", "0")
            .send(&gw)
            .await;
        assert_rejected(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET"), "{r:?}");
    }
}

#[tokio::test]
async fn http_1_0_is_400() {
    let gw = Gateway::start(base_settings()).await;
    let r = Hs::user("a").version("HTTP/1.0").send(&gw).await;
    assert_rejected(&r, 400, "http_version");
}

#[tokio::test]
async fn upgrade_header_missing_or_other_is_rejected() {
    let gw = Gateway::start(base_settings()).await;
    for hs in [
        Hs::user("a").remove("Upgrade"),
        Hs::user("a").set("Upgrade", "h2c"),
        Hs::user("a").set("Upgrade", ""),
    ] {
        let r = hs.send(&gw).await;
        // wsgate answers 400 (docs/protocol.md); 426 with `Upgrade: websocket` is correct too.
        if r.status == 426 {
            assert_eq!(r.header("upgrade"), Some("websocket"), "{r:?}");
            assert_eq!(r.json()["error"], "upgrade_required", "{r:?}");
        } else {
            assert_rejected(&r, 400, "upgrade_required");
        }
    }
}

#[tokio::test]
async fn upgrade_token_is_case_insensitive() {
    let gw = Gateway::start(base_settings()).await;
    for value in ["WebSocket", "WEBSOCKET", "foo, websocket"] {
        let r = Hs::user("a").set("Upgrade", value).send(&gw).await;
        assert_upgraded(&r);
    }
}

#[tokio::test]
async fn connection_header_is_a_token_list() {
    let gw = Gateway::start(base_settings()).await;
    for value in ["keep-alive, Upgrade", "upgrade", "Keep-Alive,UPGRADE"] {
        let r = Hs::user("a").set("Connection", value).send(&gw).await;
        assert_upgraded(&r);
    }
    for hs in [
        Hs::user("a").remove("Connection"),
        Hs::user("a").set("Connection", "keep-alive"),
        // "upgrade" as a substring of another token is not the token.
        Hs::user("a").set("Connection", "keep-alive, upgraded"),
    ] {
        let r = hs.send(&gw).await;
        assert_rejected(&r, 400, "connection_upgrade");
    }
}

#[tokio::test]
async fn websocket_version_missing_is_400_and_other_is_426() {
    let gw = Gateway::start(base_settings()).await;
    let r = Hs::user("a")
        .remove("Sec-WebSocket-Version")
        .send(&gw)
        .await;
    assert_rejected(&r, 400, "missing_version");

    for version in ["8", "12", "14"] {
        let r = Hs::user("a")
            .set("Sec-WebSocket-Version", version)
            .send(&gw)
            .await;
        assert_rejected(&r, 426, "unsupported_version");
        assert_eq!(r.header("sec-websocket-version"), Some("13"), "{r:?}");
    }
}

#[tokio::test]
async fn websocket_key_must_be_base64_of_16_bytes() {
    let gw = Gateway::start(base_settings()).await;
    let key15 = b64std(&[7u8; 15]);
    let key17 = b64std(&[7u8; 17]);
    assert_eq!(key15.len(), 20);
    assert_eq!(
        key17.len(),
        24,
        "same length as a good key: only decoding tells"
    );
    let not_base64 = "!!!!not-base64-at-all!!!";
    assert_eq!(not_base64.len(), 24);

    for key in [key15.as_str(), key17.as_str(), not_base64] {
        let r = Hs::user("a").set("Sec-WebSocket-Key", key).send(&gw).await;
        assert_rejected(&r, 400, "bad_key");
    }
    let r = Hs::user("a").remove("Sec-WebSocket-Key").send(&gw).await;
    assert_rejected(&r, 400, "bad_key");

    // Positive control: a fresh 16-byte key, with its own accept value.
    let key16 = b64std(&[7u8; 16]);
    let r = Hs::user("a")
        .set("Sec-WebSocket-Key", &key16)
        .send(&gw)
        .await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some(
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key16.as_bytes()).as_str()
        )
    );
}

// ---------------------------------------------------------------------------
// A successful upgrade
// ---------------------------------------------------------------------------

#[tokio::test]
async fn successful_upgrade_has_accept_and_negotiates_subprotocol() {
    let gw = Gateway::start(base_settings()).await;

    // The harness's own request: the RFC 6455 example key.
    let r = raw_request(gw.http, &upgrade_request("/ws?user=alice", ""))
        .await
        .unwrap();
    assert_upgraded(&r);
    assert!(
        r.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{r:?}"
    );
    assert!(
        r.header("sec-websocket-protocol").is_none(),
        "no subprotocol offered, none chosen: {r:?}"
    );

    let r = raw_request(
        gw.http,
        &upgrade_request(
            "/ws?user=alice",
            "Sec-WebSocket-Protocol: chat, wsgate.v1\r\n",
        ),
    )
    .await
    .unwrap();
    assert_upgraded(&r);
    assert_eq!(
        r.header("sec-websocket-protocol"),
        Some("wsgate.v1"),
        "{r:?}"
    );

    // Offering only other protocols: none chosen (the server must not invent one).
    let r = raw_request(
        gw.http,
        &upgrade_request("/ws?user=alice", "Sec-WebSocket-Protocol: chat\r\n"),
    )
    .await
    .unwrap();
    assert_upgraded(&r);
    assert!(r.header("sec-websocket-protocol").is_none(), "{r:?}");
}

// ---------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------

#[tokio::test]
async fn host_without_port_matches_any_port() {
    let gw = gateway_with(|s| s.preflight.allowed_hosts = vec!["example.com".into()]).await;
    for host in ["example.com", "example.com:8080", "EXAMPLE.com:443"] {
        let r = Hs::user("a").set("Host", host).send(&gw).await;
        assert_upgraded(&r);
    }
    for host in [
        "evil.com",
        "example.com.evil.com",
        "sub.example.com",
        "localhost",
    ] {
        let r = Hs::user("a").set("Host", host).send(&gw).await;
        assert_rejected(&r, 421, "misdirected_host");
    }
}

#[tokio::test]
async fn host_with_port_matches_only_that_port() {
    let gw = gateway_with(|s| s.preflight.allowed_hosts = vec!["example.com:8080".into()]).await;
    let r = Hs::user("a")
        .set("Host", "example.com:8080")
        .send(&gw)
        .await;
    assert_upgraded(&r);
    for host in ["example.com", "example.com:8081", "example.com:80"] {
        let r = Hs::user("a").set("Host", host).send(&gw).await;
        assert_rejected(&r, 421, "misdirected_host");
    }
}

// ---------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wildcard_origin_matches_subdomains_of_the_same_scheme() {
    let gw =
        gateway_with(|s| s.preflight.allowed_origins = vec!["https://*.example.org".into()]).await;
    let r = Hs::user("a")
        .set("Origin", "https://app.example.org")
        .send(&gw)
        .await;
    assert_upgraded(&r);
    for origin in [
        "https://example.org.evil.com",
        "http://app.example.org",
        "https://evilexample.org",
        "https://app.example.org:8443",
        "null",
    ] {
        let r = Hs::user("a").set("Origin", origin).send(&gw).await;
        assert_rejected(&r, 403, "origin_forbidden");
    }
    // Not required: a client without Origin (not a browser) passes.
    let r = Hs::user("a").send(&gw).await;
    assert_upgraded(&r);
}

#[tokio::test]
async fn exact_origin_entry() {
    let gw = gateway_with(|s| s.preflight.allowed_origins = vec!["https://app.example.com".into()])
        .await;
    for origin in ["https://app.example.com", "https://app.example.com:443"] {
        let r = Hs::user("a").set("Origin", origin).send(&gw).await;
        assert_upgraded(&r);
    }
    for origin in [
        "https://other.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://x.app.example.com",
    ] {
        let r = Hs::user("a").set("Origin", origin).send(&gw).await;
        assert_rejected(&r, 403, "origin_forbidden");
    }
}

#[tokio::test]
async fn star_origin_allows_any() {
    let gw = gateway_with(|s| s.preflight.allowed_origins = vec!["*".into()]).await;
    for origin in [
        "https://anything.test",
        "http://localhost:3000",
        "https://example.org.evil.com",
    ] {
        let r = Hs::user("a").set("Origin", origin).send(&gw).await;
        assert_upgraded(&r);
    }
}

#[tokio::test]
async fn required_origin_missing_is_403() {
    let gw = gateway_with(|s| {
        s.preflight.allowed_origins = vec!["https://app.example.com".into()];
        s.preflight.require_origin = true;
    })
    .await;
    let r = Hs::user("a").send(&gw).await;
    assert_rejected(&r, 403, "origin_required");
    let r = Hs::user("a")
        .set("Origin", "https://app.example.com")
        .send(&gw)
        .await;
    assert_upgraded(&r);
}

#[tokio::test]
async fn missing_origin_allowed_when_not_required() {
    let gw = gateway_with(|s| {
        s.preflight.allowed_origins = vec!["https://app.example.com".into()];
        s.preflight.require_origin = false;
    })
    .await;
    let r = Hs::user("a").send(&gw).await;
    assert_upgraded(&r);
}

// ---------------------------------------------------------------------------
// Rate limit and capacity
// ---------------------------------------------------------------------------

fn rate_limited(s: &mut Settings) {
    s.limits.handshakes_per_ip_per_s = 1;
    s.limits.handshake_burst = 2;
}

#[tokio::test]
async fn third_quick_handshake_is_429_with_retry_after() {
    let gw = gateway_with(rate_limited).await;
    assert_upgraded(&Hs::user("a").send(&gw).await);
    assert_upgraded(&Hs::user("a").send(&gw).await);
    let r = Hs::user("a").send(&gw).await;
    assert_rejected(&r, 429, "rate_limited");
    retry_after(&r);
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_an_untrusted_peer() {
    let gw = gateway_with(rate_limited).await;
    // The peer (127.0.0.1) is not a trusted proxy: every XFF value is its own claim and
    // all three share the peer's bucket.
    for (i, xff) in ["203.0.113.1", "203.0.113.2"].into_iter().enumerate() {
        let r = Hs::user("a").set("X-Forwarded-For", xff).send(&gw).await;
        assert_eq!(r.status, 101, "handshake {i}: {r:?}");
    }
    let r = Hs::user("a")
        .set("X-Forwarded-For", "203.0.113.3")
        .send(&gw)
        .await;
    assert_rejected(&r, 429, "rate_limited");
    retry_after(&r);
}

#[tokio::test]
async fn forwarded_for_is_honoured_from_a_trusted_proxy() {
    let gw = gateway_with(|s| {
        rate_limited(s);
        s.preflight.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let client = |ip: &str| Hs::user("a").set("X-Forwarded-For", ip);
    assert_upgraded(&client("203.0.113.1").send(&gw).await);
    assert_upgraded(&client("203.0.113.1").send(&gw).await);
    let r = client("203.0.113.1").send(&gw).await;
    assert_rejected(&r, 429, "rate_limited");
    retry_after(&r);
    // Other clients behind the same proxy have their own buckets.
    assert_upgraded(&client("203.0.113.2").send(&gw).await);
    assert_upgraded(&client("203.0.113.2").send(&gw).await);
    assert_upgraded(&client("198.51.100.9").send(&gw).await);
    // The proxy's own requests (no XFF) are keyed by the proxy address.
    assert_upgraded(&Hs::user("a").send(&gw).await);
    // Hops left of the first untrusted one were written by the client and are not
    // believed: both requests below come from 203.0.113.7, whatever they claim.
    let spoofing = |claim: &str| client(&format!("{claim}, 203.0.113.7"));
    assert_upgraded(&spoofing("10.9.9.1").send(&gw).await);
    assert_upgraded(&spoofing("10.9.9.2").send(&gw).await);
    let r = spoofing("10.9.9.3").send(&gw).await;
    assert_rejected(&r, 429, "rate_limited");
}

#[tokio::test]
async fn at_max_connections_is_503_with_retry_after() {
    let gw = gateway_with(|s| s.limits.max_connections = 1).await;
    let (ws, _welcome) = gw.connect_user("holder").await;
    let r = Hs::user("other").send(&gw).await;
    assert_rejected(&r, 503, "at_capacity");
    retry_after(&r);

    // Once the holder leaves, the slot is free again.
    drop(ws);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = Hs::user("other").send(&gw).await;
        if r.status == 101 {
            break;
        }
        assert_rejected(&r, 503, "at_capacity");
        assert!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_in_bearer_header_is_accepted() {
    let gw = Gateway::start(jwt_settings()).await;
    let t = token("alice", None);
    assert_upgraded(&bearer(&t).send(&gw).await);
    // The scheme is case-insensitive (RFC 7235).
    let r = Hs::new("/ws")
        .set("Authorization", &format!("bearer {t}"))
        .send(&gw)
        .await;
    assert_upgraded(&r);
}

#[tokio::test]
async fn token_in_access_token_query_is_accepted() {
    let gw = Gateway::start(jwt_settings()).await;
    let t = token("alice", Some(&["chat.*"]));
    let r = Hs::new(&format!("/ws?access_token={t}")).send(&gw).await;
    assert_upgraded(&r);
}

#[tokio::test]
async fn missing_token_is_401_with_bearer_challenge() {
    let gw = Gateway::start(jwt_settings()).await;
    for hs in [
        Hs::new("/ws"),
        // auth is on: ?user= names nobody.
        Hs::new("/ws?user=alice"),
        // Another scheme is not a bearer token.
        Hs::new("/ws").set("Authorization", "Basic YWxpY2U6cHc="),
    ] {
        let r = hs.send(&gw).await;
        assert_rejected(&r, 401, "missing_token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
    }
}

#[tokio::test]
async fn expired_token_is_401_invalid_token() {
    let gw = Gateway::start(jwt_settings()).await;
    let t = sign_hs256(
        SECRET.as_bytes(),
        &json!({ "sub": "alice", "iat": now() - 7200, "exp": now() - 3600 }),
    );
    assert_invalid_token(&bearer(&t).send(&gw).await, &t);
    let r = Hs::new(&format!("/ws?access_token={t}")).send(&gw).await;
    assert_invalid_token(&r, &t);
}

#[tokio::test]
async fn token_signed_with_another_key_is_401_invalid_token() {
    let gw = Gateway::start(jwt_settings()).await;
    let t = sign_hs256(
        b"another-secret-another-secret-0123456789",
        &claims("alice"),
    );
    assert_invalid_token(&bearer(&t).send(&gw).await, &t);
    // A valid token with a tampered payload.
    let good = token("alice", None);
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = b64url(
        json!({ "sub": "admin", "exp": now() + 600 })
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    let t = parts.join(".");
    assert_invalid_token(&bearer(&t).send(&gw).await, &t);
    // Garbage.
    assert_invalid_token(&bearer("not.a.token").send(&gw).await, "not.a.token");
}

#[tokio::test]
async fn alg_none_token_is_401_invalid_token() {
    let gw = Gateway::start(jwt_settings()).await;
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims("alice").to_string().as_bytes());
    for t in [
        format!("{header}.{payload}."),
        // With the HS256 signature of a real token glued on.
        format!(
            "{header}.{payload}.{}",
            token("alice", None).rsplit('.').next().unwrap()
        ),
    ] {
        assert_invalid_token(&bearer(&t).send(&gw).await, &t);
        let r = Hs::new(&format!("/ws?access_token={t}")).send(&gw).await;
        assert_invalid_token(&r, &t);
    }
}

#[tokio::test]
async fn hs256_token_against_rs256_key_is_401_invalid_token() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(rs256_settings(&dir)).await;
    // Positive control: a real RS256 token passes.
    let good = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("alice"),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_upgraded(&bearer(&good).send(&gw).await);
    // Key confusion: HS256 with the public key PEM as the HMAC secret.
    let confused = sign_hs256(RSA_PUBLIC.as_bytes(), &claims("alice"));
    assert_invalid_token(&bearer(&confused).send(&gw).await, &confused);
    let r = Hs::new(&format!("/ws?access_token={confused}"))
        .send(&gw)
        .await;
    assert_invalid_token(&r, &confused);
}

#[tokio::test]
async fn empty_or_missing_sub_is_401_invalid_token() {
    let gw = Gateway::start(jwt_settings()).await;
    for claims in [
        json!({ "sub": "", "exp": now() + 600 }),
        json!({ "exp": now() + 600 }),
        json!({ "sub": "alice" }),
    ] {
        let t = sign_hs256(SECRET.as_bytes(), &claims);
        assert_invalid_token(&bearer(&t).send(&gw).await, &t);
    }
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let mut s = jwt_settings();
    s.auth.jwt.issuer = Some("https://issuer.test".into());
    s.auth.jwt.audience = Some("wsgate".into());
    let gw = Gateway::start(s).await;
    let ok = json!({ "sub": "alice", "exp": now() + 600, "iss": "https://issuer.test", "aud": "wsgate" });
    let t = sign_hs256(SECRET.as_bytes(), &ok);
    assert_upgraded(&bearer(&t).send(&gw).await);

    for (field, value) in [
        ("iss", json!("https://evil.test")),
        ("aud", json!("someone-else")),
        ("iss", serde_json::Value::Null),
        ("aud", serde_json::Value::Null),
    ] {
        let mut c = ok.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        let t = sign_hs256(SECRET.as_bytes(), &c);
        let r = bearer(&t).send(&gw).await;
        assert_invalid_token(&r, &t);
    }
}

// ---------------------------------------------------------------------------
// Order: cheap before expensive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn origin_is_checked_before_the_token() {
    let mut s = jwt_settings();
    s.preflight.allowed_origins = vec!["https://app.example.com".into()];
    let gw = Gateway::start(s).await;
    // No token and a forbidden origin: 403, not 401.
    let r = Hs::new("/ws")
        .set("Origin", "https://evil.example")
        .send(&gw)
        .await;
    assert_rejected(&r, 403, "origin_forbidden");
    // A bad token and a forbidden origin: still 403, and the token is not echoed.
    let bad = sign_hs256(b"another-secret-another-secret-0123456789", &claims("a"));
    let r = Hs::new(&format!("/ws?access_token={bad}"))
        .set("Origin", "https://evil.example")
        .send(&gw)
        .await;
    assert_rejected(&r, 403, "origin_forbidden");
    assert!(!r.body.contains(&bad), "{r:?}");
}

#[tokio::test]
async fn method_is_checked_before_the_key() {
    let gw = Gateway::start(base_settings()).await;
    let r = Hs::user("a")
        .method("POST")
        .set("Content-Length", "0")
        .set("Sec-WebSocket-Key", "short")
        .send(&gw)
        .await;
    assert_rejected(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"), "{r:?}");
}

#[tokio::test]
async fn table_order_for_requests_failing_several_checks() {
    let gw = gateway_with(|s| {
        s.preflight.allowed_hosts = vec!["example.com".into()];
        s.preflight.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    // HTTP/1.0 and no Upgrade: the version answers.
    let r = Hs::user("a")
        .version("HTTP/1.0")
        .remove("Upgrade")
        .send(&gw)
        .await;
    assert_rejected(&r, 400, "http_version");
    // Bad version and bad key: the version answers (426).
    let r = Hs::user("a")
        .set("Sec-WebSocket-Version", "8")
        .set("Sec-WebSocket-Key", "x")
        .send(&gw)
        .await;
    assert_rejected(&r, 426, "unsupported_version");
    // Bad key and bad host: the key answers.
    let r = Hs::user("a")
        .set("Sec-WebSocket-Key", "x")
        .set("Host", "evil.com")
        .send(&gw)
        .await;
    assert_rejected(&r, 400, "bad_key");
    // Bad host and bad origin: the host answers.
    let r = Hs::user("a")
        .set("Host", "evil.com")
        .set("Origin", "https://evil.com")
        .send(&gw)
        .await;
    assert_rejected(&r, 421, "misdirected_host");
}

#[tokio::test]
async fn capacity_is_checked_before_the_token() {
    let mut s = jwt_settings();
    s.limits.max_connections = 1;
    let gw = Gateway::start(s).await;
    let (_ws, _) = gw.connect_token(&token("holder", None)).await;
    let r = Hs::new("/ws").send(&gw).await;
    assert_rejected(&r, 503, "at_capacity");
}

// ---------------------------------------------------------------------------
// Sessions per user
// ---------------------------------------------------------------------------

#[tokio::test]
async fn second_session_over_max_sessions_per_user_is_429() {
    let gw = gateway_with(|s| s.limits.max_sessions_per_user = 1).await;
    let (_ws, welcome) = gw.connect_user("bob").await;
    assert_eq!(welcome["user_id"], "bob");
    let r = Hs::user("bob").send(&gw).await;
    assert_rejected(&r, 429, "too_many_sessions");
    // Another user is not affected.
    assert_upgraded(&Hs::user("carol").send(&gw).await);
}

// ---------------------------------------------------------------------------
// The token never comes back
// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_never_appears_in_a_response() {
    let mut s = jwt_settings();
    s.preflight.allowed_origins = vec!["https://app.example.com".into()];
    s.limits.max_sessions_per_user = 1;
    let gw = Gateway::start(s).await;
    let good = token("dora", None);
    let (_ws, _) = gw.connect_token(&good).await;
    let expired = sign_hs256(
        SECRET.as_bytes(),
        &json!({ "sub": "dora", "exp": now() - 3600 }),
    );
    let requests = [
        // Rejections at different stages, each carrying a token.
        Hs::new(&format!("/ws?access_token={good}")).method("POST"),
        Hs::new(&format!("/ws?access_token={good}")).set("Sec-WebSocket-Key", "bad"),
        Hs::new(&format!("/ws?access_token={good}")).set("Origin", "https://evil.com"),
        Hs::new(&format!("/ws?access_token={expired}")),
        bearer(&expired),
        // Over the session limit with a valid token.
        bearer(&good),
        Hs::new(&format!("/ws?access_token={good}")),
    ];
    for hs in requests {
        let r = hs.send(&gw).await;
        assert!(r.status >= 400, "{r:?}");
        for t in [&good, &expired] {
            assert!(!r.body.contains(t.as_str()), "token in body: {r:?}");
            // Not even the signature or payload segment.
            for segment in t.split('.').skip(1) {
                assert!(!r.body.contains(segment), "token segment in body: {r:?}");
            }
            for (name, value) in &r.headers {
                assert!(!value.contains(t.as_str()), "token in header {name}: {r:?}");
            }
        }
    }
}

/// Sends `request` and reads the response head, keeping the socket open (a 101 stays a
/// live WebSocket until the stream is dropped).
async fn open_raw(gw: &Gateway, request: &[u8]) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("a response head in time")
            .unwrap();
        assert_eq!(n, 1, "closed before a response head");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, stream)
}

/// Reads from a just-upgraded raw socket until the welcome frame's text arrives, or
/// returns what it saw when the server closes instead.
async fn welcomed(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if String::from_utf8_lossy(&seen).contains("\"op\":\"welcome\"") {
            return true;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
}

#[tokio::test]
async fn concurrent_handshakes_respect_max_connections() {
    let gw = gateway_with(|s| s.limits.max_connections = 1).await;
    let req = Hs::user("a").bytes();
    let (a, b, c) = tokio::join!(
        open_raw(&gw, &req),
        open_raw(&gw, &req),
        open_raw(&gw, &req)
    );
    let mut live = 0;
    for (status, mut stream) in [a, b, c] {
        match status {
            101 => {
                assert!(welcomed(&mut stream).await, "a 101 without a session");
                live += 1;
            }
            503 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(live, 1, "max_connections = 1 but {live} sockets are live");
}

/// A client that fires its handshakes in parallel must not get past
/// `limits.max_sessions_per_user`: the preflight counts registered sessions, so the
/// limit needs to hold while earlier handshakes are still between their 101 and their
/// registration.
#[tokio::test]
async fn concurrent_handshakes_respect_max_sessions_per_user() {
    let gw = gateway_with(|s| s.limits.max_sessions_per_user = 1).await;
    let req = Hs::user("bob").bytes();
    let (a, b, c) = tokio::join!(
        open_raw(&gw, &req),
        open_raw(&gw, &req),
        open_raw(&gw, &req)
    );
    let mut live = 0;
    let mut statuses = Vec::new();
    let mut streams = Vec::new();
    for (status, mut stream) in [a, b, c] {
        statuses.push(status);
        match status {
            101 => {
                if welcomed(&mut stream).await {
                    live += 1;
                }
            }
            429 => {}
            other => panic!("unexpected status {other}"),
        }
        streams.push(stream);
    }
    assert_eq!(
        live, 1,
        "max_sessions_per_user = 1 but bob holds {live} live sessions (statuses {statuses:?})"
    );
}
