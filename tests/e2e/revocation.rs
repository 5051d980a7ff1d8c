//! Revocation across a cluster: two (then three) real gateways sharing one real
//! `redis-server`, revoking through gRPC or the HTTP API on one pod. A revoked user's or
//! token's live sessions close with 3006 on the other pod within a second, its handshakes
//! are refused with 401 `revoked_token` on every pod (one started afterwards too) until
//! `until_ms`, and then accepted again; what the revocation does not name is left alone.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tonic::Code;
use wsgate_core::auth::{Grants, mint_hs256_with};
use wsgate_proto::pb;
use wsgate_proto::pb::revoke_request::Target;
use wsgate_tests::api::Api;
use wsgate_tests::hostile::{eventually, scrape};
use wsgate_tests::recorder::session_id;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

/// The most a revocation may take to close a session on another pod.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// A JWT gateway on `redis`, as pod `pod`.
async fn pod(redis: &RedisServer, pod: &str) -> Gateway {
    let mut s = jwt_settings();
    s.redis.url = Some(redis.url());
    s.server.pod_id = pod.into();
    Gateway::start(s).await
}

fn now_ms() -> u64 {
    wsgate_core::clock::now_ms()
}

/// A token for `user` (every minted token has its own random `jti`).
fn token_for(user: &str) -> String {
    let topics = vec!["*".to_owned()];
    let grants = Grants {
        topics: Some(&topics),
        publish: None,
    };
    mint_hs256_with(
        SECRET.as_bytes(),
        user,
        Duration::from_secs(3600),
        grants,
        None,
        None,
    )
    .unwrap()
}

/// The `jti` claim of a token, read from its payload.
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: Value = serde_json::from_slice(&bytes).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

async fn revoke(
    grpc: &mut GrpcClient,
    target: Target,
    until_ms: u64,
) -> Result<pb::RevokeResponse, tonic::Status> {
    let req = grpc.req(pb::RevokeRequest {
        target: Some(target),
        until_ms,
    });
    grpc.inner.revoke(req).await.map(|r| r.into_inner())
}

/// The status and `error` code of a handshake that must be refused.
async fn refused(gw: &Gateway, token: &str) -> (u16, String) {
    let url = gw.ws_url(&format!("?access_token={token}"));
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (
                response.status().as_u16(),
                body["error"].as_str().unwrap_or("").to_owned(),
            )
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected the handshake to be refused, it was accepted"),
    }
}

/// Waits for the close frame; returns its code and how long it took. Then reads on, as a
/// real client does: tungstenite answers the close on the next read, and the server then
/// ends the session.
async fn closed(ws: &mut Ws) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let code = close_code(ws).await;
    let took = started.elapsed();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    (code, took)
}

async fn assert_alive(ws: &mut Ws, who: &str) {
    send_json(ws, json!({"op": "ping", "id": who})).await;
    let pong = next_json(ws).await;
    assert_eq!(
        (&pong["op"], &pong["id"]),
        (&json!("pong"), &json!(who)),
        "{who}"
    );
}

#[tokio::test]
async fn a_user_revoked_on_one_pod_is_closed_on_the_other_and_refused_everywhere_until_its_time() {
    let redis = RedisServer::start();
    let (a, b) = (pod(&redis, "pod-a").await, pod(&redis, "pod-b").await);
    let alice = token_for("alice");
    let (mut alice_on_a, _) = a.connect_token(&alice).await;
    let (mut bob_on_a, _) = a.connect_token(&token_for("bob")).await;

    let until = now_ms() + 3_000;
    let answer = revoke(&mut b.grpc().await, Target::UserId("alice".into()), until)
        .await
        .unwrap();
    assert_eq!(answer.until_ms, until);

    let (code, took) = closed(&mut alice_on_a).await;
    assert_eq!(code, Some(3006));
    assert!(took < CLOSE_WITHIN, "closed after {took:?}");
    assert_alive(&mut bob_on_a, "bob").await;
    // The broker's disconnect closed the session at once; pod A's copy of the set follows
    // at its next read of the registry (every 250 ms). Counted once, whichever path
    // closed it.
    eventually("pod A reads the revocation", CLOSE_WITHIN, async || {
        let metrics = scrape(a.http).await;
        let seen = (
            metrics.get("wsgate_revocations{}"),
            metrics.get("wsgate_sessions_revoked_total{}"),
        );
        (seen == (1.0, 1.0))
            .then_some(())
            .ok_or(format!("{seen:?}"))
    })
    .await;
    // Refused on both pods, with a fresh token too: the user is revoked, not the token.
    for gw in [&a, &b] {
        assert_eq!(refused(gw, &alice).await, (401, "revoked_token".into()));
        assert_eq!(
            refused(gw, &token_for("alice")).await,
            (401, "revoked_token".into())
        );
    }

    // Past until_ms, accepted again on both pods.
    tokio::time::sleep(Duration::from_millis(until.saturating_sub(now_ms()) + 100)).await;
    for gw in [&a, &b] {
        let (mut ws, _) = gw.connect_token(&alice).await;
        assert_alive(&mut ws, "alice again").await;
    }
}

#[tokio::test]
async fn a_revoked_token_closes_only_its_sessions_and_a_pod_started_later_refuses_it() {
    let redis = RedisServer::start();
    let (a, b) = (pod(&redis, "pod-a").await, pod(&redis, "pod-b").await);
    let (stolen, kept) = (token_for("carol"), token_for("carol"));
    let (mut stolen_on_a, _) = a.connect_token(&stolen).await;
    let (mut kept_on_a, _) = a.connect_token(&kept).await;
    let (mut kept_on_b, _) = b.connect_token(&kept).await;

    // Through the HTTP API this time. Sessions are not addressed by token: pod A finds
    // its own at its next read of the registry's set.
    let api = Api::plain(b.grpc, Some(API_KEY.into()));
    let until = now_ms() + 60_000;
    let answer = api
        .call(
            "revoke",
            &json!({"token_id": jti_of(&stolen), "until_ms": until.to_string()}),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json["until_ms"], until.to_string());

    let (code, took) = closed(&mut stolen_on_a).await;
    assert_eq!(code, Some(3006));
    assert!(took < CLOSE_WITHIN, "closed after {took:?}");
    assert_alive(&mut kept_on_a, "kept on a").await;
    assert_alive(&mut kept_on_b, "kept on b").await;

    // A live session cannot refresh to the revoked token, and stays as it was.
    send_json(
        &mut kept_on_b,
        json!({"op": "refresh", "token": stolen, "id": 7}),
    )
    .await;
    let answer = next_json(&mut kept_on_b).await;
    assert_eq!(
        (&answer["op"], &answer["code"], &answer["id"]),
        (&json!("error"), &json!("revoked_token"), &json!(7)),
        "{answer}"
    );
    assert_alive(&mut kept_on_b, "kept on b after the refused refresh").await;

    // A pod that did not exist at the revocation refuses the token from its first
    // handshake; the user's other token still works there.
    let c = pod(&redis, "pod-c").await;
    for gw in [&a, &b, &c] {
        assert_eq!(refused(gw, &stolen).await, (401, "revoked_token".into()));
    }
    let (mut kept_on_c, _) = c.connect_token(&kept).await;
    assert_alive(&mut kept_on_c, "kept on c").await;
}

#[tokio::test]
async fn a_revoked_session_closes_alone_and_a_longer_revocation_wins() {
    let gw = Gateway::start(jwt_settings()).await;
    let mut grpc = gw.grpc().await;
    let dave = token_for("dave");
    let (mut first, welcome) = gw.connect_token(&dave).await;
    let (mut second, _) = gw.connect_token(&dave).await;

    let later = now_ms() + 120_000;
    let session = session_id(&welcome);
    revoke(&mut grpc, Target::SessionId(session.clone()), later)
        .await
        .unwrap();
    assert_eq!(closed(&mut first).await.0, Some(3006));
    assert_alive(&mut second, "the user's other session").await;

    // Revoking again for less keeps the later time.
    let answer = revoke(&mut grpc, Target::SessionId(session), now_ms() + 5_000)
        .await
        .unwrap();
    assert_eq!(answer.until_ms, later);
}

#[tokio::test]
async fn revoke_refuses_bad_arguments_and_changes_nothing() {
    let gw = Gateway::start(jwt_settings()).await;
    let mut grpc = gw.grpc().await;
    let now = now_ms();
    let day = 24 * 3600 * 1000;
    let cases: Vec<(Option<Target>, u64, &str)> = vec![
        (None, now + 1_000, "no target"),
        (
            Some(Target::UserId("eve".into())),
            now - 1_000,
            "until in the past",
        ),
        (Some(Target::UserId("eve".into())), 0, "until missing"),
        (
            Some(Target::UserId("eve".into())),
            now + 91 * day,
            "until past 90 days",
        ),
        (
            Some(Target::UserId(String::new())),
            now + 1_000,
            "empty user",
        ),
        (
            Some(Target::TokenId("x".repeat(300))),
            now + 1_000,
            "token id too long",
        ),
        (
            Some(Target::SessionId("bad\nid".into())),
            now + 1_000,
            "session id with a control character",
        ),
    ];
    for (target, until_ms, case) in cases {
        let req = grpc.req(pb::RevokeRequest { target, until_ms });
        let status = grpc.inner.revoke(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(!status.message().is_empty(), "{case}");
    }
    // Nothing was revoked: eve connects.
    let (mut ws, _) = gw.connect_token(&token_for("eve")).await;
    assert_alive(&mut ws, "eve").await;
    assert_eq!(scrape(gw.http).await.get("wsgate_revocations{}"), 0.0);
}
