//! Session events end to end: real `wsgate serve` pods on a real `redis-server` (and the
//! embedded gateway in-process), real WebSocket clients, `WatchEvents` over gRPC.
//!
//! - 50 sessions open and close on two pods while a consumer watches, leaves midway and
//!   comes back (on the other pod) with its last id: it gets every event exactly once,
//!   in order, the same as the whole log read afterwards.
//! - A pod SIGKILLed with 20 sessions: the two surviving pods race to reap it, and the
//!   20 `disconnected` (code 1006, by `pod_lost`) arrive within two pod TTLs, once each.
//! - A session that ends while Redis hangs gets its `disconnected` once Redis is back.
//! - The embedded gateway: every way a session ends, type filters, bad cursors, a cursor
//!   behind the cap, events off, the API key, and streams ended by shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tonic::Code;
use wsgate_proto::pb;
use wsgate_proto::pb::EventType;
use wsgate_tests::hostile::{eventually, scrape};
use wsgate_tests::pods::Pod;
use wsgate_tests::recorder::{Recorder, session_id};
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

/// The pods' `registry.pod_ttl` (set by [`Pod::start`]).
const POD_TTL: Duration = Duration::from_secs(1);

type Events = tonic::Streaming<pb::Event>;

async fn watch(
    grpc: &mut GrpcClient,
    since: &str,
    types: &[EventType],
) -> Result<Events, tonic::Status> {
    let req = grpc.req(pb::WatchEventsRequest {
        since_id: since.into(),
        types: types.iter().map(|t| *t as i32).collect(),
    });
    grpc.inner.watch_events(req).await.map(|r| r.into_inner())
}

/// The next event, failing the test after `within`.
async fn next_event(events: &mut Events, within: Duration) -> pb::Event {
    match tokio::time::timeout(within, events.message()).await {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => panic!("the event stream ended"),
        Ok(Err(status)) => panic!("the event stream failed: {status:?}"),
        Err(_) => panic!("no event within {within:?}"),
    }
}

/// The next `n` events.
async fn take(events: &mut Events, n: usize) -> Vec<pb::Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(next_event(events, WAIT).await);
    }
    got
}

/// Asserts nothing more arrives for `quiet`.
async fn assert_no_more(events: &mut Events, quiet: Duration) {
    if let Ok(more) = tokio::time::timeout(quiet, events.message()).await {
        panic!("expected no more events, got {more:?}");
    }
}

/// The status a stream ends with, within `within`.
async fn end_status(events: &mut Events, within: Duration) -> tonic::Status {
    loop {
        match tokio::time::timeout(within, events.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => return status,
            Err(_) => panic!("the stream did not end within {within:?}"),
        }
    }
}

/// `(type, topic, code, by)` of an event.
fn what(e: &pb::Event) -> (EventType, Option<&str>, Option<u32>, Option<&str>) {
    (e.r#type(), e.topic.as_deref(), e.code, e.by.as_deref())
}

/// The id as `(epoch, n)`, for ordering.
fn order(e: &pb::Event) -> (u64, u64) {
    let (ms, seq) = e.id.split_once('-').expect("an id epoch-n");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

fn assert_increasing(events: &[pb::Event]) {
    for pair in events.windows(2) {
        assert!(
            order(&pair[0]) < order(&pair[1]),
            "ids out of order (or repeated): {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
}

/// Closes with `frame` and reads until the server ends the connection.
async fn close_with(ws: &mut Ws, frame: Option<CloseFrame>) {
    ws.send(Message::Close(frame)).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, futures_util::StreamExt::next(ws)).await
    {
    }
}

fn normal_close() -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })
}

async fn subscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, json!({"op": "subscribe", "topic": topic})).await;
    assert_eq!(
        next_json(ws).await,
        json!({"op": "subscribed", "topic": topic})
    );
}

async fn unsubscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, json!({"op": "unsubscribe", "topic": topic})).await;
    assert_eq!(
        next_json(ws).await,
        json!({"op": "unsubscribed", "topic": topic})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_sessions_on_two_pods_resume_exactly_once_in_order() {
    const SESSIONS: usize = 50;
    // Connected, subscribed and disconnected each; every odd one also unsubscribes.
    const EXPECTED: usize = SESSIONS * 3 + SESSIONS / 2;
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, b) = tokio::join!(Pod::start("ev-a", &url, &[]), Pod::start("ev-b", &url, &[]));
    let mut ga = a.grpc().await;
    let mut events = watch(&mut ga, "", &[]).await.unwrap();

    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let (url, pod) = if i % 2 == 0 {
            (a.ws_url(&format!("u{i}")), "ev-a")
        } else {
            (b.ws_url(&format!("u{i}")), "ev-b")
        };
        sessions.push(tokio::spawn(async move {
            // Staggered, so the consumer leaves while sessions still come and go.
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            let welcome = next_json(&mut ws).await;
            let topic = format!("news.{i}");
            subscribe(&mut ws, &topic).await;
            if i % 2 == 1 {
                unsubscribe(&mut ws, &topic).await;
            }
            close_with(&mut ws, normal_close()).await;
            (session_id(&welcome), format!("u{i}"), pod, topic)
        }));
    }

    // The consumer takes part of the events, then goes away while sessions go on.
    let started = Instant::now();
    let first = take(&mut events, EXPECTED / 3).await;
    drop(events);
    let last = first.last().unwrap().id.clone();
    let mut expected = BTreeMap::new();
    for s in sessions {
        let (id, user, pod, topic) = s.await.unwrap();
        expected.insert(id, (user, pod, topic));
    }

    // It comes back on the other pod with its last id.
    let mut gb = b.grpc().await;
    let mut resumed = watch(&mut gb, &last, &[]).await.unwrap();
    let rest = take(&mut resumed, EXPECTED - first.len()).await;
    assert_no_more(&mut resumed, Duration::from_millis(500)).await;
    let took = started.elapsed();
    let seen: Vec<pb::Event> = first.into_iter().chain(rest).collect();
    assert_increasing(&seen);

    // Exactly what the log holds, in the log's order.
    let mut everything = watch(&mut ga, "0-0", &[]).await.unwrap();
    let log = take(&mut everything, EXPECTED).await;
    assert_no_more(&mut everything, Duration::from_millis(300)).await;
    assert_eq!(seen, log, "the resumed consumer's events are the log's");

    // Each session: connected, subscribed, [unsubscribed], disconnected (1000, client),
    // with its user and its pod.
    let mut per_session: BTreeMap<&str, Vec<&pb::Event>> = BTreeMap::new();
    for e in &seen {
        per_session.entry(&e.session_id).or_default().push(e);
    }
    assert_eq!(per_session.len(), SESSIONS);
    for (id, events) in per_session {
        let (user, pod, topic) = expected
            .get(id)
            .unwrap_or_else(|| panic!("unknown session {id}"));
        let mut want = vec![
            (EventType::Connected, None, None, None),
            (EventType::Subscribed, Some(topic.as_str()), None, None),
        ];
        if events.len() == 4 {
            want.push((EventType::Unsubscribed, Some(topic.as_str()), None, None));
        }
        want.push((EventType::Disconnected, None, Some(1000), Some("client")));
        assert_eq!(
            events.iter().map(|e| what(e)).collect::<Vec<_>>(),
            want,
            "session {id}"
        );
        for e in events {
            assert_eq!((&e.user_id, e.pod_id.as_str()), (user, *pod), "{e:?}");
        }
    }
    // Both pods wrote events, and each counted its own.
    for pod in [&a, &b] {
        let m = scrape(pod.http).await;
        assert_eq!(
            m.get("wsgate_events_emitted_total{type=connected}"),
            (SESSIONS / 2) as f64
        );
        assert_eq!(
            m.get("wsgate_events_emitted_total{type=disconnected}"),
            (SESSIONS / 2) as f64
        );
        assert_eq!(m.sum("wsgate_events_dropped_total"), 0.0);
    }
    eprintln!(
        "{SESSIONS} sessions on 2 pods: {EXPECTED} events, the consumer left after {} and resumed \
         on the other pod; all exactly once in order within {took:?}",
        EXPECTED / 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_pods_sessions_are_disconnected_once_by_the_pods_that_reap_it() {
    const SESSIONS: usize = 20;
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, b, mut c) = tokio::join!(
        Pod::start("reap-a", &url, &[]),
        Pod::start("reap-b", &url, &[]),
        Pod::start("reap-c", &url, &[]),
    );
    let mut ga = a.grpc().await;
    let mut events = watch(&mut ga, "", &[]).await.unwrap();
    let mut ids = BTreeSet::new();
    let mut sockets = Vec::new();
    for i in 0..SESSIONS {
        let (ws, welcome) = c.connect_user(&format!("k{i}")).await;
        ids.insert(session_id(&welcome));
        sockets.push(Recorder::start(ws));
    }
    let connected = take(&mut events, SESSIONS).await;
    assert!(
        connected
            .iter()
            .all(|e| e.r#type() == EventType::Connected && e.pod_id == "reap-c")
    );

    c.kill();
    let killed = Instant::now();
    let lost = take(&mut events, SESSIONS).await;
    let within = killed.elapsed();
    let mut closed = BTreeSet::new();
    for e in &lost {
        assert_eq!(
            what(e),
            (EventType::Disconnected, None, Some(1006), Some("pod_lost")),
            "{e:?}"
        );
        assert_eq!(
            (e.pod_id.as_str(), e.user_id.starts_with('k')),
            ("reap-c", true),
            "{e:?}"
        );
        assert!(closed.insert(e.session_id.clone()), "twice: {e:?}");
    }
    assert_eq!(closed, ids, "every session of the dead pod, once");
    // Nothing more: the other reaper found them gone.
    assert_no_more(&mut events, POD_TTL * 2).await;
    let (ma, mb) = tokio::join!(scrape(a.http), scrape(b.http));
    let reaped = |m: &wsgate_tests::hostile::Metrics| {
        m.get("wsgate_events_emitted_total{type=disconnected}")
    };
    assert_eq!(
        reaped(&ma) + reaped(&mb),
        SESSIONS as f64,
        "written once in all"
    );
    // Liveness lapses within one TTL of the kill, a reaper runs within the next; the
    // slack is for the test's own view (the kill, the stream) on a loaded machine.
    assert!(
        within <= POD_TTL * 2 + Duration::from_millis(500),
        "the dead pod's disconnected events took {within:?} (pod TTL {POD_TTL:?})"
    );
    eprintln!(
        "pod SIGKILLed with {SESSIONS} sessions: {SESSIONS} pod_lost events {within:?} later \
         (written by reap-a: {}, reap-b: {})",
        reaped(&ma),
        reaped(&mb)
    );
    drop(sockets);
}

/// The `process_id` of a running `redis-server`.
fn redis_pid(redis: &RedisServer) -> u32 {
    let info = redis.cli(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO server:\n{info}"))
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Sends SIGCONT on drop, so a failing test never leaves Redis stopped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_while_redis_hangs_is_disconnected_once_redis_is_back() {
    let redis = RedisServer::start();
    let pod = Pod::start("hang-a", &redis.url(), &[]).await;
    let mut grpc = pod.grpc().await;
    let mut events = watch(&mut grpc, "", &[]).await.unwrap();
    let (mut ws, welcome) = pod.connect_user("h").await;
    let id = session_id(&welcome);
    assert_eq!(
        next_event(&mut events, WAIT).await.r#type(),
        EventType::Connected
    );

    let pid = redis_pid(&redis);
    let resume = Resume(pid);
    signal(pid, "-STOP");
    let closed_at = Instant::now();
    close_with(&mut ws, normal_close()).await;
    // Longer than a command's timeout: the removal fails and is kept for later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(pid, "-CONT");
    drop(resume);

    let mut events = eventually("the watch again after the hang", WAIT * 2, async || {
        let mut grpc = pod.grpc().await;
        watch(&mut grpc, "0-0", &[])
            .await
            .map_err(|s| format!("{s:?}"))
    })
    .await;
    let log = take(&mut events, 2).await;
    assert_eq!(
        log.iter().map(what).collect::<Vec<_>>(),
        [
            (EventType::Connected, None, None, None),
            (EventType::Disconnected, None, Some(1000), Some("client")),
        ]
    );
    assert!(log.iter().all(|e| e.session_id == id));
    assert_no_more(&mut events, Duration::from_secs(1)).await;
    eprintln!(
        "closed while Redis was stopped for 3s: disconnected written once, {:?} after the close",
        closed_at.elapsed()
    );
}

/// Settings for an embedded gateway with events on.
fn embedded() -> wsgate_server::settings::Settings {
    base_settings()
}

#[tokio::test]
async fn the_embedded_gateway_tells_every_way_a_session_ends() {
    let gw = Gateway::start(embedded()).await;
    let mut grpc = gw.grpc().await;
    let mut events = watch(&mut grpc, "", &[]).await.unwrap();

    // alice: subscribes, leaves the topic, closes normally.
    let (mut alice, w) = gw.connect_user("alice").await;
    let alice_id = session_id(&w);
    subscribe(&mut alice, "news").await;
    unsubscribe(&mut alice, "news").await;
    close_with(&mut alice, normal_close()).await;
    // bob: kicked through the control plane with the caller's code.
    let (mut bob, w) = gw.connect_user("bob").await;
    let bob_id = session_id(&w);
    let req = grpc.req(pb::DisconnectRequest {
        target: Some(pb::disconnect_request::Target::SessionId(bob_id.clone())),
        code: 4001,
        reason: "moved".into(),
    });
    grpc.inner.disconnect(req).await.unwrap();
    assert_eq!(close_code(&mut bob).await, Some(4001));
    // carol: the connection just breaks.
    let (carol, w) = gw.connect_user("carol").await;
    let carol_id = session_id(&w);
    drop(carol);
    // dave: a close frame without a code; he had a topic, which his end takes along.
    let (mut dave, w) = gw.connect_user("dave").await;
    let dave_id = session_id(&w);
    subscribe(&mut dave, "chat").await;
    close_with(&mut dave, None).await;

    let got = take(&mut events, 11).await;
    assert_increasing(&got);
    let of = |id: &str| {
        got.iter()
            .filter(|e| e.session_id == id)
            .map(what)
            .collect::<Vec<_>>()
    };
    let connected = (EventType::Connected, None, None, None);
    assert_eq!(
        of(&alice_id),
        [
            connected,
            (EventType::Subscribed, Some("news"), None, None),
            (EventType::Unsubscribed, Some("news"), None, None),
            (EventType::Disconnected, None, Some(1000), Some("client")),
        ]
    );
    assert_eq!(
        of(&bob_id),
        [
            connected,
            (EventType::Disconnected, None, Some(4001), Some("server"))
        ]
    );
    assert_eq!(
        of(&carol_id),
        [
            connected,
            (EventType::Disconnected, None, Some(1006), Some("transport"))
        ]
    );
    assert_eq!(
        of(&dave_id),
        [
            connected,
            (EventType::Subscribed, Some("chat"), None, None),
            (EventType::Disconnected, None, Some(1005), Some("client")),
        ]
    );
    assert!(
        got.iter()
            .all(|e| e.pod_id == "test-pod" && e.at_ms > 1_600_000_000_000)
    );

    // A filter keeps its types; the cursor still moves past the others.
    let mut closes = watch(&mut grpc, "0-0", &[EventType::Disconnected])
        .await
        .unwrap();
    let only = take(&mut closes, 4).await;
    assert!(only.iter().all(|e| e.r#type() == EventType::Disconnected));
    let want: Vec<&str> = got
        .iter()
        .filter(|e| e.r#type() == EventType::Disconnected)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(only.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), want);
    assert_no_more(&mut closes, Duration::from_millis(200)).await;
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn bad_cursors_and_types_are_refused_and_a_trimmed_cursor_is_out_of_range() {
    let mut settings = embedded();
    settings.events.max_len = 5;
    let gw = Gateway::start(settings).await;
    let mut grpc = gw.grpc().await;
    for since in ["yesterday", "1-2-3", "-1", "1-", "18446744073709551616-0"] {
        let status = watch(&mut grpc, since, &[]).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{since}: {status:?}");
        assert!(status.message().contains("since_id"), "{status:?}");
    }
    for t in [0, 99] {
        let req = grpc.req(pb::WatchEventsRequest {
            since_id: String::new(),
            types: vec![t],
        });
        let status = grpc.inner.watch_events(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "type {t}: {status:?}");
    }

    let mut events = watch(&mut grpc, "", &[]).await.unwrap();
    for i in 0..10 {
        let (mut ws, _) = gw.connect_user(&format!("t{i}")).await;
        close_with(&mut ws, normal_close()).await;
    }
    let all = take(&mut events, 20).await;
    // Behind the cap: the first 15 are gone.
    let status = watch(&mut grpc, &all[0].id, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("events.max_len = 5") && status.message().contains(&all[15].id),
        "{status:?}"
    );
    // The one before the oldest kept is not behind: it missed nothing.
    let mut kept = watch(&mut grpc, &all[14].id, &[]).await.unwrap();
    assert_eq!(take(&mut kept, 5).await, all[15..]);
    let mut oldest = watch(&mut grpc, "0-0", &[]).await.unwrap();
    assert_eq!(take(&mut oldest, 5).await, all[15..]);
    // Ahead of the log: not one of its ids.
    let (epoch, _) = all[19].id.split_once('-').unwrap();
    let status = watch(&mut grpc, &format!("{epoch}-999999"), &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("ahead"), "{status:?}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn events_off_answer_failed_precondition() {
    let mut settings = embedded();
    settings.events.enabled = false;
    let gw = Gateway::start(settings).await;
    let mut grpc = gw.grpc().await;
    let status = watch(&mut grpc, "", &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("events.enabled"), "{status:?}");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn watch_events_needs_the_api_key() {
    let gw = Gateway::start(jwt_settings()).await;
    let mut grpc = gw.grpc().await;
    let req = tonic::Request::new(pb::WatchEventsRequest::default());
    let status = grpc.inner.watch_events(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut events = watch(&mut grpc, "", &[]).await.unwrap();
    let (_ws, w) = gw.connect_token(&token("kim", None)).await;
    let e = next_event(&mut events, WAIT).await;
    assert_eq!(
        (e.r#type(), e.session_id.as_str(), e.user_id.as_str()),
        (EventType::Connected, session_id(&w).as_str(), "kim")
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let gw = Gateway::start(embedded()).await;
    let mut grpc = gw.grpc().await;
    let mut events = watch(&mut grpc, "", &[]).await.unwrap();
    let (_ws, _) = gw.connect_user("sam").await;
    assert_eq!(
        next_event(&mut events, WAIT).await.r#type(),
        EventType::Connected
    );
    let metrics = scrape(gw.http).await;
    assert_eq!(metrics.get("wsgate_event_watchers{}"), 1.0);

    let stopping = Instant::now();
    let (stopped, status) = tokio::join!(gw.stop(), async {
        // The drain's own 1001 reaches the watcher before the stream ends.
        let e = next_event(&mut events, WAIT).await;
        assert_eq!(
            what(&e),
            (EventType::Disconnected, None, Some(1001), Some("server"))
        );
        end_status(&mut events, WAIT).await
    });
    stopped.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    // Not held open by the stream: the drain (grace 2 s) is what takes time.
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
}
