//! Sessions and the control plane through real sockets and a real gRPC client.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate_proto::pb;
use wsgate_tests::*;

const QUIET: Duration = Duration::from_millis(200);

#[tokio::test]
async fn welcome_then_send_to_user_reaches_each_session_once() {
    let gw = Gateway::start(base_settings()).await;
    let (mut a1, w1) = gw.connect_user("alice").await;
    let (mut a2, w2) = gw.connect_user("alice").await;
    let (mut b, _) = gw.connect_user("bob").await;
    assert_eq!(w1["user_id"], "alice");
    assert_eq!(w1["heartbeat_s"], 25);
    assert_eq!(w1["session_id"].as_str().map(str::len), Some(26), "a ULID");
    assert_ne!(w1["session_id"], w2["session_id"]);

    let mut grpc = gw.grpc().await;
    let r = grpc.send_to_user("alice", text("hello")).await.unwrap();
    assert_eq!(r.targets, 2);
    assert!(!r.message_id.is_empty());
    for ws in [&mut a1, &mut a2] {
        assert_eq!(next_json(ws).await, json!({"op":"message","data":"hello"}));
        assert_silent(ws, QUIET).await;
    }
    assert_silent(&mut b, QUIET).await;
    let r = grpc.send_to_user("nobody", text("x")).await.unwrap();
    assert_eq!(r.targets, 0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn send_to_session_reaches_only_that_session() {
    let gw = Gateway::start(base_settings()).await;
    let (mut a1, w1) = gw.connect_user("alice").await;
    let (mut a2, _) = gw.connect_user("alice").await;
    let mut grpc = gw.grpc().await;
    let req = grpc.req(pb::SendToSessionRequest {
        session_id: w1["session_id"].as_str().unwrap().into(),
        payload: Some(pb::Payload {
            body: Some(text("just you")),
        }),
    });
    let r = grpc.inner.send_to_session(req).await.unwrap().into_inner();
    assert_eq!(r.targets, 1);
    assert_eq!(next_json(&mut a1).await["data"], "just you");
    assert_silent(&mut a2, QUIET).await;

    let req = grpc.req(pb::SendToSessionRequest {
        session_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        payload: Some(pb::Payload {
            body: Some(text("nobody")),
        }),
    });
    let r = grpc.inner.send_to_session(req).await.unwrap().into_inner();
    assert_eq!(r.targets, 0, "unknown session");
}

#[tokio::test]
async fn publish_reaches_only_subscribers_and_names_the_topic() {
    let gw = Gateway::start(base_settings()).await;
    let (mut sub, _) = gw.connect_user("alice").await;
    let (mut other, _) = gw.connect_user("bob").await;
    send_json(&mut sub, json!({"op":"subscribe","topic":"news","id":"s1"})).await;
    assert_eq!(
        next_json(&mut sub).await,
        json!({"op":"subscribed","topic":"news","id":"s1"})
    );
    send_json(&mut other, json!({"op":"subscribe","topic":"sport","id":2})).await;
    assert_eq!(next_json(&mut other).await["id"], 2);

    let mut grpc = gw.grpc().await;
    let r = grpc.publish("news", text("headline")).await.unwrap();
    assert_eq!(r.targets, 1);
    assert_eq!(
        next_json(&mut sub).await,
        json!({"op":"message","topic":"news","data":"headline"})
    );
    assert_silent(&mut other, QUIET).await;

    // After unsubscribing nothing more arrives.
    send_json(&mut sub, json!({"op":"unsubscribe","topic":"news"})).await;
    assert_eq!(
        next_json(&mut sub).await,
        json!({"op":"unsubscribed","topic":"news"})
    );
    let r = grpc.publish("news", text("again")).await.unwrap();
    assert_eq!(r.targets, 0);
    assert_silent(&mut sub, QUIET).await;
}

#[tokio::test]
async fn topics_claim_limits_subscriptions() {
    let gw = Gateway::start(jwt_settings()).await;
    let (mut ws, _) = gw
        .connect_token(&token("alice", Some(&["chat.*", "news"])))
        .await;
    for (topic, allowed) in [
        ("chat.1", true),
        ("chat.a.b", true),
        ("news", true),
        ("chat", false),
        ("sport", false),
        ("newsroom", false),
    ] {
        send_json(&mut ws, json!({"op":"subscribe","topic":topic,"id":topic})).await;
        let reply = next_json(&mut ws).await;
        if allowed {
            assert_eq!(reply["op"], "subscribed", "{topic}: {reply}");
        } else {
            assert_eq!(reply["op"], "error", "{topic}: {reply}");
            assert_eq!(reply["code"], "forbidden_topic");
            assert_eq!(reply["id"], topic);
        }
    }
    // A token without a topics claim may subscribe to nothing.
    let (mut none, _) = gw.connect_token(&token("bob", None)).await;
    send_json(&mut none, json!({"op":"subscribe","topic":"news"})).await;
    assert_eq!(next_json(&mut none).await["code"], "forbidden_topic");
}

#[tokio::test]
async fn broadcast_json_and_binary_payloads() {
    let gw = Gateway::start(base_settings()).await;
    let (mut a, _) = gw.connect_user("alice").await;
    let (mut b, _) = gw.connect_user("bob").await;
    let mut grpc = gw.grpc().await;

    let req = grpc.req(pb::BroadcastRequest {
        payload: Some(pb::Payload {
            body: Some(pb::payload::Body::Json(
                r#"{"n":[1,2,{"k":null}],"s":"é"}"#.into(),
            )),
        }),
    });
    let r = grpc.inner.broadcast(req).await.unwrap().into_inner();
    assert_eq!(r.targets, 2);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            next_json(ws).await,
            json!({"op":"message","data":{"n":[1,2,{"k":null}],"s":"é"}})
        );
    }

    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    grpc.send_to_user("alice", pb::payload::Body::Binary(bytes.clone().into()))
        .await
        .unwrap();
    match next_data(&mut a).await {
        Message::Binary(got) => assert_eq!(got.as_ref(), bytes.as_slice()),
        other => panic!("expected binary, got {other:?}"),
    }
    assert_silent(&mut b, QUIET).await;
}

#[tokio::test]
async fn disconnect_closes_with_the_given_code() {
    let gw = Gateway::start(base_settings()).await;
    let (mut a1, w1) = gw.connect_user("alice").await;
    let (mut a2, _) = gw.connect_user("alice").await;
    let (mut b1, _) = gw.connect_user("bob").await;
    let (mut b2, _) = gw.connect_user("bob").await;
    let mut grpc = gw.grpc().await;

    let req = grpc.req(pb::DisconnectRequest {
        target: Some(pb::disconnect_request::Target::SessionId(
            w1["session_id"].as_str().unwrap().into(),
        )),
        code: 4001,
        reason: "bye".into(),
    });
    let r = grpc.inner.disconnect(req).await.unwrap().into_inner();
    assert_eq!(r.targets, 1);
    assert_eq!(close_code(&mut a1).await, Some(4001));
    // The other session of the same user is untouched.
    send_json(&mut a2, json!({"op":"ping"})).await;
    assert_eq!(next_json(&mut a2).await, json!({"op":"pong"}));

    let req = grpc.req(pb::DisconnectRequest {
        target: Some(pb::disconnect_request::Target::UserId("bob".into())),
        code: 0,
        reason: String::new(),
    });
    let r = grpc.inner.disconnect(req).await.unwrap().into_inner();
    assert_eq!(r.targets, 2);
    assert_eq!(close_code(&mut b1).await, Some(3003), "0 means kicked");
    assert_eq!(close_code(&mut b2).await, Some(3003));
}

async fn presence(grpc: &mut GrpcClient, user: &str) -> pb::GetPresenceResponse {
    let req = grpc.req(pb::GetPresenceRequest {
        user_id: user.into(),
    });
    grpc.inner.get_presence(req).await.unwrap().into_inner()
}

async fn stats(grpc: &mut GrpcClient) -> pb::StatsResponse {
    let req = grpc.req(pb::StatsRequest {});
    grpc.inner.stats(req).await.unwrap().into_inner()
}

#[tokio::test]
async fn presence_and_stats_follow_sessions() {
    let gw = Gateway::start(base_settings()).await;
    let mut grpc = gw.grpc().await;
    let before = presence(&mut grpc, "alice").await;
    assert!(!before.online && before.sessions.is_empty());

    let (mut a1, w1) = gw.connect_user("alice").await;
    let (_a2, w2) = gw.connect_user("alice").await;
    let p = presence(&mut grpc, "alice").await;
    assert!(p.online);
    let ids: Vec<&str> = p.sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            w1["session_id"].as_str().unwrap(),
            w2["session_id"].as_str().unwrap()
        ],
        "oldest first"
    );
    for s in &p.sessions {
        assert_eq!(s.pod_id, "test-pod");
        assert_eq!(s.remote_addr, "127.0.0.1");
        assert!(s.connected_at_ms > 1_700_000_000_000);
    }
    let st = stats(&mut grpc).await;
    assert_eq!(st.pods.len(), 1);
    assert_eq!(st.pods[0].pod_id, "test-pod");
    assert!(st.pods[0].alive);
    assert_eq!((st.pods[0].connections, st.total_connections), (2, 2));

    a1.close(None).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let p = presence(&mut grpc, "alice").await;
        if p.sessions.len() == 1 {
            assert_eq!(p.sessions[0].session_id, w2["session_id"].as_str().unwrap());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed session still present: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats(&mut grpc).await.total_connections, 1);
}

#[tokio::test]
async fn garbage_frames_get_errors_and_the_session_stays_usable() {
    let gw = Gateway::start(base_settings()).await;
    let (mut ws, _) = gw.connect_user("alice").await;
    for garbage in [
        "not json",
        "[1,2]",
        r#"{"op":"dance","id":"d"}"#,
        "{}",
        "\u{0}",
    ] {
        ws.send(Message::text(garbage)).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["op"], "error", "{garbage}");
        assert_eq!(reply["code"], "bad_request");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "bad_request");
    send_json(&mut ws, json!({"op":"ping","id":9})).await;
    assert_eq!(next_json(&mut ws).await, json!({"op":"pong","id":9}));
    let mut grpc = gw.grpc().await;
    grpc.send_to_user("alice", text("still here"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["data"], "still here");
}

#[tokio::test]
async fn oversized_inbound_message_closes_with_1009() {
    let mut s = base_settings();
    s.session.max_message_bytes = 1024;
    s.session.max_frame_bytes = 1024;
    let gw = Gateway::start(s).await;
    let (mut ws, _) = gw.connect_user("alice").await;
    ws.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
}

/// Upgrades a raw TCP connection and returns it without ever reading from it again: a
/// client that never answers pings.
async fn raw_upgrade(gw: &Gateway, user: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(&upgrade_request(&format!("/ws?user={user}"), ""))
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_in_time() {
    let mut s = base_settings();
    s.session.heartbeat_interval = Duration::from_millis(300);
    s.session.heartbeat_timeout = Duration::from_millis(400);
    let gw = Gateway::start(s).await;
    let mut grpc = gw.grpc().await;

    // A well-behaved client (tungstenite answers pings while it reads) stays connected:
    // it keeps reading in the background and reports what it sees.
    let (mut good, _) = gw.connect_user("good").await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(frame) = tokio::time::timeout(WAIT, next_data(&mut good)).await {
            let _ = seen_tx.send(frame);
        }
    });
    let mut silent = raw_upgrade(&gw, "silent").await;
    let started = Instant::now();

    // The silent client: read until the server closes the TCP connection.
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "silent client not closed within 5 s");
    // interval + timeout = 700 ms, plus the close handshake wait (bounded by the timeout).
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(2500),
        "closed after {elapsed:?}"
    );
    // The server's close frame (opcode 0x88, unmasked) carries 3001 = 0x0BB9.
    let close_at = received
        .windows(2)
        .position(|w| w[0] == 0x88 && w[1] >= 2)
        .expect("no close frame received");
    assert_eq!(&received[close_at + 2..close_at + 4], &[0x0B, 0xB9]);

    // Meanwhile the good client kept answering pings and is alive.
    grpc.send_to_user("good", text("alive")).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, seen.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Message::Text(t) if t.as_str().contains("alive") => break,
            Message::Close(c) => panic!("the good client was closed: {c:?}"),
            _ => continue,
        }
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_slow_with_bounded_memory() {
    const MESSAGE: usize = 64 * 1024;
    const SENDS: usize = 400; // 25 MiB: far beyond loopback socket buffers
    let mut s = base_settings();
    s.session.outbound_queue = 16;
    s.session.heartbeat_interval = Duration::from_secs(60);
    // Also how long the server waits to deliver its close frame to the stalled client.
    s.session.heartbeat_timeout = Duration::from_secs(20);
    let gw = Gateway::start(s).await;
    let (mut slow, _) = gw.connect_user("slow").await;
    let (mut other, _) = gw.connect_user("other").await;
    let mut grpc = gw.grpc().await;
    let body = "x".repeat(MESSAGE);

    // `slow` is not polled from here on: it reads nothing while the flood goes out.
    let rss_before = rss_bytes();
    let mut peak = rss_before;
    for i in 0..SENDS {
        grpc.send_to_user("slow", text(&body)).await.unwrap();
        if i % 8 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    let growth = peak.saturating_sub(rss_before);
    // Queue limit 16 × 64 KiB = 1 MiB; allow for allocator slack and gRPC buffers, but
    // far less than the ~38 MiB sent.
    assert!(
        growth < 12 * 1024 * 1024,
        "gateway memory grew by {} MiB for a client that stopped reading",
        growth / (1024 * 1024)
    );

    // Now it reads again: some pushes, then the close with 3008.
    let mut data_frames = 0;
    let code = loop {
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut slow),
        )
        .await
        .expect("no close frame in time");
        match msg {
            Some(Ok(Message::Text(_))) => data_frames += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(3008), "slow consumer close code");
    eprintln!("slow consumer: {data_frames} of {SENDS} pushes delivered, RSS growth {growth} B");
    assert!(
        data_frames < SENDS,
        "every push was delivered ({data_frames}); the queue did not bound anything"
    );

    // Other sessions were unaffected.
    grpc.send_to_user("other", text("fine")).await.unwrap();
    assert_eq!(next_json(&mut other).await["data"], "fine");
}
