//! Recovery through real sockets: a client that was away longer than a stream keeps its
//! history (more messages than `size`, or longer than `ttl`) is told `recovered: false`
//! and given nothing stale, on a topic and on its user stream; and a Redis restarted
//! empty under live sessions makes every stream start a new epoch, which the sessions
//! report instead of passing over.

use std::time::Duration;

use wsgate_proto::pb;
use wsgate_server::settings::{Settings, TopicHistory, UserHistory};
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

fn with_history(mut s: Settings) -> Settings {
    s.history.topics = vec![
        TopicHistory {
            pattern: "size.*".into(),
            size: 5,
            ttl: Duration::from_secs(600),
        },
        TopicHistory {
            pattern: "ttl.*".into(),
            size: 100,
            ttl: Duration::from_millis(400),
        },
        TopicHistory {
            pattern: "feed".into(),
            size: 100,
            ttl: Duration::from_secs(600),
        },
    ];
    s.history.user = UserHistory {
        size: 5,
        ttl: Duration::from_secs(600),
    };
    s
}

async fn publish(grpc: &mut GrpcClient, topic: &str, body: &str) -> pb::SendResponse {
    grpc.publish(topic, text(body)).await.expect("publish")
}

async fn subscribe(ws: &mut Ws, topic: &str, since: Option<(&str, u64)>) -> serde_json::Value {
    let mut op = serde_json::json!({"op":"subscribe","topic":topic});
    if let Some((epoch, offset)) = since {
        op["since"] = serde_json::json!({"epoch": epoch, "offset": offset});
    }
    send_json(ws, op).await;
    let answer = next_json(ws).await;
    assert_eq!(answer["op"], "subscribed", "{answer}");
    answer
}

#[tokio::test]
async fn a_client_away_longer_than_the_history_is_not_recovered() {
    let gw = Gateway::start(with_history(base_settings())).await;
    let mut grpc = gw.grpc().await;

    // More messages than the topic keeps.
    let (mut ws, _) = gw.connect_user("alice").await;
    let joined = subscribe(&mut ws, "size.a", None).await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    publish(&mut grpc, "size.a", "first").await;
    assert_eq!(next_json(&mut ws).await["offset"], 1);
    drop(ws);
    for i in 0..20 {
        publish(&mut grpc, "size.a", &format!("missed {i}")).await;
    }
    let (mut ws, _) = gw.connect_user("alice").await;
    let answer = subscribe(&mut ws, "size.a", Some((&epoch, 1))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(answer["offset"], 21);
    assert_eq!(answer["epoch"], epoch.as_str());
    publish(&mut grpc, "size.a", "live").await;
    let live = next_json(&mut ws).await;
    assert_eq!(
        (live["offset"].as_u64(), live["data"].as_str()),
        (Some(22), Some("live"))
    );

    // Longer than the topic is kept: a new epoch, nothing replayed.
    let joined = subscribe(&mut ws, "ttl.a", None).await;
    let old_epoch = joined["epoch"].as_str().unwrap().to_owned();
    publish(&mut grpc, "ttl.a", "soon forgotten").await;
    assert_eq!(next_json(&mut ws).await["offset"], 1);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut ws, _) = gw.connect_user("alice").await;
    let answer = subscribe(&mut ws, "ttl.a", Some((&old_epoch, 1))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_ne!(answer["epoch"], old_epoch.as_str());
    assert_eq!(answer["offset"], 0);
    assert_silent(&mut ws, Duration::from_millis(300)).await;

    // The user stream: more messages than it keeps.
    let (_ws, welcome) = gw.connect_user("bob").await;
    let user_epoch = welcome["user_stream"]["epoch"].as_str().unwrap().to_owned();
    for i in 0..8 {
        grpc.send_to_user("bob", text(&format!("u{i}")))
            .await
            .unwrap();
    }
    let url = gw.ws_url(&format!("?user=bob&since={user_epoch}:1"));
    let (mut ws, welcome) = gw.connect_url(&url).await;
    assert_eq!(welcome["recovered"], false, "{welcome}");
    assert_eq!(welcome["user_stream"]["offset"], 8);
    assert_silent(&mut ws, Duration::from_millis(300)).await;

    // And one that was away briefly gets exactly what it missed.
    let url = gw.ws_url(&format!("?user=bob&since={user_epoch}:6"));
    let (mut ws, welcome) = gw.connect_url(&url).await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    for offset in 7..=8u64 {
        let push = next_json(&mut ws).await;
        assert_eq!(push["offset"], offset, "{push}");
        assert_eq!(push["data"], format!("u{}", offset - 1));
    }
    // A malformed since is refused at the handshake.
    let r = raw_request(
        gw.http,
        b"GET /ws?user=bob&since=nonsense HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "bad_since");
}

#[tokio::test]
async fn redis_restarted_empty_makes_every_stream_start_a_new_epoch() {
    let mut redis = RedisServer::start();
    let mut s = with_history(base_settings());
    s.redis.url = Some(redis.url());
    s.registry.pod_ttl = Duration::from_secs(1);
    let gw = Gateway::start(s).await;
    let mut grpc = gw.grpc().await;

    let (mut ws, welcome) = gw.connect_user("carol").await;
    let user_epoch = welcome["user_stream"]["epoch"].as_str().unwrap().to_owned();
    let joined = subscribe(&mut ws, "feed", None).await;
    let topic_epoch = joined["epoch"].as_str().unwrap().to_owned();
    publish(&mut grpc, "feed", "before").await;
    assert_eq!(next_json(&mut ws).await["offset"], 1);
    grpc.send_to_user("carol", text("hi")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["offset"], 1);

    redis.restart_empty();
    // Publishing works again once the gateway is back on Redis.
    let after = loop {
        match grpc.publish("feed", text("after")).await {
            Ok(r) if !r.epoch.is_empty() => break r,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_ne!(
        after.epoch, topic_epoch,
        "a new epoch after the history was lost"
    );
    // The live session does not pass the new epochs over: it drops the topic (an
    // `insufficient_state` unsubscribe) or, as soon as it sees its user stream start
    // over, closes with 3010. Either way no message of a new epoch is delivered as if
    // it followed the old ones.
    let mut ended = false;
    while !ended {
        let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
            .await
            .expect("the session reports the lost history in time");
        match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(
                    v,
                    serde_json::json!({"op":"unsubscribed","topic":"feed","reason":"insufficient_state"})
                );
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 3010);
                ended = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // The next joins are answered honestly: not recovered, new epochs.
    let url = gw.ws_url(&format!("?user=carol&since={user_epoch}:1"));
    let (mut ws, welcome) = gw.connect_url(&url).await;
    assert_eq!(welcome["recovered"], false, "{welcome}");
    assert_ne!(welcome["user_stream"]["epoch"], user_epoch.as_str());
    let answer = subscribe(&mut ws, "feed", Some((&topic_epoch, 1))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(answer["epoch"], after.epoch.as_str());
    publish(&mut grpc, "feed", "live").await;
    let live = next_json(&mut ws).await;
    assert_eq!(live["offset"], after.offset + 1, "{live}");
}
