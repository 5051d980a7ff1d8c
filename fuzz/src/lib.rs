//! Shared harness for the wsgate fuzz targets: turning fuzz input into `http::request::Parts`
//! and running every preflight check over them with a few fixed policies.
//!
//! Every check must return `Ok`/`Err` and never panic; on top of that the harness asserts a
//! few cheap invariants (rejections are well-formed and never echo much of the input, a
//! policy built from a value accepts that value, an untrusted peer is never overridden by
//! `X-Forwarded-For`, ...). A failed assertion is a finding just like a panic.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, StatusCode, Uri, Version};
use ipnet::IpNet;
use wsgate_core::admission::ConnectionGauge;
use wsgate_core::auth::{
    Authenticator, JwtAlgorithm, JwtConfig, JwtKey, TopicPolicy, redact_query, valid_user_id,
};
use wsgate_core::preflight::{
    self, HandshakeLimiter, HostPolicy, OriginPolicy, Rejection, client_ip,
};

/// The HS256 secret of the fuzzing authenticator (the seed generator signs with it).
pub const FUZZ_SECRET: &[u8] = b"wsgate-fuzz-secret-that-is-long-enough";

/// Longest message a rejection may carry: [`preflight::ECHO_LIMIT`] quoted bytes, each
/// escaped to at most 10 bytes, plus fixed text.
const MAX_MESSAGE: usize = preflight::ECHO_LIMIT * 10 + 256;

struct Fixture {
    hosts: Vec<HostPolicy>,
    origins: Vec<OriginPolicy>,
    trusted: Vec<Vec<IpNet>>,
    peers: Vec<SocketAddr>,
    none: Authenticator,
    hs256: Authenticator,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        hosts: vec![
            HostPolicy::new(&[]).expect("open host policy"),
            HostPolicy::new(&strings(&[
                "gw.example.com",
                "localhost:8080",
                "[::1]",
                "127.0.0.1:9000",
            ]))
            .expect("host policy"),
        ],
        origins: vec![
            OriginPolicy::new(&[], false).expect("open origin policy"),
            OriginPolicy::new(
                &strings(&[
                    "https://app.example.com",
                    "https://*.example.org",
                    "http://localhost:3000",
                    "null",
                ]),
                false,
            )
            .expect("origin policy"),
            OriginPolicy::new(&strings(&["*"]), true).expect("star origin policy"),
        ],
        trusted: vec![
            vec![],
            vec![
                "10.0.0.0/8".parse().expect("net"),
                "::1/128".parse().expect("net"),
                "fd00::/8".parse().expect("net"),
            ],
        ],
        peers: vec![
            "10.1.1.1:5000".parse().expect("addr"),
            "203.0.113.9:5000".parse().expect("addr"),
            "[::1]:80".parse().expect("addr"),
            "[::ffff:10.1.1.1]:80".parse().expect("addr"),
        ],
        none: Authenticator::None,
        hs256: Authenticator::jwt(JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            key: JwtKey::Secret(FUZZ_SECRET.to_vec()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        })
        .expect("hs256 authenticator"),
    })
}

/// A rejection must be an error status, serialize to JSON, and not quote much input.
fn check_rejection(r: &Rejection) {
    assert!(
        r.status.is_client_error() || r.status.is_server_error(),
        "rejection with status {}",
        r.status
    );
    let body: serde_json::Value =
        serde_json::from_str(&r.json_body()).expect("rejection body is JSON");
    assert_eq!(body["error"], r.code);
    assert!(
        r.message.len() <= MAX_MESSAGE,
        "rejection message of {} bytes: {:?}",
        r.message.len(),
        r.message
    );
    let _ = r.to_string();
}

fn check<T>(result: Result<T, Rejection>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(r) => {
            check_rejection(&r);
            None
        }
    }
}

/// Runs every check of `wsgate_core::preflight` and `Authenticator::authenticate` over
/// `parts`. `knob` varies the cheap numeric inputs (capacity, session counts).
pub fn run_checks(parts: &Parts, knob: u8) {
    let f = fixture();

    check(preflight::check_method(parts));
    check(preflight::check_http_version(parts));
    check(preflight::check_upgrade_header(parts));
    check(preflight::check_connection_header(parts));
    check(preflight::check_ws_version(parts));
    check(preflight::check_ws_key(parts));
    let _ = preflight::is_extended_connect(parts);

    for policy in &f.hosts {
        check(policy.check(parts));
    }
    for policy in &f.origins {
        check(policy.check(parts));
    }
    self_policies(parts);

    for trusted in &f.trusted {
        for peer in &f.peers {
            let ip = client_ip(*peer, &parts.headers, trusted);
            let peer_ip = peer.ip().to_canonical();
            let peer_trusted = trusted.iter().any(|n| n.contains(&peer_ip));
            if !peer_trusted {
                assert_eq!(
                    ip, peer_ip,
                    "an untrusted peer's X-Forwarded-For was believed"
                );
            }
            assert_eq!(ip, ip.to_canonical(), "client_ip returned a mapped address");
        }
    }

    // Rate limit and capacity: fresh state per input so that runs are reproducible.
    let ip = client_ip(f.peers[0], &parts.headers, &f.trusted[1]);
    let limiter = HandshakeLimiter::new(u32::from(knob % 4), u32::from(knob / 64));
    for _ in 0..3 {
        check(limiter.check(ip));
    }
    let gauge = Arc::new(ConnectionGauge::new());
    check(preflight::check_capacity(&gauge, usize::from(knob % 3)));
    check(preflight::check_user_sessions(
        usize::from(knob % 5),
        usize::from(knob / 50),
    ));

    // Authentication.
    let _ = redact_query(&parts.uri);
    for (auth, jwt) in [(&f.none, false), (&f.hs256, true)] {
        // Static keys never wait, so one poll decides; a pending future would be a bug.
        let mut verdict = std::pin::pin!(auth.authenticate(parts));
        let std::task::Poll::Ready(verdict) = verdict
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        else {
            panic!("a static key waited");
        };
        match verdict {
            Ok(id) => {
                assert!(
                    valid_user_id(&id.user_id),
                    "invalid user id {:?}",
                    id.user_id
                );
                assert_eq!(id.expires_at.is_some(), jwt);
                if !jwt {
                    assert_eq!(id.topics, TopicPolicy::Any);
                }
                let _ = id.topics.allows("chat.1");
            }
            Err(r) => {
                check_rejection(&r);
                assert!(
                    matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST),
                    "auth rejection with {}",
                    r.status
                );
            }
        }
    }
}

/// Policies built from the request's own `Host` / `Origin` must accept it: whatever a
/// config may name, a client sending exactly that value is let in.
fn self_policies(parts: &Parts) {
    let hosts: Vec<&HeaderValue> = parts.headers.get_all(http::header::HOST).iter().collect();
    if let [host] = hosts[..] {
        if let Ok(text) = host.to_str() {
            if let Ok(policy) = HostPolicy::new(&[text.to_owned()]) {
                if parts.uri.authority().is_none() {
                    assert!(
                        policy.check(parts).is_ok(),
                        "HostPolicy [{text:?}] refuses Host: {text:?}"
                    );
                }
            }
        }
    }
    let origins: Vec<&HeaderValue> = parts.headers.get_all(http::header::ORIGIN).iter().collect();
    if let [origin] = origins[..] {
        if let Ok(text) = origin.to_str() {
            if let Ok(policy) = OriginPolicy::new(&[text.to_owned()], true) {
                if !text.contains('*') {
                    assert!(
                        policy.check(parts).is_ok(),
                        "OriginPolicy [{text:?}] refuses Origin: {text:?}"
                    );
                }
            }
        }
    }
}

fn version(bytes: &[u8]) -> Version {
    match bytes {
        b"HTTP/0.9" => Version::HTTP_09,
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
        b"HTTP/3" | b"HTTP/3.0" => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

fn build(method: Method, uri: Uri, version: Version, headers: HeaderMap) -> Option<Parts> {
    let (mut parts, ()) = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .ok()?
        .into_parts();
    parts.headers = headers;
    Some(parts)
}

/// Lenient line format used by the `preflight` target: `METHOD TARGET [VERSION]` then
/// `name: value` lines (LF or CRLF; parsing stops at an empty line). Any version other
/// than HTTP/0.9, 1.0, 2 or 3 is HTTP/1.1, so HTTP/2 extended CONNECT is reachable.
/// Header lines that `http` would not accept are skipped; an invalid method or target
/// drops the input.
pub fn parse_lenient(data: &[u8]) -> Option<Parts> {
    let mut lines = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let mut fields = first.splitn(3, |b| *b == b' ');
    let method = Method::from_bytes(fields.next()?).ok()?;
    let uri = Uri::try_from(fields.next()?).ok()?;
    let version = version(fields.next().unwrap_or(b"HTTP/1.1"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = &value[1..];
        let start = value
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(value.len());
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(&value[start..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    build(method, uri, version, headers)
}

/// Strict HTTP/1.x parsing as the server sees it: `httparse` (hyper's parser), then the
/// same conversions into `http` types that hyper makes. `None` for anything incomplete,
/// malformed, or that hyper would refuse.
pub fn parse_httparse(data: &[u8]) -> Option<Parts> {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(data) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri = Uri::try_from(req.path?).ok()?;
    let version = match req.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    build(method, uri, version, headers)
}
