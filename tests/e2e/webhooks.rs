//! Webhooks end to end: real `wsgate serve` pods on a real `redis-server`, real WebSocket
//! clients, and an HTTP receiver (axum) started by each test on loopback.
//!
//! - A receiver that fails the first three attempts at every event still gets every
//!   event of ten sessions that open and close, once with a 2xx each, in log order,
//!   every signature checked with an HMAC computed here.
//! - Two pods: the one delivering is SIGKILLed mid-stream; the other takes the lease and
//!   the receiver gets every event of the log, the dead pod's `pod_lost` `disconnected`s
//!   included; repeats only of events around the failover, recognised by their id.
//! - A receiver that hangs: publish latency in the same run, with a healthy receiver and
//!   with the hanging one, stays within noise, and the endpoint's overflow (it fell
//!   behind a tiny `events.max_len`) is counted.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures_util::SinkExt;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;
use wsgate_proto::pb;
use wsgate_tests::hostile::{eventually, scrape};
use wsgate_tests::pods::Pod;
use wsgate_tests::recorder::session_id;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

const HOOK_SECRET: &str = "e2e-webhook-secret-0123456789";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    body: Value,
    signed: bool,
    status: u16,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Attempts per event id so far.
    attempts: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Fail this many attempts of each event before answering 204.
    fail_first: u32,
    /// Wait this long before answering.
    delay: Duration,
    /// While set, requests never get an answer.
    hang: Arc<AtomicBool>,
}

impl Receiver {
    /// Ids answered with a 2xx, in order of arrival (repeats included).
    fn delivered(&self) -> Vec<String> {
        let got = self.got.lock();
        got.iter()
            .filter(|g| (200..300).contains(&g.status))
            .map(|g| g.id.clone())
            .collect()
    }

    fn all(&self) -> Vec<Got> {
        self.got.lock().clone()
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if r.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(r.delay).await;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let id = header("x-wsgate-event-id");
    let attempt = {
        let mut attempts = r.attempts.lock();
        let n = attempts.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let status = if attempt <= r.fail_first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    r.got.lock().push(Got {
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signed: header("x-wsgate-signature") == expected,
        status: status.as_u16(),
    });
    status
}

/// Starts `r` on loopback; returns the endpoint's URL.
async fn serve(r: &Receiver) -> String {
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

/// The pod settings of a webhook endpoint named `e2e` at `url`, plus `extra`.
fn hook_env(url: &str, extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let endpoints = json!([{ "url": url, "secret": HOOK_SECRET, "name": "e2e" }]);
    let mut env = vec![
        ("WSGATE__WEBHOOKS__ENDPOINTS", endpoints.to_string()),
        ("WSGATE__WEBHOOKS__RETRY_BACKOFF", "20ms".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

async fn start_pod(name: &str, redis: &str, env: &[(&'static str, String)]) -> Pod {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Pod::start(name, redis, &env).await
}

/// Waits until `pod` holds the endpoint's lease.
async fn holds_lease(pod: &Pod) -> bool {
    scrape(pod.http)
        .await
        .get("wsgate_webhook_lease_held{endpoint=e2e}")
        == 1.0
}

/// Opens and closes probe sessions on `pod` until the receiver has an event: from then
/// on the endpoint is served (a new endpoint starts at the newest event).
async fn wait_until_served(pod: &Pod, r: &Receiver) {
    eventually("the endpoint served", Duration::from_secs(15), async || {
        let (mut ws, _) = pod.connect_user("probe").await;
        ws.close(None).await.ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if r.delivered().is_empty() {
            Err("nothing delivered yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
}

/// Every event of the log, oldest first, through `WatchEvents` from `0-0`.
async fn log_events(pod: &Pod) -> Vec<pb::Event> {
    let mut grpc = pod.grpc().await;
    let req = grpc.req(pb::WatchEventsRequest {
        since_id: "0-0".into(),
        types: vec![],
    });
    let mut stream = grpc.inner.watch_events(req).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_millis(300), stream.message()).await
    {
        events.push(e);
    }
    events
}

async fn log_ids(pod: &Pod) -> Vec<String> {
    log_events(pod).await.into_iter().map(|e| e.id).collect()
}

/// Waits until each of `expected` was answered with a 2xx.
async fn all_delivered(r: &Receiver, expected: &[String]) {
    eventually(
        "every event delivered",
        Duration::from_secs(20),
        async || {
            let got: HashSet<String> = r.delivered().into_iter().collect();
            match expected.iter().filter(|id| !got.contains(*id)).count() {
                0 => Ok(()),
                missing => Err(format!("{missing} of {} missing", expected.len())),
            }
        },
    )
    .await;
}

/// `(epoch, n)` of an id, for ordering.
fn order(id: &str) -> (u64, u64) {
    let (ms, n) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), n.parse().unwrap())
}

/// The ids in order of first arrival, without repeats.
fn first_arrivals(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter().filter(|id| seen.insert(*id)).cloned().collect()
}

/// The log's ids from `first` on.
fn from<'a>(log: &'a [String], first: &str) -> &'a [String] {
    let start = log.iter().position(|id| id == first).unwrap();
    &log[start..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_fails_three_attempts_gets_every_event_in_order_signed() {
    const SESSIONS: usize = 10;
    let redis = RedisServer::start();
    let r = Receiver {
        fail_first: 3,
        ..Receiver::default()
    };
    let url = serve(&r).await;
    let pod = start_pod("wh-a", &redis.url(), &hook_env(&url, &[])).await;
    wait_until_served(&pod, &r).await;

    let mut opened = Vec::new();
    for i in 0..SESSIONS {
        let (mut ws, welcome) = pod.connect_user(&format!("u{i}")).await;
        opened.push(session_id(&welcome));
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws)).await
        {}
    }
    let log = eventually("every disconnected in the log", WAIT, async || {
        let log = log_ids(&pod).await;
        // Probes and the ten sessions, each a connected and a disconnected.
        if log.len() >= 2 * SESSIONS + 2 && log.len() % 2 == 0 {
            Ok(log)
        } else {
            Err(format!("{} events", log.len()))
        }
    })
    .await;
    let expected = from(&log, &r.delivered()[0]).to_vec();
    all_delivered(&r, &expected).await;

    // Each event once with a 2xx, in log order, after exactly three failed attempts.
    assert_eq!(r.delivered(), expected, "every event once, in log order");
    let all = r.all();
    for id in &expected {
        let statuses: Vec<u16> = all
            .iter()
            .filter(|g| &g.id == id)
            .map(|g| g.status)
            .collect();
        assert_eq!(statuses, [503, 503, 503, 204], "attempts at {id}");
    }
    assert!(all.iter().all(|g| g.signed), "every signature verifies");
    // The bodies are the events: each session's connected then disconnected.
    for session in &opened {
        let kinds: Vec<&str> = all
            .iter()
            .filter(|g| g.status == 204 && g.body["session_id"] == session.as_str())
            .map(|g| g.body["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["connected", "disconnected"], "session {session}");
    }
    let m = scrape(pod.http).await;
    let count = |outcome: &str| {
        m.get(&format!(
            "wsgate_webhook_deliveries_total{{endpoint=e2e,outcome={outcome}}}"
        ))
    };
    assert_eq!(count("delivered") as usize, r.delivered().len());
    assert_eq!(count("failed_attempt") as usize, 3 * r.delivered().len());
    assert_eq!(count("gave_up"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_delivering_pod_killed_mid_stream_another_delivers_every_event() {
    const PER_POD: usize = 6;
    let redis = RedisServer::start();
    let r = Receiver {
        delay: Duration::from_millis(100),
        ..Receiver::default()
    };
    let url = serve(&r).await;
    let env = hook_env(&url, &[]);
    let redis_url = redis.url();
    let (a, b) = tokio::join!(
        start_pod("wh-a", &redis_url, &env),
        start_pod("wh-b", &redis_url, &env)
    );
    wait_until_served(&a, &r).await;
    let (mut holder, mut survivor) = if holds_lease(&a).await {
        (a, b)
    } else {
        (b, a)
    };
    assert!(holds_lease(&holder).await, "one pod holds the lease");
    assert!(!holds_lease(&survivor).await, "only one");

    // Sessions on both pods connect and subscribe: a backlog the receiver works through.
    let mut on_holder = Vec::new();
    let mut on_survivor = Vec::new();
    for i in 0..PER_POD {
        for (pod, list) in [(&holder, &mut on_holder), (&survivor, &mut on_survivor)] {
            let (mut ws, _) = pod.connect_user(&format!("{}-{i}", pod.name)).await;
            send_json(&mut ws, json!({"op": "subscribe", "topic": "t"})).await;
            assert_eq!(next_json(&mut ws).await["op"], "subscribed");
            list.push(ws);
        }
    }
    // Mid-stream: some of the backlog is delivered, not all.
    let written = log_ids(&holder).await;
    let backlog = from(&written, &r.delivered()[0]).len();
    let delivered_at_kill = r.delivered().len();
    holder.kill();
    assert!(
        delivered_at_kill < backlog,
        "killed mid-stream: {delivered_at_kill} of {backlog} delivered"
    );
    drop(on_holder);
    for mut ws in on_survivor {
        ws.send(Message::Close(None)).await.ok();
    }

    // The log: the probes, 12 connected and subscribed, the survivor's 6 disconnected,
    // and the dead pod's 6 pod_lost ones, written by the survivor's reaper.
    let log = eventually(
        "the pod_lost disconnecteds",
        Duration::from_secs(10),
        async || {
            let log = log_events(&survivor).await;
            let pod_lost = log
                .iter()
                .filter(|e| e.by.as_deref() == Some("pod_lost"))
                .count();
            let closed = log
                .iter()
                .filter(|e| e.by.is_some() && e.user_id.starts_with(survivor.name.as_str()))
                .count();
            if pod_lost == PER_POD && closed >= PER_POD {
                Ok(log.into_iter().map(|e| e.id).collect::<Vec<_>>())
            } else {
                Err(format!("{pod_lost} pod_lost, {closed} closed by clients"))
            }
        },
    )
    .await;
    let expected = from(&log, &r.delivered()[0]).to_vec();
    all_delivered(&r, &expected).await;
    assert!(holds_lease(&survivor).await, "the survivor took the lease");

    let delivered = r.delivered();
    let firsts = first_arrivals(&delivered);
    assert_eq!(
        firsts, expected,
        "every event of the log, first arrivals in order"
    );
    // Repeats are the events delivered after the dead pod last stored its cursor (at most
    // about a second's worth): recognisable by their id, a few at most.
    let repeats = delivered.len() - firsts.len();
    assert!(repeats <= 40, "{repeats} repeats");
    let pod_lost = r
        .all()
        .iter()
        .filter(|g| g.body["by"] == "pod_lost" && g.status == 204)
        .map(|g| g.id.clone())
        .collect::<HashSet<_>>()
        .len();
    assert_eq!(
        pod_lost, PER_POD,
        "the dead pod's sessions, each once (by id)"
    );
    for pair in firsts.windows(2) {
        assert!(order(&pair[0]) < order(&pair[1]));
    }
    let m = scrape(survivor.http).await;
    assert!(m.get("wsgate_webhook_deliveries_total{endpoint=e2e,outcome=delivered}") > 0.0);
    survivor.kill();
}

/// Publish latencies: one subscriber on `pod`, `n` publishes through gRPC, each timed
/// until the subscriber has it. Between publishes a second session subscribes and
/// unsubscribes, so each sample also adds two events to the log.
async fn publish_latencies(pod: &Pod, n: usize, tag: &str) -> Vec<Duration> {
    let (mut sub, _) = pod.connect_user(&format!("sub-{tag}")).await;
    send_json(&mut sub, json!({"op": "subscribe", "topic": "lat"})).await;
    assert_eq!(next_json(&mut sub).await["op"], "subscribed");
    let (mut churn, _) = pod.connect_user(&format!("churn-{tag}")).await;
    let mut grpc = pod.grpc().await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        for op in ["subscribe", "unsubscribe"] {
            send_json(&mut churn, json!({"op": op, "topic": format!("c{i}")})).await;
            next_json(&mut churn).await;
        }
        let started = Instant::now();
        grpc.publish("lat", text(&format!("{tag}-{i}")))
            .await
            .unwrap();
        let got = next_json(&mut sub).await;
        samples.push(started.elapsed());
        assert_eq!(got["data"], format!("{tag}-{i}"));
    }
    samples
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_receiver_does_not_slow_sessions_and_its_overflow_is_counted() {
    const SAMPLES: usize = 40;
    // Small stream nodes, so that `MAXLEN ~ 10` trims after tens of events, not hundreds.
    let redis = RedisServer::start_with(free_port(), &["--stream-node-max-entries", "4"]);
    let r = Receiver::default();
    let url = serve(&r).await;
    let env = hook_env(
        &url,
        &[
            ("WSGATE__EVENTS__MAX_LEN", "10"),
            ("WSGATE__WEBHOOKS__TIMEOUT", "300ms"),
            ("WSGATE__WEBHOOKS__RETRY_FOR", "1s"),
        ],
    );
    let pod = start_pod("wh-hang", &redis.url(), &env).await;
    wait_until_served(&pod, &r).await;

    let healthy = publish_latencies(&pod, SAMPLES, "healthy").await;
    r.hang.store(true, Ordering::SeqCst);
    let hanging = publish_latencies(&pod, SAMPLES, "hanging").await;
    let (healthy, hanging) = (median(healthy), median(hanging));
    // Sessions only write the log: a hanging receiver changes nothing for them. The
    // bound is generous (noise on a shared machine); an endpoint that held sessions up
    // would add its 300 ms timeout to every sample.
    assert!(
        hanging.as_secs_f64() <= 5.0 * healthy.as_secs_f64(),
        "median publish latency {hanging:?} with a hanging receiver, {healthy:?} without"
    );

    // The endpoint is stuck on each event it read until it gives up (1 s); by then the
    // log has moved on past it: the events trimmed meanwhile are counted as overflow.
    // It finds out one give-up at a time, so the count grows in steps: of the ~80 events
    // of the hanging phase, the log keeps ~12 and the endpoint reads a few; at least 10
    // must end up counted.
    eventually(
        "the overflow counted",
        Duration::from_secs(20),
        async || {
            let m = scrape(pod.http).await;
            let dropped = m.get("wsgate_webhook_dropped_total{endpoint=e2e,reason=overflow}");
            if dropped >= 10.0 {
                Ok(dropped)
            } else {
                Err(format!("{dropped} dropped so far"))
            }
        },
    )
    .await;
    let m = scrape(pod.http).await;
    assert!(m.get("wsgate_webhook_deliveries_total{endpoint=e2e,outcome=gave_up}") >= 1.0);
    assert!(
        pod.stderr().contains("fell behind events.max_len"),
        "the overflow is logged"
    );
}
