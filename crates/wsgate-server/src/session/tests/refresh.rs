//! The `refresh` op on a session: a good token for the same user moves the 3005 deadline
//! past the first token's `exp` and applies its claims at once (topics it no longer
//! allows are dropped, publishing follows the new `publish` claim); any bad token, or one
//! for another user, answers `invalid_token` and changes nothing.

use std::time::Duration;

use wsgate_core::auth::{Grants, mint_hs256_with};

use super::*;

/// A token for `user` living `ttl`, with these `topics` and `publish` claims.
fn token(user: &str, ttl: Duration, topics: &[&str], publish: &[&str]) -> String {
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let publish: Vec<String> = publish.iter().map(|t| (*t).to_owned()).collect();
    let grants = Grants {
        topics: Some(&topics),
        publish: Some(&publish),
    };
    mint_hs256_with(SECRET, user, ttl, grants, None, None).expect("a token")
}

async fn subscribe(s: &mut Running, topic: &str) {
    s.send_text(&format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#))
        .await;
    assert_eq!(s.recv_json().await["op"], "subscribed");
}

async fn refresh(s: &mut Running, token: &str) -> serde_json::Value {
    s.send_text(&format!(r#"{{"op":"refresh","token":"{token}","id":"r"}}"#))
        .await;
    s.recv_json().await
}

#[tokio::test]
async fn a_refresh_outlives_the_first_token_and_drops_topics_no_longer_allowed() {
    let node = node().await;
    let mut s = start(&node, expiring("alice", 2), params()).await;
    s.welcomed().await;
    subscribe(&mut s, "chat.1").await;
    subscribe(&mut s, "chat.2").await;

    // The new token allows chat.1 only, and publishing to it; it lives an hour.
    let fresh = token("alice", Duration::from_secs(3600), &["chat.1"], &["chat.1"]);
    s.send_text(&format!(r#"{{"op":"refresh","token":"{fresh}","id":"r"}}"#))
        .await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"unsubscribed","topic":"chat.2","reason":"forbidden"})
    );
    let answer = s.recv_json().await;
    assert_eq!(
        (&answer["op"], &answer["id"]),
        (&"refreshed".into(), &"r".into())
    );
    let exp = answer["expires_at"].as_u64().expect("expires_at");
    assert!(exp >= now_s() + 3590, "{answer}");
    assert_eq!(
        node.hub.topics_of(&s.id),
        ["chat.1"],
        "chat.2 left the hub too"
    );
    assert_eq!(
        node.metrics
            .token_refreshes
            .with_label_values(&["refreshed"])
            .get(),
        1
    );

    // chat.2 is refused from now on; publishing follows the new claim.
    s.send_text(r#"{"op":"subscribe","topic":"chat.2"}"#).await;
    assert_eq!(s.recv_json().await["code"], "forbidden_topic");
    s.send_text(r#"{"op":"publish","topic":"chat.1","data":1}"#)
        .await;
    // The answer and its own push, in whichever order the hub and the loop make.
    let mut ops = [s.recv_json().await, s.recv_json().await]
        .map(|f| f["op"].as_str().unwrap_or_default().to_owned());
    ops.sort();
    assert_eq!(ops, ["message", "published"]);
    s.send_text(r#"{"op":"publish","topic":"chat.3","data":1}"#)
        .await;
    assert_eq!(s.recv_json().await["code"], "forbidden_topic");

    // Past the first token's exp (2 s, no leeway), the session is still up.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    s.send_text(r#"{"op":"ping","id":1}"#).await;
    assert_eq!(s.recv_json().await["op"], "pong");
    assert!(!s.task.is_finished());
}

#[tokio::test]
async fn a_refresh_moves_the_deadline_earlier_too() {
    let node = node().await;
    let mut s = start(&node, expiring("alice", 3600), params()).await;
    s.welcomed().await;
    let short = token("alice", Duration::from_secs(1), &["chat.*"], &[]);
    assert_eq!(refresh(&mut s, &short).await["op"], "refreshed");
    s.closed_by_server(3005, "token expired; reconnect with a new token")
        .await;
}

#[tokio::test]
async fn bad_refreshes_answer_invalid_token_and_change_nothing() {
    let node = node().await;
    let mut s = start(&node, expiring("alice", 2), params()).await;
    s.welcomed().await;
    subscribe(&mut s, "chat.1").await;

    let other_user = token("mallory", Duration::from_secs(3600), &["chat.*"], &[]);
    let expired = {
        // Minted an hour ago, expired since: exp in the past.
        let claims = serde_json::json!({"sub": "alice", "exp": now_s() - 60, "topics": ["*"]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let wrong_key = wsgate_core::auth::mint_hs256_with(
        b"another-secret-entirely-0123456789",
        "alice",
        Duration::from_secs(3600),
        Grants::default(),
        None,
        None,
    )
    .unwrap();
    for (bad, says) in [
        (other_user.as_str(), "another user"),
        (expired.as_str(), "invalid"),
        (wrong_key.as_str(), "invalid"),
        ("not.a.token", "invalid"),
    ] {
        let answer = refresh(&mut s, bad).await;
        assert_eq!(
            (&answer["op"], &answer["code"], &answer["id"]),
            (&"error".into(), &"invalid_token".into(), &"r".into()),
            "{answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
    assert_eq!(
        node.metrics
            .token_refreshes
            .with_label_values(&["refused"])
            .get(),
        4
    );
    // Nothing changed: still subscribed, and the first token still ends the session.
    assert_eq!(node.hub.topics_of(&s.id), ["chat.1"]);
    s.closed_by_server(3005, "token expired; reconnect with a new token")
        .await;
}

#[tokio::test]
async fn with_auth_off_there_is_nothing_to_refresh() {
    let node = node().await;
    let p = SessionParams {
        authenticator: Arc::new(wsgate_core::auth::Authenticator::None),
        ..params()
    };
    let mut s = start(&node, context("alice"), p).await;
    s.welcomed().await;
    let answer = refresh(&mut s, "a.b.c").await;
    assert_eq!(answer["code"], "bad_request", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("auth.mode"));
}
