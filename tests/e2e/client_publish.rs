//! The `publish` op across a cluster: two real `wsgate serve` pods with JWT on one real
//! `redis-server`. A client on one pod publishes what its token's `publish` claim allows,
//! subscribers on the other pod get it (with its offset on a topic with history), other
//! topics are refused, and over the per-session rate the op is refused while the session
//! goes on.

use std::time::Duration;

use serde_json::json;
use wsgate_tests::pods::Pod;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

/// A token for `user` that may subscribe to `topics` and publish to `publish`.
fn publisher_token(user: &str, topics: &[&str], publish: &[&str]) -> String {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (topics, publish) = (owned(topics), owned(publish));
    let grants = wsgate_core::auth::Grants {
        topics: Some(&topics),
        publish: Some(&publish),
    };
    wsgate_core::auth::mint_hs256_with(
        SECRET.as_bytes(),
        user,
        Duration::from_secs(600),
        grants,
        None,
        None,
    )
    .unwrap()
}

async fn connect(pod: &Pod, token: &str) -> Ws {
    let url = format!("ws://{}/ws?access_token={token}", pod.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect to pod {}: {e}", pod.name));
    assert_eq!(next_json(&mut ws).await["op"], "welcome");
    ws
}

const JWT_ENV: [(&str, &str); 4] = [
    ("WSGATE__AUTH__MODE", "jwt"),
    ("WSGATE__AUTH__JWT__SECRET", SECRET),
    ("WSGATE__HISTORY__TOPICS", "chat.*=100/10m"),
    ("WSGATE__LIMITS__CLIENT_PUBLISH_PER_S", "1"),
];

#[tokio::test]
async fn a_client_publish_reaches_the_other_pod_within_its_claim_and_rate() {
    let redis = RedisServer::start();
    let a = Pod::start("pub-a", &redis.url(), &JWT_ENV).await;
    let b = Pod::start("pub-b", &redis.url(), &JWT_ENV).await;

    let mut reader = connect(&b, &token("bob", Some(&["chat.*", "news"]))).await;
    for topic in ["chat.1", "news"] {
        send_json(&mut reader, json!({"op": "subscribe", "topic": topic})).await;
        assert_eq!(next_json(&mut reader).await["op"], "subscribed");
    }
    let mut writer = connect(&a, &publisher_token("alice", &[], &["chat.*"])).await;

    send_json(
        &mut writer,
        json!({"op": "publish", "topic": "chat.1", "data": {"n": 1}, "id": "p1"}),
    )
    .await;
    let answer = next_json(&mut writer).await;
    assert_eq!(answer["op"], "published", "{answer}");
    assert_eq!(answer["topic"], "chat.1");
    assert_eq!(answer["offset"], 1);
    assert_eq!(answer["id"], "p1");
    let push = next_json(&mut reader).await;
    assert_eq!(
        push,
        json!({"op": "message", "topic": "chat.1", "data": {"n": 1}, "offset": 1})
    );

    // Outside the claim: refused, nothing delivered. Subscribing is not publishing.
    for topic in ["news", "chat"] {
        send_json(
            &mut writer,
            json!({"op": "publish", "topic": topic, "data": "x", "id": topic}),
        )
        .await;
        let refusal = next_json(&mut writer).await;
        assert_eq!(refusal["code"], "forbidden_topic", "{refusal}");
        assert_eq!(refusal["id"], topic);
    }
    assert_silent(&mut reader, Duration::from_millis(300)).await;

    // One per second: the bucket is spent by the first publish of this second.
    send_json(
        &mut writer,
        json!({"op": "publish", "topic": "chat.1", "data": 2}),
    )
    .await;
    let second = next_json(&mut writer).await;
    assert_eq!(second["code"], "rate_limited", "{second}");
    send_json(&mut writer, json!({"op": "ping"})).await;
    assert_eq!(next_json(&mut writer).await["op"], "pong");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send_json(
        &mut writer,
        json!({"op": "publish", "topic": "chat.1", "data": 3}),
    )
    .await;
    assert_eq!(next_json(&mut writer).await["offset"], 2);
    assert_eq!(next_json(&mut reader).await["data"], 3);

    // A token without the claim publishes nothing.
    let mut plain = connect(&a, &token("carol", Some(&["chat.*"]))).await;
    send_json(
        &mut plain,
        json!({"op": "publish", "topic": "chat.1", "data": 4}),
    )
    .await;
    assert_eq!(next_json(&mut plain).await["code"], "forbidden_topic");
    assert_silent(&mut reader, Duration::from_millis(300)).await;
}
