//! The control plane's side of streams with history, on the embedded gateway: positions
//! in `SendResponse`, idempotency keys on `Publish` and `SendToUser`, and `History`.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use tonic::Code;
use wsgate_proto::pb;
use wsgate_server::settings::{Settings, TopicHistory};
use wsgate_tests::*;

use pb::history_request::Stream;

/// `chat.*` keeps its newest `size` messages; other topics keep none.
fn history_settings(size: usize) -> Settings {
    let mut s = base_settings();
    s.history.topics = vec![TopicHistory {
        pattern: "chat.*".into(),
        size,
        ttl: Duration::from_secs(300),
    }];
    s
}

fn body(body: pb::payload::Body) -> Option<pb::Payload> {
    Some(pb::Payload { body: Some(body) })
}

async fn publish_keyed(
    grpc: &mut GrpcClient,
    topic: &str,
    payload: pb::payload::Body,
    key: &str,
) -> Result<pb::SendResponse, tonic::Status> {
    let req = grpc.req(pb::PublishRequest {
        topic: topic.into(),
        payload: body(payload),
        idempotency_key: key.into(),
    });
    grpc.inner.publish(req).await.map(|r| r.into_inner())
}

async fn send_keyed(
    grpc: &mut GrpcClient,
    user: &str,
    payload: pb::payload::Body,
    key: &str,
) -> Result<pb::SendResponse, tonic::Status> {
    let req = grpc.req(pb::SendToUserRequest {
        user_id: user.into(),
        payload: body(payload),
        idempotency_key: key.into(),
    });
    grpc.inner.send_to_user(req).await.map(|r| r.into_inner())
}

async fn history(
    grpc: &mut GrpcClient,
    stream: Option<Stream>,
    since_offset: u64,
    limit: u32,
) -> Result<pb::HistoryResponse, tonic::Status> {
    let req = grpc.req(pb::HistoryRequest {
        stream,
        since_offset,
        limit,
    });
    grpc.inner.history(req).await.map(|r| r.into_inner())
}

fn topic(t: &str) -> Option<Stream> {
    Some(Stream::Topic(t.into()))
}

/// Subscribes and returns the `subscribed` answer.
async fn subscribe(ws: &mut Ws, topic: &str) -> serde_json::Value {
    send_json(ws, serde_json::json!({"op":"subscribe","topic":topic})).await;
    let reply = next_json(ws).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    reply
}

fn offsets(r: &pb::HistoryResponse) -> Vec<u64> {
    r.messages.iter().map(|m| m.offset).collect()
}

#[tokio::test]
async fn a_repeated_idempotency_key_publishes_once_and_answers_the_first_position() {
    let gw = Gateway::start(history_settings(10)).await;
    let mut grpc = gw.grpc().await;
    let (mut ws, _) = gw.connect_user("alice").await;
    let joined = subscribe(&mut ws, "chat.1").await;

    let first = publish_keyed(&mut grpc, "chat.1", text("once"), "order-17")
        .await
        .unwrap();
    let again = publish_keyed(&mut grpc, "chat.1", text("once"), "order-17")
        .await
        .unwrap();
    assert_eq!(first.offset, 1);
    assert_eq!(first.epoch, joined["epoch"].as_str().unwrap());
    assert_eq!((again.offset, &again.epoch), (first.offset, &first.epoch));
    let push = next_json(&mut ws).await;
    assert_eq!(
        (push["data"].as_str(), push["offset"].as_u64()),
        (Some("once"), Some(1))
    );

    // A new key publishes: the next frame is offset 2, so the repeat sent nothing.
    let next = publish_keyed(&mut grpc, "chat.1", text("twice"), "order-18")
        .await
        .unwrap();
    assert_eq!((next.offset, &next.epoch), (2, &first.epoch));
    let push = next_json(&mut ws).await;
    assert_eq!(
        (push["data"].as_str(), push["offset"].as_u64()),
        (Some("twice"), Some(2))
    );
    assert_silent(&mut ws, Duration::from_millis(200)).await;

    // Keys are per stream: the same key on another topic publishes there.
    let other = publish_keyed(&mut grpc, "chat.2", text("elsewhere"), "order-17")
        .await
        .unwrap();
    assert_eq!(other.offset, 1);
    assert_ne!(other.epoch, first.epoch);
}

#[tokio::test]
async fn a_repeated_idempotency_key_to_a_user_stream_with_history_sends_once() {
    let mut settings = base_settings();
    settings.history.user.size = 5;
    let gw = Gateway::start(settings).await;
    let mut grpc = gw.grpc().await;
    let (mut ws, welcome) = gw.connect_user("bob").await;
    let epoch = welcome["user_stream"]["epoch"].as_str().unwrap().to_owned();

    let first = send_keyed(&mut grpc, "bob", text("hi"), "k-1")
        .await
        .unwrap();
    let again = send_keyed(&mut grpc, "bob", text("hi"), "k-1")
        .await
        .unwrap();
    assert_eq!((first.offset, &first.epoch), (1, &epoch));
    assert_eq!((again.offset, &again.epoch), (1, &epoch));
    assert_eq!(first.targets, 1);
    let push = next_json(&mut ws).await;
    assert_eq!(
        (push["data"].as_str(), push["offset"].as_u64()),
        (Some("hi"), Some(1))
    );

    let next = send_keyed(&mut grpc, "bob", text("again"), "k-2")
        .await
        .unwrap();
    assert_eq!((next.offset, &next.epoch), (2, &epoch));
    let push = next_json(&mut ws).await;
    assert_eq!(
        (push["data"].as_str(), push["offset"].as_u64()),
        (Some("again"), Some(2))
    );
    assert_silent(&mut ws, Duration::from_millis(200)).await;

    // The user stream's history: both messages, once each.
    let kept = history(&mut grpc, Some(Stream::UserId("bob".into())), 0, 0)
        .await
        .unwrap();
    assert_eq!((kept.epoch.as_str(), kept.offset), (epoch.as_str(), 2));
    assert_eq!(offsets(&kept), [1, 2]);
}

#[tokio::test]
async fn send_responses_carry_a_position_only_for_streams_with_history() {
    let gw = Gateway::start(history_settings(10)).await;
    let mut grpc = gw.grpc().await;
    let (mut ws, welcome) = gw.connect_user("carol").await;
    assert!(welcome.get("user_stream").is_none(), "{welcome}");
    subscribe(&mut ws, "news").await;

    let kept = grpc.publish("chat.9", text("kept")).await.unwrap();
    assert_eq!(kept.offset, 1);
    assert!(!kept.epoch.is_empty());

    let plain = grpc.publish("news", text("plain")).await.unwrap();
    assert_eq!((plain.offset, plain.epoch.as_str()), (0, ""));
    assert_eq!(plain.targets, 1);
    assert!(!plain.message_id.is_empty());
    let user = grpc.send_to_user("carol", text("to carol")).await.unwrap();
    assert_eq!((user.offset, user.epoch.as_str()), (0, ""));
    let req = grpc.req(pb::BroadcastRequest {
        payload: body(text("all")),
    });
    let all = grpc.inner.broadcast(req).await.unwrap().into_inner();
    assert_eq!((all.offset, all.epoch.as_str()), (0, ""));
    let session = welcome["session_id"].as_str().unwrap();
    let req = grpc.req(pb::SendToSessionRequest {
        session_id: session.into(),
        payload: body(text("one")),
    });
    let one = grpc.inner.send_to_session(req).await.unwrap().into_inner();
    assert_eq!((one.targets, one.offset, one.epoch.as_str()), (1, 0, ""));
    for want in ["plain", "to carol", "all", "one"] {
        assert_eq!(next_json(&mut ws).await["data"], want);
    }

    // A topic without history ignores the key: both publishes arrive.
    for _ in 0..2 {
        let r = publish_keyed(&mut grpc, "news", text("again"), "same-key")
            .await
            .unwrap();
        assert_eq!((r.offset, r.epoch.as_str()), (0, ""));
    }
    for _ in 0..2 {
        let push = next_json(&mut ws).await;
        assert_eq!(
            (push["topic"].as_str(), push["data"].as_str()),
            (Some("news"), Some("again"))
        );
    }
}

#[tokio::test]
async fn history_answers_the_newest_kept_messages_byte_exact() {
    let gw = Gateway::start(history_settings(3)).await;
    let mut grpc = gw.grpc().await;
    let (mut ws, _) = gw.connect_user("dave").await;
    let joined = subscribe(&mut ws, "chat.h").await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    assert_eq!(joined["offset"], 0);

    // Before any publish: the epoch the subscribe named, offset 0, nothing kept.
    let empty = history(&mut grpc, topic("chat.h"), 0, 0).await.unwrap();
    assert_eq!((empty.epoch.as_str(), empty.offset), (epoch.as_str(), 0));
    assert!(empty.messages.is_empty());

    let started = wsgate_server::node::now_ms();
    let json = r#"{"n": 4, "list": [1, 2.5, "x"]}"#;
    let bytes: Vec<u8> = vec![0, 255, 1, 128, 0, 10, 13];
    let payloads = [
        text("one"),
        text("two"),
        text("three\nwith ünïcode"),
        pb::payload::Body::Json(json.into()),
        pb::payload::Body::Binary(bytes.clone().into()),
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let r = grpc.publish("chat.h", payload.clone()).await.unwrap();
        assert_eq!(r.offset, i as u64 + 1);
    }
    // The subscriber got all five live (the binary one as announce + frame).
    for _ in 0..4 {
        next_json(&mut ws).await;
    }
    assert_eq!(next_json(&mut ws).await["op"], "binary");
    assert_eq!(next_data(&mut ws).await, Message::binary(bytes.clone()));
    let finished = wsgate_server::node::now_ms();

    let all = history(&mut grpc, topic("chat.h"), 0, 0).await.unwrap();
    assert_eq!((all.epoch.as_str(), all.offset), (epoch.as_str(), 5));
    assert_eq!(offsets(&all), [3, 4, 5]);
    let got: Vec<_> = all
        .messages
        .iter()
        .map(|m| m.payload.clone().unwrap().body.unwrap())
        .collect();
    assert_eq!(got, payloads[2..]);
    for m in &all.messages {
        assert!(
            (started..=finished).contains(&m.published_at_ms),
            "published_at_ms {} outside {started}..={finished}",
            m.published_at_ms
        );
    }

    for (since, limit, want) in [
        (3, 0, vec![4, 5]),
        (0, 1, vec![3]),
        (3, 1, vec![4]),
        (1, 2, vec![3, 4]),
        (5, 0, vec![]),
        (9, 0, vec![]),
        (0, 1000, vec![3, 4, 5]),
        (0, u32::MAX, vec![3, 4, 5]),
    ] {
        let r = history(&mut grpc, topic("chat.h"), since, limit)
            .await
            .unwrap();
        assert_eq!(offsets(&r), want, "since {since} limit {limit}");
        assert_eq!((r.epoch.as_str(), r.offset), (epoch.as_str(), 5));
    }
}

#[tokio::test]
async fn history_refuses_streams_without_history_and_bad_arguments() {
    let gw = Gateway::start(history_settings(3)).await;
    let mut grpc = gw.grpc().await;

    let e = history(&mut grpc, topic("news"), 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("history.topics"), "{}", e.message());
    let e = history(&mut grpc, Some(Stream::UserId("erin".into())), 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("history.user.size"), "{}", e.message());

    let bad_streams = [
        None,
        topic(""),
        topic("has space"),
        topic(&"t".repeat(201)),
        Some(Stream::UserId(String::new())),
        Some(Stream::UserId("bad\u{1}user".into())),
    ];
    for stream in bad_streams {
        let e = history(&mut grpc, stream.clone(), 0, 0).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{stream:?}: {e:?}");
        assert!(!e.message().is_empty());
    }

    // Idempotency keys: at most 128 bytes, no control characters.
    let long = "k".repeat(129);
    for key in [long.as_str(), "tab\there", "nul\0"] {
        let e = publish_keyed(&mut grpc, "chat.1", text("x"), key)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{key:?}: {e:?}");
        assert!(e.message().contains("idempotency_key"), "{}", e.message());
        let e = send_keyed(&mut grpc, "erin", text("x"), key)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{key:?}: {e:?}");
    }
    let longest = "é".repeat(64);
    let r = publish_keyed(&mut grpc, "chat.1", text("x"), &longest)
        .await
        .unwrap();
    assert_eq!(r.offset, 1, "a 128-byte key is accepted");

    // History calls are counted like the other methods.
    let r = raw_request(gw.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let m = wsgate_tests::hostile::parse_metrics(&r.body).0;
    let count = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        count("wsgate_grpc_requests_total{code=FAILED_PRECONDITION,method=Gateway/History}"),
        2.0
    );
    assert_eq!(
        count("wsgate_grpc_requests_total{code=INVALID_ARGUMENT,method=Gateway/History}"),
        6.0
    );
}
