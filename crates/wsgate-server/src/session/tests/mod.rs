//! A [`Session`] driven through an in-memory socket: `WebSocketStream::from_raw_socket`
//! on both ends of a `tokio::io::duplex` pipe, on a real embedded [`Node`].
//!
//! The pipe runs the real tungstenite codec, which the session relies on: tungstenite
//! answers pings and close frames itself (the session only flushes), turns oversized or
//! invalid frames into the read errors the session maps to closes, and a full pipe makes
//! writes stall the way a client that stopped reading does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use wsgate_core::auth::TopicPolicy;
use wsgate_core::backend::{Command, Envelope, Target};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::{Payload, encode_welcome};
use wsgate_core::stream::HistoryRules;

use super::*;

mod publish;
mod refresh;
mod streams;

type Socket = WebSocketStream<DuplexStream>;

/// Long enough for anything a test waits for, paused time included.
const PATIENCE: Duration = Duration::from_secs(600);

async fn node() -> Arc<Node> {
    node_with(HistoryRules::default()).await
}

async fn node_with(history: HistoryRules) -> Arc<Node> {
    Node::embedded("pod-test".to_owned(), history, Default::default())
        .await
        .expect("embedded node")
}

/// Heartbeats far away, so only the tests about them see one.
fn params() -> SessionParams {
    SessionParams {
        heartbeat_interval: Duration::from_secs(3600),
        heartbeat_timeout: Duration::from_secs(5),
        outbound_queue: 16,
        token_leeway: Duration::ZERO,
        client_publish: false,
        compression: false,
        compression_min_bytes: 256,
        client_publish_per_s: 5,
        rpc: None,
        authenticator: Arc::new(
            wsgate_core::auth::Authenticator::jwt(wsgate_core::auth::JwtConfig {
                algorithm: wsgate_core::auth::JwtAlgorithm::HS256,
                key: wsgate_core::auth::JwtKey::Secret(SECRET.to_vec()),
                issuer: None,
                audience: None,
                leeway: Duration::ZERO,
            })
            .expect("an HS256 authenticator"),
        ),
    }
}

/// The key of the sessions' tokens in [`params`].
const SECRET: &[u8] = b"session-tests-secret-0123456789abcdef";

/// [`params`] with pings every `interval`.
fn pinging_every(interval: Duration) -> SessionParams {
    SessionParams {
        heartbeat_interval: interval,
        ..params()
    }
}

fn now_s() -> u64 {
    crate::node::now_ms() / 1000
}

/// A session of `user` whose token expires in `secs` seconds.
fn expiring(user: &str, secs: u64) -> SessionContext {
    SessionContext {
        expires_at: Some(now_s() + secs),
        token_id: None,
        ..context(user)
    }
}

fn context(user: &str) -> SessionContext {
    SessionContext {
        session_id: SessionId::generate(),
        user_id: user.to_owned(),
        topics: TopicPolicy::Patterns(vec!["chat.*".to_owned()]),
        publish: TopicPolicy::Patterns(vec!["chat.*".to_owned()]),
        remote_addr: "192.0.2.1".to_owned(),
        user_agent: None,
        subprotocol: None,
        echo: false,
        expires_at: None,
        token_id: None,
        user_since: None,
        compression: false,
    }
}

/// A session running on one end of a pipe; the test is the client on the other.
struct Running {
    client: Socket,
    task: JoinHandle<SessionEnd>,
    id: SessionId,
    record: SessionRecord,
    handle: Arc<SessionHandle>,
}

/// A pipe of `buffer` bytes each way; `config` applies to the server end.
async fn pipe(buffer: usize, config: Option<WebSocketConfig>) -> (Socket, Socket) {
    let (server, client) = tokio::io::duplex(buffer);
    let server = WebSocketStream::from_raw_socket(server, Role::Server, config).await;
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    (server, client)
}

async fn registered(node: &Arc<Node>, ctx: &SessionContext, params: &SessionParams) -> Registered {
    register(node, ctx, params, 0).await.expect("registered")
}

fn spawn(
    registered: Registered,
    server: Socket,
    client: Socket,
    ctx: SessionContext,
    params: SessionParams,
) -> Running {
    let id = ctx.session_id.clone();
    let record = registered.cleanup.record.clone();
    let handle = registered.handle.clone();
    let task = tokio::spawn(run(server, ctx, Arc::new(params), registered));
    Running {
        client,
        task,
        id,
        record,
        handle,
    }
}

/// Registers and runs a session on a roomy pipe.
async fn start(node: &Arc<Node>, ctx: SessionContext, params: SessionParams) -> Running {
    let reg = registered(node, &ctx, &params).await;
    let (server, client) = pipe(64 * 1024, None).await;
    spawn(reg, server, client, ctx, params)
}

impl Running {
    async fn recv(&mut self) -> Message {
        tokio::time::timeout(PATIENCE, self.client.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a readable frame")
    }

    async fn recv_json(&mut self) -> serde_json::Value {
        match self.recv().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads the welcome frame every non-echo session starts with.
    async fn welcomed(&mut self) {
        assert_eq!(self.recv_json().await["op"], "welcome");
    }

    async fn send(&mut self, msg: Message) {
        self.client.send(msg).await.expect("client send");
    }

    async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    /// Expects the server's close frame with `code` and `reason`, then the end of the
    /// session as closed by the server with that code.
    async fn closed_by_server(mut self, code: u16, reason: &str) {
        let (sent_code, sent_reason) = close_of(self.recv().await);
        assert_eq!((sent_code, sent_reason.as_str()), (code, reason));
        assert_eq!(self.ends().await.ended_by, EndedBy::Server(code));
    }

    /// Waits for the session's end while the client keeps reading, which lets
    /// tungstenite answer the server's close frame.
    async fn ends(self) -> SessionEnd {
        let mut client = self.client;
        tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });
        finished(self.task).await
    }
}

/// The session's summary, once its task is over.
async fn finished(task: JoinHandle<SessionEnd>) -> SessionEnd {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the session ends in time")
        .expect("the session task does not panic")
}

/// The code and reason of a close frame.
fn close_of(msg: Message) -> (u16, String) {
    match msg {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn in_registry(node: &Node, id: &SessionId) -> bool {
    node.registry
        .session(id)
        .await
        .expect("registry read")
        .is_some()
}

/// Waits until the session is gone from the hub and the registry (the cleanup after a
/// cancellation runs on a task of its own).
async fn until_unregistered(node: &Node, id: &SessionId) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while node.hub.get(id).is_some() || in_registry(node, id).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the session is unregistered");
}

/// Reads one server frame (unmasked) off the raw pipe: its opcode and payload. For a
/// client that must not answer pings, which a tungstenite client does by itself.
async fn read_raw_frame(io: &mut DuplexStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.expect("frame header");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            io.read_exact(&mut ext).await.expect("length");
            usize::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            io.read_exact(&mut ext).await.expect("length");
            usize::try_from(u64::from_be_bytes(ext)).expect("length fits")
        }
        n => usize::from(n),
    };
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.expect("payload");
    (head[0] & 0x0f, payload)
}

fn deliver(node: &Node, target: Target, payload: Payload) -> usize {
    node.hub.apply(&Envelope::new(
        "pod-test",
        target,
        Command::Deliver(payload),
    ))
}

#[tokio::test]
async fn the_first_frame_is_the_welcome() {
    let node = node().await;
    let mut params = params();
    params.heartbeat_interval = Duration::from_secs(25);
    let ctx = context("alice");
    let id = ctx.session_id.clone();
    let mut s = start(&node, ctx, params).await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({
            "op": "welcome",
            "session_id": id.as_str(),
            "user_id": "alice",
            "heartbeat_s": 25,
        })
    );
    assert!(node.hub.get(&id).is_some() && in_registry(&node, &id).await);
}

#[tokio::test]
async fn ops_are_answered_with_their_ids() {
    let node = node().await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;

    s.send_text(r#"{"op":"ping","id":7}"#).await;
    assert_eq!(s.recv_json().await, serde_json::json!({"op":"pong","id":7}));

    s.send_text(r#"{"op":"subscribe","topic":"chat.1","id":"s1"}"#)
        .await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"subscribed","topic":"chat.1","id":"s1"})
    );
    assert!(node.hub.has_topic("chat.1"));
    assert_eq!(
        node.registry.count_topic_subscribers("chat.1").await.ok(),
        Some(1),
        "the registry knows the subscription"
    );

    s.send_text(r#"{"op":"subscribe","topic":"news","id":8}"#)
        .await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({
            "op": "error",
            "code": "forbidden_topic",
            "message": "the token does not allow topic \"news\"",
            "id": 8,
        })
    );
    assert!(!node.hub.has_topic("news"));

    s.send_text("not json").await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"error","code":"bad_request","message":"frame is not valid JSON"})
    );

    s.send(Message::binary(Bytes::from_static(b"\x01"))).await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({
            "op": "error",
            "code": "bad_request",
            "message": "binary frames are not accepted from clients",
        })
    );

    s.send_text(r#"{"op":"unsubscribe","topic":"chat.1","id":"u"}"#)
        .await;
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"unsubscribed","topic":"chat.1","id":"u"})
    );
    assert!(!node.hub.has_topic("chat.1"));
}

#[tokio::test]
async fn pushes_queued_through_the_hub_reach_the_socket() {
    let node = node().await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.send_text(r#"{"op":"subscribe","topic":"chat.1"}"#).await;
    assert_eq!(s.recv_json().await["op"], "subscribed");

    assert_eq!(
        deliver(
            &node,
            Target::Topic("chat.1".into()),
            Payload::Text("hi".into())
        ),
        1
    );
    assert_eq!(
        s.recv_json().await,
        serde_json::json!({"op":"message","topic":"chat.1","data":"hi"})
    );
    assert_eq!(
        deliver(
            &node,
            Target::User("alice".into()),
            Payload::Binary(Bytes::from_static(&[0, 255]))
        ),
        1
    );
    assert_eq!(
        s.recv().await,
        Message::Binary(Bytes::from_static(&[0, 255]))
    );
}

#[tokio::test]
async fn echo_mode_sends_data_back_without_a_welcome() {
    let node = node().await;
    let mut ctx = context("alice");
    ctx.echo = true;
    let mut s = start(&node, ctx, params()).await;
    s.send_text("not an op").await;
    assert_eq!(s.recv().await, Message::text("not an op"));
    s.send(Message::binary(Bytes::from_static(b"\x00\x01")))
        .await;
    assert_eq!(
        s.recv().await,
        Message::Binary(Bytes::from_static(b"\x00\x01"))
    );
}

#[tokio::test]
async fn a_client_close_frame_ends_the_session_as_client() {
    let node = node().await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.send_text(r#"{"op":"ping"}"#).await;
    let pong = s.recv().await;
    let welcome_and_pong = {
        let welcome = encode_welcome(s.id.as_str(), "alice", 3600);
        (welcome.len() + pong.len()) as u64
    };

    s.client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("client close");
    // tungstenite answers the close; the session flushes the answer.
    assert_eq!(close_of(s.recv().await).0, 1000);
    let (node_, id) = (node.clone(), s.id.clone());
    let end = s.ends().await;
    assert_eq!(end.ended_by, EndedBy::Client(Some(1000)));
    assert_eq!((end.messages_in, end.messages_out), (1, 2));
    assert_eq!(end.bytes_in, r#"{"op":"ping"}"#.len() as u64);
    assert_eq!(end.bytes_out, welcome_and_pong);
    // `run` returns only once the session is unregistered.
    assert!(node_.hub.get(&id).is_none());
    assert!(!in_registry(&node_, &id).await);
}

#[tokio::test]
async fn a_requested_close_unregisters_before_the_close_frame() {
    let node = node().await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.handle.close(4001, "kicked by the test");
    let (code, reason) = close_of(s.recv().await);
    assert_eq!((code, reason.as_str()), (4001, "kicked by the test"));
    // The client has the close frame and has not answered yet: already unregistered.
    assert!(node.hub.get(&s.id).is_none());
    assert!(!in_registry(&node, &s.id).await);
    assert_eq!(s.ends().await.ended_by, EndedBy::Server(4001));
}

#[tokio::test]
async fn a_session_registered_while_draining_is_told_to_reconnect() {
    let node = node().await;
    node.gauge.start_draining();
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.closed_by_server(1001, "server shutting down; reconnect")
        .await;
}

#[tokio::test]
async fn a_full_outbound_queue_closes_as_a_slow_consumer() {
    let node = node().await;
    let mut params = params();
    params.outbound_queue = 2;
    let ctx = context("alice");
    let reg = registered(&node, &ctx, &params).await;
    // Pushes arrive before the socket is up; the third finds the queue full.
    for n in 0..3 {
        deliver(
            &node,
            Target::User("alice".into()),
            Payload::Text(n.to_string()),
        );
    }
    let (server, client) = pipe(64 * 1024, None).await;
    let mut s = spawn(reg, server, client, ctx, params);
    s.welcomed().await;
    // The close request wins over the queued pushes.
    s.closed_by_server(3008, "slow consumer: outbound queue full")
        .await;
    assert_eq!(node.metrics.slow_consumer_closes.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_write_that_stalls_closes_as_a_slow_consumer() {
    let node = node().await;
    let ctx = context("alice");
    let params = params();
    let reg = registered(&node, &ctx, &params).await;
    // A pipe that holds the welcome but not the pushes below.
    let (server, client) = pipe(1024, None).await;
    let mut s = spawn(reg, server, client, ctx, params);
    s.welcomed().await;
    let started = tokio::time::Instant::now();
    // The client stops reading; the pushes fit the queue but not the pipe.
    for _ in 0..8 {
        deliver(
            &node,
            Target::User("alice".into()),
            Payload::Text("x".repeat(1000)),
        );
    }
    // Not `ends()`: the client must go on not reading.
    let end = finished(s.task).await;
    assert_eq!(end.ended_by, EndedBy::Server(3008));
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "a write stalls for the heartbeat timeout first, not {:?}",
        started.elapsed()
    );
    assert_eq!(s.handle.close_reason(), None, "the queue never filled");
    assert_eq!(node.metrics.slow_consumer_closes.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_ping_closes_with_a_heartbeat_timeout() {
    let node = node().await;
    let params = pinging_every(Duration::from_secs(10));
    let ctx = context("alice");
    let reg = registered(&node, &ctx, &params).await;
    let (server, mut client) = tokio::io::duplex(64 * 1024);
    let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let task = tokio::spawn(run(server, ctx, Arc::new(params), reg));
    assert_eq!(read_raw_frame(&mut client).await.0, 0x1, "the welcome");
    let started = tokio::time::Instant::now();
    // The client reads nothing more: it answers neither the ping nor the close.
    let end = finished(task).await;
    assert_eq!(end.ended_by, EndedBy::Server(3001));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited <= Duration::from_secs(20),
        "ping at 10 s, deadline 5 s later, then up to 5 s for the close reply; \
         ended after {waited:?}"
    );
    assert_eq!(read_raw_frame(&mut client).await, (0x9, vec![]), "the ping");
    let mut close = 3001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"heartbeat timeout");
    assert_eq!(read_raw_frame(&mut client).await, (0x8, close));
    assert_eq!(node.metrics.heartbeat_timeouts.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn answered_pings_keep_the_session_open() {
    let node = node().await;
    let params = pinging_every(Duration::from_secs(10));
    let mut s = start(&node, context("alice"), params).await;
    s.welcomed().await;
    // Reading lets tungstenite answer each ping with a pong.
    for _ in 0..5 {
        assert!(matches!(s.recv().await, Message::Ping(_)));
    }
    assert!(node.hub.get(&s.id).is_some(), "still open after five pings");
    assert_eq!(node.metrics.heartbeat_timeouts.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_session_closes_when_its_token_expires() {
    let node = node().await;
    let mut params = params();
    params.token_leeway = Duration::from_secs(5);
    let mut s = start(&node, expiring("alice", 20), params).await;
    s.welcomed().await;
    let started = tokio::time::Instant::now();
    s.closed_by_server(3005, "token expired; reconnect with a new token")
        .await;
    let waited = started.elapsed();
    // `exp` is in whole seconds, so up to one less than asked is left; plus the leeway.
    assert!(
        waited >= Duration::from_secs(24) && waited <= Duration::from_secs(25),
        "closed after {waited:?}"
    );
}

/// The heartbeat and the token's end share one timer: pings answered in between keep
/// moving it, and the token's deadline still closes the session on time.
#[tokio::test(start_paused = true)]
async fn answered_pings_go_on_until_the_token_expires() {
    let node = node().await;
    let mut params = pinging_every(Duration::from_secs(3));
    params.token_leeway = Duration::from_secs(5);
    let mut s = start(&node, expiring("alice", 20), params).await;
    s.welcomed().await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    // Reading lets tungstenite answer each ping with a pong.
    let close = loop {
        match s.recv().await {
            Message::Ping(_) => pings += 1,
            other => break other,
        }
    };
    let waited = started.elapsed();
    assert_eq!(
        close_of(close),
        (3005, "token expired; reconnect with a new token".to_owned())
    );
    // `exp` is in whole seconds, so up to one less than asked is left; plus the leeway.
    assert!(
        waited >= Duration::from_secs(24) && waited <= Duration::from_secs(25),
        "closed after {waited:?}"
    );
    assert!(
        (7..=8).contains(&pings),
        "a ping every 3 s until then: {pings}"
    );
    assert_eq!(node.metrics.heartbeat_timeouts.get(), 0);
    assert_eq!(s.ends().await.ended_by, EndedBy::Server(3005));
}

/// A token's `exp` is the issuer's to choose: one beyond what the clock can add is no
/// deadline, not a panic in the session's task.
#[tokio::test]
async fn a_token_expiring_beyond_the_clock_sets_no_deadline() {
    let node = node().await;
    let mut ctx = context("alice");
    ctx.expires_at = Some(u64::MAX);
    let mut s = start(&node, ctx, params()).await;
    s.welcomed().await;
    s.send_text(r#"{"op":"subscribe","topic":"chat.1"}"#).await;
    assert_eq!(s.recv_json().await["op"], "subscribed");
    assert!(node.hub.get(&s.id).is_some(), "still open");
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let node = node().await;
    let ctx = context("alice");
    let params = params();
    let reg = registered(&node, &ctx, &params).await;
    let config = WebSocketConfig::default().max_message_size(Some(64));
    let (server, client) = pipe(64 * 1024, Some(config)).await;
    let mut s = spawn(reg, server, client, ctx, params);
    s.welcomed().await;
    s.send_text(&"x".repeat(100)).await;
    s.closed_by_server(1009, "message too big").await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let node = node().await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    let raw = Frame::message(
        Bytes::from_static(b"\xff\xfe"),
        OpCode::Data(Data::Text),
        true,
    );
    s.send(Message::Frame(raw)).await;
    s.closed_by_server(1007, "invalid UTF-8 in a text frame")
        .await;
}

#[tokio::test]
async fn a_cancelled_session_is_cleaned_up_once() {
    let node = node().await;
    // A second session of the same user, which the cleanup must leave alone.
    let other_ctx = context("alice");
    let other = registered(&node, &other_ctx, &params()).await;
    let mut s = start(&node, context("alice"), params()).await;
    s.welcomed().await;
    s.send_text(r#"{"op":"subscribe","topic":"chat.1"}"#).await;
    assert_eq!(s.recv_json().await["op"], "subscribed");
    assert_eq!(
        node.registry.count_user_sessions("alice").await.ok(),
        Some(2)
    );

    s.task.abort();
    assert!(s.task.await.is_err_and(|e| e.is_cancelled()));
    until_unregistered(&node, &s.id).await;
    assert!(!node.hub.has_topic("chat.1"), "its topics went with it");

    // A second cleanup changes nothing, and the other session stays.
    Cleanup {
        node: node.clone(),
        record: s.record.clone(),
        done: false,
    }
    .run(&wsgate_core::events::Closed::unexplained(0))
    .await;
    assert!(node.hub.get(&other_ctx.session_id).is_some());
    assert!(node.hub.has_user("alice"));
    assert_eq!(
        node.registry.count_user_sessions("alice").await.ok(),
        Some(1)
    );
    drop(other);
}

#[tokio::test]
async fn a_registration_dropped_before_the_socket_is_undone() {
    let node = node().await;
    let ctx = context("alice");
    let reg = registered(&node, &ctx, &params()).await;
    assert!(in_registry(&node, &ctx.session_id).await);
    drop(reg);
    until_unregistered(&node, &ctx.session_id).await;
    assert!(!node.hub.has_user("alice"));
}
