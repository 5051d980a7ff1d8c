//! The `refresh` op over a real WebSocket on a JWT gateway: a session outlives its first
//! token's `exp` with no reconnect, a narrower `topics` claim takes the subscriptions it
//! no longer allows away (and their pushes with them), and a token for another user is
//! refused with the session left exactly as it was, ending at its first token's `exp`.

use std::time::{Duration, Instant};

use serde_json::json;
use wsgate_core::auth::{Grants, mint_hs256_with};
use wsgate_tests::*;

/// [`jwt_settings`] without leeway: a session ends exactly at its token's `exp`.
fn settings() -> wsgate_server::settings::Settings {
    let mut s = jwt_settings();
    s.auth.jwt.leeway = Duration::ZERO;
    s
}

fn token_for(user: &str, ttl: Duration, topics: &[&str]) -> String {
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let grants = Grants {
        topics: Some(&topics),
        publish: None,
    };
    mint_hs256_with(SECRET.as_bytes(), user, ttl, grants, None, None).unwrap()
}

async fn subscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, json!({"op": "subscribe", "topic": topic})).await;
    assert_eq!(next_json(ws).await["op"], "subscribed");
}

#[tokio::test]
async fn a_refreshed_session_outlives_its_first_token_with_the_new_claims() {
    let gw = Gateway::start(settings()).await;
    let mut grpc = gw.grpc().await;
    let first = token_for("alice", Duration::from_secs(2), &["news", "secret.*"]);
    let connected = Instant::now();
    let (mut ws, welcome) = gw.connect_token(&first).await;
    subscribe(&mut ws, "news").await;
    subscribe(&mut ws, "secret.plans").await;

    let second = token_for("alice", Duration::from_secs(3600), &["news"]);
    send_json(&mut ws, json!({"op": "refresh", "token": second, "id": 2})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "unsubscribed", "topic": "secret.plans", "reason": "forbidden"})
    );
    let refreshed = next_json(&mut ws).await;
    assert_eq!(
        (&refreshed["op"], &refreshed["id"]),
        (&json!("refreshed"), &json!(2))
    );
    assert!(refreshed["expires_at"].as_u64().is_some());

    // Past the first token's exp: the same session still gets news, not secrets.
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(connected.elapsed()) + Duration::from_millis(800),
    )
    .await;
    grpc.publish("secret.plans", text("hidden")).await.unwrap();
    grpc.publish("news", text("still here")).await.unwrap();
    let pushed = next_json(&mut ws).await;
    assert_eq!(
        (&pushed["topic"], &pushed["data"]),
        (&json!("news"), &json!("still here")),
        "{pushed}"
    );
    send_json(&mut ws, json!({"op": "ping", "id": "p"})).await;
    assert_eq!(next_json(&mut ws).await["op"], "pong");
    // Asking for the dropped topic again is refused under the new claim.
    send_json(&mut ws, json!({"op": "subscribe", "topic": "secret.plans"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "forbidden_topic");
    let presence = grpc
        .inner
        .get_presence(grpc.req(wsgate_proto::pb::GetPresenceRequest {
            user_id: "alice".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(presence.sessions.len(), 1, "no second session");
    assert_eq!(
        presence.sessions[0].session_id,
        welcome["session_id"].as_str().unwrap()
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_refresh_with_another_users_token_changes_nothing() {
    let gw = Gateway::start(settings()).await;
    let first = token_for("alice", Duration::from_secs(2), &["news"]);
    let (mut ws, _) = gw.connect_token(&first).await;
    subscribe(&mut ws, "news").await;
    let mallory = token_for("mallory", Duration::from_secs(3600), &["*"]);
    send_json(&mut ws, json!({"op": "refresh", "token": mallory})).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["code"], "invalid_token", "{refused}");
    // Still alice's session with alice's first token: it ends at that token's exp.
    assert_eq!(close_code(&mut ws).await, Some(3005));
    gw.stop().await.unwrap();
}
