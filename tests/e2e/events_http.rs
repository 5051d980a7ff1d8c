//! `POST /api/v1/watch_events`, the long poll of the session events, called the way a
//! backend without gRPC calls it (reqwest on a real socket) against a real gateway:
//! it answers as soon as an event comes, pages and filters like `WatchEvents` and reads
//! the very same log (same ids, same order), answers every bad request with the
//! documented status, and lets go of a waiting poll when the pod shuts down.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgate_proto::pb;
use wsgate_tests::api::Api;
use wsgate_tests::hostile::scrape;
use wsgate_tests::recorder::session_id;
use wsgate_tests::*;

/// An embedded gateway with an API key (events are on by default).
fn settings() -> wsgate_server::settings::Settings {
    let mut s = base_settings();
    s.control.api_keys = vec![API_KEY.into()];
    s
}

/// Polls once; asserts a 200 and returns the answer's events and `next_id`.
async fn poll(api: &Api, body: Value) -> (Vec<Value>, String) {
    let answer = api.call("watch_events", &body).await;
    assert_eq!(answer.status, 200, "{body}: {answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let events = answer.json["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {answer:?}"))
        .clone();
    let next = answer.json["next_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no next_id: {answer:?}"))
        .to_owned();
    (events, next)
}

/// Every event after `since`, read in pages of `limit`.
async fn read_all(api: &Api, since: &str, limit: u64) -> Vec<Value> {
    let mut since = since.to_owned();
    let mut all = Vec::new();
    for _ in 0..100 {
        let (events, next) = poll(api, json!({"since_id": since, "limit": limit})).await;
        assert!(events.len() <= limit as usize, "{events:?}");
        if events.is_empty() {
            assert_eq!(next, since, "an empty read at the end leaves the cursor");
            return all;
        }
        since = next;
        all.extend(events);
    }
    panic!("more than 100 pages");
}

async fn subscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, json!({"op": "subscribe", "topic": topic})).await;
    assert_eq!(next_json(ws).await["op"], "subscribed");
}

#[tokio::test]
async fn a_long_poll_answers_when_an_event_comes_and_reads_what_watch_events_streams() {
    let gw = Gateway::start(settings()).await;
    let api = gw.api();

    // From "" (only new events): nothing yet, and a cursor to wait from.
    let (events, start) = poll(&api, json!({})).await;
    assert!(events.is_empty(), "{events:?}");

    // A poll waiting on that cursor answers when alice connects, long before its wait.
    let waiting = {
        let api = gw.api();
        let start = start.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let got = poll(&api, json!({"since_id": start, "wait_ms": 60_000})).await;
            (got, asked.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the poll waits for an event");
    let (mut alice, welcome) = gw.connect_user("alice").await;
    let alice_id = session_id(&welcome);
    let ((events, next), took) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting poll answers once alice connects")
        .unwrap();
    assert!(
        took < Duration::from_secs(30),
        "answered by the event, not the wait"
    );
    assert_eq!(events.len(), 1, "{events:?}");
    let connected = &events[0];
    assert_eq!(connected["id"].as_str(), Some(next.as_str()));
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["session_id"], alice_id.as_str());
    assert_eq!(connected["user_id"], "alice");
    assert_eq!(connected["pod_id"], "test-pod");
    assert!(
        connected["at_ms"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    let mut keys: Vec<&str> = connected
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["at_ms", "id", "pod_id", "session_id", "type", "user_id"],
        "a connected event has no topic, code or by"
    );

    // A type filter: the cursor still moves past the events it leaves out.
    subscribe(&mut alice, "news").await;
    alice
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            },
        )))
        .await
        .unwrap();
    assert_eq!(close_code(&mut alice).await, Some(1000));
    let (closes, after_close) = poll(
        &api,
        json!({"since_id": next, "types": ["disconnected"], "wait_ms": 10_000}),
    )
    .await;
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(
        (&closes[0]["type"], &closes[0]["code"], &closes[0]["by"]),
        (&json!("disconnected"), &json!(1000), &json!("client"))
    );
    assert_eq!(closes[0]["id"].as_str(), Some(after_close.as_str()));
    let (nothing, same) = poll(&api, json!({"since_id": after_close, "wait_ms": 300})).await;
    assert!(nothing.is_empty(), "{nothing:?}");
    assert_eq!(same, after_close);

    // Paged reads from "0-0" give exactly what WatchEvents streams from "0-0".
    let by_http = read_all(&api, "0-0", 2).await;
    let mut grpc = gw.grpc().await;
    let req = grpc.req(pb::WatchEventsRequest {
        since_id: "0-0".into(),
        types: vec![],
    });
    let mut stream = grpc.inner.watch_events(req).await.unwrap().into_inner();
    let mut by_grpc = Vec::new();
    while by_grpc.len() < by_http.len() {
        let e = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("WatchEvents streams what the long poll read")
            .unwrap()
            .unwrap();
        by_grpc.push(e);
    }
    let http_view: Vec<(String, String, Option<String>)> = by_http
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
                e["topic"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let grpc_view: Vec<(String, String, Option<String>)> = by_grpc
        .iter()
        .map(|e| {
            let kind = e.r#type().as_str_name();
            let kind = kind
                .strip_prefix("EVENT_TYPE_")
                .unwrap()
                .to_ascii_lowercase();
            (e.id.clone(), kind, e.topic.clone())
        })
        .collect();
    assert_eq!(http_view, grpc_view);
    assert_eq!(
        http_view
            .iter()
            .map(|(_, kind, topic)| (kind.as_str(), topic.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("connected", None),
            ("subscribed", Some("news")),
            ("disconnected", None)
        ]
    );
    // Handed out: 1 + 1 + 3 by polls (the empty ones count nothing), 3 by the stream.
    let metrics = scrape(gw.http).await;
    assert_eq!(metrics.get("wsgate_events_consumed_total{via=poll}"), 5.0);
    assert_eq!(metrics.get("wsgate_events_consumed_total{via=watch}"), 3.0);
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn bad_polls_get_their_documented_statuses() {
    let mut s = settings();
    s.events.max_len = 5;
    let gw = Gateway::start(s).await;
    let api = gw.api();
    for (body, code, says) in [
        (
            json!({"since_id": "yesterday"}),
            "invalid_argument",
            "since_id",
        ),
        (
            json!({"types": ["connected", "nope"]}),
            "invalid_argument",
            "nope",
        ),
        (json!({"wait_ms": 300_001}), "invalid_argument", "wait_ms"),
        (json!({"limit": 0}), "invalid_argument", "limit"),
        (json!({"limit": 1001}), "invalid_argument", "limit"),
        (json!({"since": "0-0"}), "bad_json", "since"),
        (json!({"wait_ms": "soon"}), "bad_json", "soon"),
    ] {
        let answer = api.call("watch_events", &body).await;
        answer.assert_error(400, code);
        assert!(
            answer.json["message"].as_str().unwrap().contains(says),
            "{answer:?}"
        );
    }

    // A cursor with more than five events after it, in a log that keeps five, is out of
    // range; "0-0" (everything kept) never is.
    let (first_ws, _) = gw.connect_user("first").await;
    let (events, first) = poll(&api, json!({"since_id": "0-0"})).await;
    assert_eq!(events.len(), 1, "{events:?}");
    drop(first_ws);
    for i in 0..5 {
        let (ws, _) = gw.connect_user(&format!("u{i}")).await;
        drop(ws);
    }
    let answer = api.call("watch_events", &json!({"since_id": first})).await;
    answer.assert_error(400, "out_of_range");
    assert!(
        answer.json["message"]
            .as_str()
            .unwrap()
            .contains("no longer kept"),
        "{answer:?}"
    );
    let (kept, _) = poll(&api, json!({"since_id": "0-0"})).await;
    assert!(!kept.is_empty() && kept.len() <= 5, "{kept:?}");

    // The API key, as for every method.
    let keyless = Api::plain(gw.grpc, None);
    keyless
        .call("watch_events", &json!({}))
        .await
        .assert_error(401, "unauthenticated");
    gw.stop().await.unwrap();

    let mut off = settings();
    off.events.enabled = false;
    let gw = Gateway::start(off).await;
    let answer = gw.api().call("watch_events", &json!({})).await;
    answer.assert_error(400, "failed_precondition");
    assert!(
        answer.json["message"]
            .as_str()
            .unwrap()
            .contains("events.enabled")
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_waiting_poll_is_answered_when_the_pod_shuts_down() {
    let gw = Gateway::start(settings()).await;
    let api = gw.api();
    let (_, now) = poll(&api, json!({})).await;
    let waiting = tokio::spawn(async move {
        poll(
            &api,
            json!({"since_id": now, "types": ["subscribed"], "wait_ms": 120_000}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    let (stopped, answered) = tokio::join!(gw.stop(), waiting);
    stopped.unwrap();
    let (events, _) = answered.unwrap();
    assert!(events.is_empty(), "{events:?}");
    // Released by the drain, not held for its two minutes.
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "{:?}",
        stopping.elapsed()
    );
}
