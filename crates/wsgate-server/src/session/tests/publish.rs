//! The `publish` op on a session: allowed topics reach their subscribers (with an offset
//! on a topic with history), other topics are refused, and the per-session rate holds
//! without ending the session.

use std::time::Duration;

use wsgate_core::stream::{HistoryPolicy, HistoryRules};

use super::*;

/// Subscribes `s` to `topic` and reads the answer.
async fn subscribed(s: &mut Running, topic: &str) -> serde_json::Value {
    s.send_text(&format!(r#"{{"op":"subscribe","topic":"{topic}"}}"#))
        .await;
    let reply = s.recv_json().await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    reply
}

#[tokio::test]
async fn a_publish_reaches_the_topics_subscribers_as_a_push() {
    let node = node().await;
    let mut reader = start(&node, context("bob"), params()).await;
    reader.welcomed().await;
    subscribed(&mut reader, "chat.1").await;
    let mut writer = start(&node, context("alice"), params()).await;
    writer.welcomed().await;

    writer
        .send_text(r#"{"op":"publish","topic":"chat.1","data":{"text":"hi","n":[1,2]},"id":"p1"}"#)
        .await;
    assert_eq!(
        writer.recv_json().await,
        serde_json::json!({"op":"published","topic":"chat.1","id":"p1"})
    );
    assert_eq!(
        reader.recv_json().await,
        serde_json::json!({"op":"message","topic":"chat.1","data":{"text":"hi","n":[1,2]}})
    );
    assert_eq!(
        node.metrics
            .client_publishes
            .with_label_values(&["published"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_publish_to_a_topic_with_history_answers_its_offset() {
    let rules = HistoryRules {
        topics: vec![(
            "chat.*".to_owned(),
            HistoryPolicy {
                size: 10,
                ttl: Duration::from_secs(60),
            },
        )],
        user: None,
        idempotency_window: Duration::from_secs(60),
    };
    let node = node_with(rules).await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    let joined = subscribed(&mut s, "chat.7").await;
    let epoch = joined["epoch"].clone();
    s.send_text(r#"{"op":"publish","topic":"chat.7","data":"one"}"#)
        .await;
    // The publisher is a subscriber too: the push and the answer both come, in either
    // order (the push goes through the fan-out while the answer is written).
    let mut frames = [s.recv_json().await, s.recv_json().await];
    frames.sort_by_key(|f| f["op"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        frames[0],
        serde_json::json!({"op":"message","topic":"chat.7","data":"one","offset":1})
    );
    assert_eq!(
        frames[1],
        serde_json::json!({"op":"published","topic":"chat.7","epoch":epoch,"offset":1})
    );
}

#[tokio::test]
async fn a_topic_outside_the_publish_policy_is_refused() {
    let node = node().await;
    let mut reader = start(&node, context("bob"), params()).await;
    reader.welcomed().await;
    subscribed(&mut reader, "chat.1").await;
    let mut ctx = context("alice");
    ctx.publish = TopicPolicy::Patterns(vec!["chat.2".to_owned()]);
    let mut s = start(&node, ctx, params()).await;
    s.welcomed().await;
    s.send_text(r#"{"op":"publish","topic":"chat.1","data":1,"id":9}"#)
        .await;
    let refusal = s.recv_json().await;
    assert_eq!(refusal["op"], "error");
    assert_eq!(refusal["code"], "forbidden_topic");
    assert_eq!(refusal["id"], 9);
    assert_silent(&mut reader).await;
    assert_eq!(
        node.metrics
            .client_publishes
            .with_label_values(&["forbidden"])
            .get(),
        1
    );
}

// Paused time: the bucket follows tokio's clock, so the burst is judged at one instant
// however slow the machine.
#[tokio::test(start_paused = true)]
async fn over_the_rate_a_publish_is_refused_and_the_session_goes_on() {
    let node = node().await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    // params(): 5 per second, a bucket of 5.
    let mut answers = Vec::new();
    for i in 0..7 {
        s.send_text(&format!(
            r#"{{"op":"publish","topic":"chat.1","data":{i}}}"#
        ))
        .await;
        answers.push(s.recv_json().await);
    }
    let ops: Vec<_> = answers
        .iter()
        .map(|a| a["op"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ops[..5], ["published"; 5]);
    assert_eq!(answers[5]["code"], "rate_limited", "{}", answers[5]);
    assert!(
        answers[5]["message"]
            .as_str()
            .unwrap_or_default()
            .contains('5')
    );
    assert_eq!(answers[6]["code"], "rate_limited");
    s.send_text(r#"{"op":"ping"}"#).await;
    assert_eq!(s.recv_json().await["op"], "pong");
    // One slot back after 1/5 s.
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.send_text(r#"{"op":"publish","topic":"chat.1","data":7}"#)
        .await;
    assert_eq!(s.recv_json().await["op"], "published");
}

/// Nothing arrives on `s` for a little while.
async fn assert_silent(s: &mut Running) {
    let next = tokio::time::timeout(Duration::from_millis(200), s.client.next()).await;
    assert!(next.is_err(), "expected nothing, got {next:?}");
}
