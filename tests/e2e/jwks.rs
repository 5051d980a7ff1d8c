//! Tokens verified with a JWKS (`auth.jwt.jwks_url`) served by a test endpoint: key
//! rotation without a restart, the unknown-`kid` refetch limit under a flood, an endpoint
//! that is down at start, and algorithm confusion.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use wsgate_core::auth::JwtAlgorithm;
use wsgate_server::settings::{AuthMode, Settings};
use wsgate_tests::jwks::{EC, ED25519, JwksServer, RSA1, RSA1_PUB, RSA2, jwk, signed};
use wsgate_tests::*;

const MINUTE: Duration = Duration::from_secs(60);

fn jwks_settings(url: &str) -> Settings {
    let mut s = base_settings();
    s.auth.mode = AuthMode::Jwt;
    s.auth.jwt.jwks_url = Some(url.to_owned());
    s.auth.jwt.leeway = Duration::ZERO;
    // The flood test makes a thousand handshakes from one address.
    s.limits.handshakes_per_ip_per_s = 0;
    s
}

/// The status and error code of a handshake with `token`.
async fn handshake(gw: &Gateway, token: &str) -> (u16, String) {
    let r = raw_request(
        gw.http,
        &upgrade_request(&format!("/ws?access_token={token}"), ""),
    )
    .await
    .unwrap();
    let code = if r.status == 101 {
        String::new()
    } else {
        r.json()["error"].as_str().unwrap_or_default().to_owned()
    };
    (r.status, code)
}

async fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    let r = raw_request(gw.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    r.body
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn ping(ws: &mut Ws) {
    send_json(ws, json!({"op":"ping","id":7})).await;
    assert_eq!(next_json(ws).await["op"], "pong");
}

#[tokio::test]
async fn keys_rotate_without_a_restart() {
    let idp = JwksServer::start(vec![jwk(JwtAlgorithm::RS256, RSA1, "k1")]).await;
    let mut s = jwks_settings(&idp.url());
    s.auth.jwt.jwks_refresh = Duration::from_secs(1);
    let gw = Gateway::start(s).await;

    // A session on key 1 whose token ends in 4 s.
    let old = signed(
        JwtAlgorithm::RS256,
        RSA1,
        Some("k1"),
        "old",
        Duration::from_secs(4),
    );
    let (mut old_ws, _) = gw.connect_token(&old).await;

    // The provider publishes key 2 and signs with it at once: the first handshake with
    // it is let in (an unknown kid refetches), no restart.
    idp.set(vec![
        jwk(JwtAlgorithm::RS256, RSA1, "k1"),
        jwk(JwtAlgorithm::ES256, EC, "k2"),
    ]);
    let new = signed(JwtAlgorithm::ES256, EC, Some("k2"), "new", MINUTE);
    let (mut new_ws, welcome) = gw.connect_token(&new).await;
    assert_eq!(welcome["user_id"], "new");
    let k1 = signed(JwtAlgorithm::RS256, RSA1, Some("k1"), "k1-user", MINUTE);
    assert_eq!(handshake(&gw, &k1).await.0, 101, "key 1 is still published");

    // Key 1 is withdrawn: once the gateway has refreshed, its tokens are refused…
    idp.set(vec![jwk(JwtAlgorithm::ES256, EC, "k2")]);
    let deadline = Instant::now() + WAIT;
    loop {
        match handshake(&gw, &k1).await {
            (401, code) => {
                assert_eq!(code, "invalid_token");
                break;
            }
            (status, _) => assert_eq!(status, 101),
        }
        assert!(Instant::now() < deadline, "key 1 still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …key 2 keeps working, and the session made with key 1 lives on to its `exp`.
    assert_eq!(handshake(&gw, &new).await.0, 101);
    ping(&mut new_ws).await;
    ping(&mut old_ws).await;
    assert_eq!(close_code(&mut old_ws).await, Some(3005));
    ping(&mut new_ws).await;

    assert_eq!(metric(&gw, "wsgate_jwks_keys ").await, Some(1.0));
    assert!(metric(&gw, "wsgate_jwks_fetches_total{outcome=\"ok\"}").await >= Some(3.0));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_unknown_kids_is_not_a_flood_of_fetches() {
    let idp = JwksServer::start(vec![jwk(JwtAlgorithm::RS256, RSA1, "k1")]).await;
    let gw = Gateway::start(jwks_settings(&idp.url())).await;
    let before = idp.fetches();
    assert_eq!(before, 1, "one fetch at start");

    // A real token's payload and signature under made-up headers (signing a thousand
    // RSA tokens would be slow, and the signature is never looked at).
    let real = signed(JwtAlgorithm::RS256, RSA1, Some("k1"), "u", MINUTE);
    let rest = real.split_once('.').unwrap().1.to_owned();
    let started = Instant::now();
    let mut refused = 0;
    for batch in 0..20 {
        let handshakes = (0..50).map(|i| {
            let header = URL_SAFE_NO_PAD.encode(format!(
                r#"{{"alg":"RS256","typ":"JWT","kid":"made-up-{batch}-{i}-{}"}}"#,
                started.elapsed().as_nanos()
            ));
            let token = format!("{header}.{rest}");
            let gw = &gw;
            async move { handshake(gw, &token).await }
        });
        for (status, code) in futures_util::future::join_all(handshakes).await {
            assert_eq!((status, code.as_str()), (401, "invalid_token"));
            refused += 1;
        }
    }
    assert_eq!(refused, 1000);
    let fetched = idp.fetches() - before;
    assert!(fetched <= 2, "{fetched} fetches for 1000 unknown kids");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The real key still works.
    assert_eq!(handshake(&gw, &real).await.0, 101);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_down_at_start_is_503_until_it_answers() {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start_unready(jwks_settings(&format!("http://{addr}/jwks.json"))).await;
    let token = signed(JwtAlgorithm::EdDSA, ED25519, Some("ed"), "early", MINUTE);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = raw_request(gw.http, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "not ready without keys");
    let r = raw_request(
        gw.http,
        &upgrade_request(&format!("/ws?access_token={token}"), ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert!(r.header("retry-after").is_some());
    assert!(metric(&gw, "wsgate_jwks_fetches_total{outcome=\"unreachable\"}").await >= Some(1.0));

    // The endpoint comes up: the gateway fetches on its own and lets the client in.
    let _idp = JwksServer::start_on(addr, vec![jwk(JwtAlgorithm::EdDSA, ED25519, "ed")]).await;
    gw.wait_ready().await;
    let (_ws, welcome) = gw.connect_token(&token).await;
    assert_eq!(welcome["user_id"], "early");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_endpoint_keeps_the_last_good_key_set() {
    let idp = JwksServer::start(vec![jwk(JwtAlgorithm::RS256, RSA2, "k2")]).await;
    let mut s = jwks_settings(&idp.url());
    s.auth.jwt.jwks_refresh = Duration::from_secs(1);
    let gw = Gateway::start(s).await;
    idp.set_up(false);
    let before = idp.fetches();
    let deadline = Instant::now() + WAIT;
    while idp.fetches() < before + 2 {
        assert!(Instant::now() < deadline, "no refetch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = signed(JwtAlgorithm::RS256, RSA2, Some("k2"), "u", MINUTE);
    assert_eq!(handshake(&gw, &token).await.0, 101);
    let r = raw_request(gw.http, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "still ready with the last good set");
    assert!(metric(&gw, "wsgate_jwks_fetches_total{outcome=\"http_status\"}").await >= Some(1.0));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn forged_algorithms_are_refused() {
    let idp = JwksServer::start(vec![
        jwk(JwtAlgorithm::RS256, RSA1, "rsa"),
        jwk(JwtAlgorithm::ES256, EC, "ec"),
    ])
    .await;
    let gw = Gateway::start(jwks_settings(&idp.url())).await;
    let claims = json!({ "sub": "mallory", "exp": 4_000_000_000u64 });

    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa".to_owned());
    let hs_with_public_key = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &EncodingKey::from_secret(RSA1_PUB.as_bytes()),
    )
    .unwrap();
    let forged = [
        format!("{none_header}.{payload}."),
        hs_with_public_key,
        // An alg that does not match the named key's type, both ways round.
        signed(JwtAlgorithm::ES256, EC, Some("rsa"), "mallory", MINUTE),
        signed(JwtAlgorithm::RS256, RSA1, Some("ec"), "mallory", MINUTE),
        // Several keys and no kid: not guessed.
        signed(JwtAlgorithm::RS256, RSA1, None, "mallory", MINUTE),
    ];
    let before = idp.fetches();
    for token in &forged {
        assert_eq!(
            handshake(&gw, token).await,
            (401, "invalid_token".to_owned()),
            "{token}"
        );
    }
    assert_eq!(idp.fetches(), before, "no forged token caused a fetch");
    // The genuine ones pass.
    for token in [
        signed(JwtAlgorithm::RS256, RSA1, Some("rsa"), "alice", MINUTE),
        signed(JwtAlgorithm::ES256, EC, Some("ec"), "bob", MINUTE),
    ] {
        assert_eq!(handshake(&gw, &token).await.0, 101);
    }
    gw.stop().await.unwrap();
}

/// `wsgate jwks` publishes a key and `wsgate token --key-file --kid` signs with it: what
/// a developer runs against a gateway with `auth.jwt.jwks_url`.
#[tokio::test]
async fn the_cli_mints_tokens_for_a_key_it_publishes() {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwks/ec.key.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(wsgate_binary())
            .args(args)
            .env_remove("WSGATE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let set: serde_json::Value = serde_json::from_str(&run(&[
        "jwks",
        "--key-file",
        key,
        "--algorithm",
        "ES256",
        "--kid",
        "dev",
    ]))
    .unwrap();
    let keys = set["keys"].as_array().unwrap().clone();
    assert_eq!(keys[0]["kid"], "dev");
    let idp = JwksServer::start(keys).await;
    let gw = Gateway::start(jwks_settings(&idp.url())).await;
    let token = run(&[
        "token",
        "--user",
        "dev-user",
        "--key-file",
        key,
        "--algorithm",
        "es256",
        "--kid",
        "dev",
    ]);
    let (_ws, welcome) = gw.connect_token(&token).await;
    assert_eq!(welcome["user_id"], "dev-user");
    gw.stop().await.unwrap();
}
