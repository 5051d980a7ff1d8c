//! Streams with history on a session: joins answer with the stream's position, recover
//! what the client missed (in order, once), refuse honestly when they cannot, and a live
//! stream that loses its continuity is reset rather than passed over.

use std::time::Duration;

use wsgate_core::backend::{Channel, StreamPosition};
use wsgate_core::hub::{Outbound, StreamMark};
use wsgate_core::protocol::encode_stream_push;
use wsgate_core::stream::{HistoryPolicy, HistoryRules};

use super::*;

fn rules(topic_size: usize, user_size: usize) -> HistoryRules {
    let policy = |size| HistoryPolicy {
        size,
        ttl: Duration::from_secs(60),
    };
    HistoryRules {
        topics: vec![("chat.*".to_owned(), policy(topic_size))],
        user: (user_size > 0).then(|| policy(user_size)),
        idempotency_window: Duration::from_secs(60),
    }
}

async fn publish(node: &Node, target: Target, text: &str) -> StreamPosition {
    node.send(target, Command::Deliver(Payload::Text(text.into())), None)
        .await
        .expect("send")
        .position
        .expect("a stream with history")
}

async fn position(node: &Node, channel: Channel) -> StreamPosition {
    node.read_stream(&channel, u64::MAX, Some(0))
        .await
        .expect("read")
        .expect("history")
        .position
}

/// The offsets and data of the next `n` text pushes.
async fn pushes(s: &mut Running, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let push = s.recv_json().await;
        assert_eq!(push["op"], "message", "{push}");
        got.push((
            push["offset"].as_u64().expect("an offset"),
            push["data"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    got
}

#[tokio::test]
async fn a_topic_with_history_answers_with_its_position_and_pushes_carry_offsets() {
    let node = node_with(rules(10, 0)).await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.send_text(r#"{"op":"subscribe","topic":"chat.1","id":1}"#)
        .await;
    let joined = s.recv_json().await;
    let epoch = joined["epoch"].as_str().expect("an epoch").to_owned();
    assert_eq!(
        joined,
        serde_json::json!({"op":"subscribed","topic":"chat.1","epoch":epoch,"offset":0,"id":1})
    );
    let sent = publish(&node, Target::Topic("chat.1".into()), "hello").await;
    assert_eq!(
        sent,
        StreamPosition {
            epoch: epoch.clone(),
            offset: 1
        }
    );
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"message","topic":"chat.1","data":"hello","offset":1})
    );
}

#[tokio::test]
async fn a_join_with_since_replays_what_was_missed_then_goes_live() {
    let node = node_with(rules(10, 0)).await;
    let topic = Target::Topic("chat.r".into());
    let first = publish(&node, topic.clone(), "m1").await;
    publish(&node, topic.clone(), "m2").await;
    publish(&node, topic.clone(), "m3").await;

    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.send_text(&format!(
        r#"{{"op":"subscribe","topic":"chat.r","since":{{"epoch":"{}","offset":1}}}}"#,
        first.epoch
    ))
    .await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"subscribed","topic":"chat.r","epoch":first.epoch,"offset":3,"recovered":true})
    );
    assert_eq!(
        pushes(&mut s, 2).await,
        [(2, "m2".to_owned()), (3, "m3".to_owned())]
    );
    publish(&node, topic, "m4").await;
    assert_eq!(pushes(&mut s, 1).await, [(4, "m4".to_owned())]);
    let recovered = node
        .metrics
        .recoveries
        .with_label_values(&["topic", "recovered", "none"])
        .get();
    assert_eq!(recovered, 1);
    assert_eq!(node.metrics.replayed.get(), 2);
}

#[tokio::test]
async fn a_join_that_cannot_recover_says_so_and_replays_nothing() {
    let node = node_with(rules(2, 0)).await;
    let topic = Target::Topic("chat.t".into());
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = publish(&node, topic.clone(), &format!("m{i}")).await.epoch;
    }
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    // Offset 2 was trimmed (only 4 and 5 are kept).
    s.send_text(&format!(
        r#"{{"op":"subscribe","topic":"chat.t","since":{{"epoch":"{epoch}","offset":1}}}}"#
    ))
    .await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"subscribed","topic":"chat.t","epoch":epoch,"offset":5,"recovered":false})
    );
    // Another epoch: nothing can be vouched for either.
    s.send_text(r#"{"op":"subscribe","topic":"chat.t","since":{"epoch":"gone","offset":5}}"#)
        .await;
    let answer = s.recv_json().await;
    assert_eq!(answer["recovered"], false, "{answer}");
    // Nothing was replayed: the next frame is the next live message.
    publish(&node, topic, "m6").await;
    assert_eq!(pushes(&mut s, 1).await, [(6, "m6".to_owned())]);
    for reason in ["trimmed", "epoch"] {
        let n = node
            .metrics
            .recoveries
            .with_label_values(&["topic", "not_recovered", reason])
            .get();
        assert_eq!(n, 1, "{reason}");
    }
}

#[tokio::test]
async fn binary_pushes_are_announced_with_their_offset() {
    let node = node_with(rules(10, 0)).await;
    let topic = Target::Topic("chat.b".into());
    let sent = node
        .send(
            topic,
            Command::Deliver(Payload::Binary(Bytes::from_static(&[0, 255]))),
            None,
        )
        .await
        .expect("send")
        .position
        .expect("history");
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.send_text(&format!(
        r#"{{"op":"subscribe","topic":"chat.b","since":{{"epoch":"{}","offset":0}}}}"#,
        sent.epoch
    ))
    .await;
    assert_eq!(s.recv_json().await["recovered"], true);
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"binary","topic":"chat.b","offset":1})
    );
    assert_eq!(
        s.recv().await,
        Message::binary(Bytes::from_static(&[0, 255]))
    );
}

#[tokio::test]
async fn the_welcome_recovers_the_user_stream_before_live_pushes() {
    let node = node_with(rules(10, 10)).await;
    let user = Target::User("alice".into());
    let base = position(&node, Channel::User("alice".into())).await;
    publish(&node, user.clone(), "u1").await;
    publish(&node, user.clone(), "u2").await;

    let mut ctx = context("alice");
    ctx.user_since = Some(base.clone());
    let reg = registered(&node, &ctx, &params()).await;
    // Published after registration, before the welcome: queued live, and in the
    // history the welcome reads. It must arrive once.
    publish(&node, user.clone(), "u3").await;
    let (server, client) = pipe(64 * 1024, None).await;
    let mut s = spawn(reg, server, client, ctx, params());
    let welcome = s.recv_json().await;
    assert_eq!(
        welcome["user_stream"],
        serde_json::json!({"epoch": base.epoch, "offset": 3})
    );
    assert_eq!(welcome["recovered"], true);
    assert_eq!(
        pushes(&mut s, 3).await,
        [
            (1, "u1".to_owned()),
            (2, "u2".to_owned()),
            (3, "u3".to_owned())
        ]
    );
    publish(&node, user, "u4").await;
    assert_eq!(pushes(&mut s, 1).await, [(4, "u4".to_owned())]);
}

#[tokio::test]
async fn without_user_history_the_welcome_is_unchanged() {
    let node = node_with(rules(10, 0)).await;
    let mut s = start(&node, context("alice"), params()).await;
    let welcome = s.recv_json().await;
    assert!(welcome.get("user_stream").is_none(), "{welcome}");
    assert!(welcome.get("recovered").is_none(), "{welcome}");
}

fn marked(topic: Option<&str>, epoch: &str, offset: u64, text: &str) -> Outbound {
    let push = encode_stream_push(&Payload::Text(text.into()), topic, offset);
    Outbound {
        frame: push.frame,
        mark: Some(Arc::new(StreamMark {
            topic: topic.map(str::to_owned),
            position: StreamPosition {
                epoch: epoch.to_owned(),
                offset,
            },
            id: text.to_owned(),
            announce: push.announce,
        })),
        deflate: None,
    }
}

/// Joins `topic` (plain) and returns its epoch.
async fn joined(s: &mut Running, topic: &str) -> String {
    s.send_text(&format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#))
        .await;
    let joined = s.recv_json().await;
    joined["epoch"].as_str().expect("epoch").to_owned()
}

async fn dropped(s: &mut Running, node: &Node, topic: &str) {
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"unsubscribed","topic":topic,"reason":"insufficient_state"})
    );
    assert!(!node.hub.has_topic(topic), "the session left the topic");
}

#[tokio::test]
async fn a_gap_in_a_live_topic_drops_it() {
    let node = node_with(rules(10, 0)).await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    let epoch = joined(&mut s, "chat.g").await;
    let topic = Some("chat.g");
    s.handle.offer(marked(topic, &epoch, 1, "one"));
    s.handle.offer(marked(topic, &epoch, 2, "two"));
    assert_eq!(
        pushes(&mut s, 2).await,
        [(1, "one".to_owned()), (2, "two".to_owned())]
    );
    // Offset 4 without 3: the session cannot vouch for the stream any more.
    s.handle.offer(marked(topic, &epoch, 4, "four"));
    dropped(&mut s, &node, "chat.g").await;
    assert_eq!(
        node.metrics
            .stream_resets
            .with_label_values(&["topic"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_live_topic_that_steps_back_is_dropped_not_deduplicated() {
    let node = node_with(rules(10, 0)).await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    let epoch = joined(&mut s, "chat.back").await;
    let topic = Some("chat.back");
    s.handle.offer(marked(topic, &epoch, 1, "one"));
    s.handle.offer(marked(topic, &epoch, 2, "two"));
    assert_eq!(pushes(&mut s, 2).await.len(), 2);
    // Long after the join, offset 2 again is not a duplicate of the join's read: the
    // stream lost writes it had acknowledged (a Redis failover, a restart from an older
    // snapshot), and a new message took an offset the client has already seen.
    s.handle.offer(marked(topic, &epoch, 2, "another two"));
    dropped(&mut s, &node, "chat.back").await;
}

#[tokio::test]
async fn another_epoch_on_the_user_stream_closes_with_3010() {
    let node = node_with(rules(10, 10)).await;
    let mut s = start(&node, context("alice"), params()).await;
    let welcome = s.recv_json().await;
    let epoch = welcome["user_stream"]["epoch"]
        .as_str()
        .expect("user stream")
        .to_owned();
    assert_ne!(epoch, "reborn");
    s.handle.offer(marked(None, "reborn", 1, "x"));
    s.closed_by_server(close::INSUFFICIENT_STATE, close::STREAM_RESET.reason)
        .await;
}

#[tokio::test]
async fn after_a_broker_resubscription_a_stream_catches_up_from_history() {
    let node = node_with(rules(10, 0)).await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    joined(&mut s, "chat.c").await;
    publish(&node, Target::Topic("chat.c".into()), "seen").await;
    assert_eq!(pushes(&mut s, 1).await, [(1, "seen".to_owned())]);
    // Lost on the way, as when the broker's connection was down: the hub does not
    // deliver it, but the stream keeps it.
    assert_eq!(node.hub.unsubscribe(&s.id, "chat.c"), Some(true));
    publish(&node, Target::Topic("chat.c".into()), "missed").await;
    node.hub.subscribe(&s.id, "chat.c");
    assert_silent_session(&mut s).await;
    node.resync();
    assert_eq!(pushes(&mut s, 1).await, [(2, "missed".to_owned())]);
    // And live again after it, without a repeat.
    publish(&node, Target::Topic("chat.c".into()), "live").await;
    assert_eq!(pushes(&mut s, 1).await, [(3, "live".to_owned())]);
}

async fn assert_silent_session(s: &mut Running) {
    let next = tokio::time::timeout(Duration::from_millis(200), s.client.next()).await;
    assert!(next.is_err(), "nothing arrives before the resync: {next:?}");
}
