//! Webhooks fed from the in-memory event log, against a real HTTP receiver on loopback
//! (axum): signatures, retries until a 2xx in log order, giving up after `retry_for`,
//! the type filter, one lease holder at a time with a clean hand-over, and an endpoint
//! that falls behind the cap counting exactly what it lost.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use wsgate_core::backend::memory::MemoryRegistry;
use wsgate_core::backend::memory_events::MemoryEventLog;
use wsgate_core::backend::{EventLog, Registry, SessionRecord};
use wsgate_core::events::{Closed, ClosedBy, EventId};
use wsgate_core::ids::SessionId;

use super::delivery::backoff;
use super::feed::before;
use super::*;
use crate::events::EventOptions;

const SECRET: &[u8] = b"0123456789abcdef-secret";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Request {
    id: String,
    attempt: u32,
    kind: String,
    signature: String,
    body: Bytes,
    /// What the receiver answered.
    status: StatusCode,
}

/// The receiver's answer to an event's attempt: `(event, attempt) -> status`.
type Answer = dyn Fn(&serde_json::Value, u32) -> StatusCode + Send + Sync;

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<Request>>>,
    answer: Arc<Answer>,
    /// While set, requests wait for a permit before answering.
    gate: Option<Arc<Semaphore>>,
}

impl Receiver {
    fn seen(&self) -> Vec<Request> {
        self.seen.lock().clone()
    }

    /// Ids answered with a 2xx, in order.
    fn delivered(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|r| r.status.is_success())
            .map(|r| r.id)
            .collect()
    }
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, attempt) = (header("x-wsgate-event-id"), header("x-wsgate-attempt"));
    let attempt: u32 = attempt.parse().unwrap();
    if let Some(gate) = &r.gate {
        gate.acquire().await.unwrap().forget();
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let status = (r.answer)(&event, attempt);
    r.seen.lock().push(Request {
        id,
        attempt,
        kind: header("x-wsgate-event"),
        signature: header("x-wsgate-signature"),
        body,
        status,
    });
    status
}

async fn receiver(
    answer: impl Fn(&serde_json::Value, u32) -> StatusCode + Send + Sync + 'static,
    gate: Option<Arc<Semaphore>>,
) -> (url::Url, Receiver) {
    let r = Receiver {
        seen: Arc::default(),
        answer: Arc::new(answer),
        gate,
    };
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook").parse().unwrap(), r)
}

/// A log, the registry that writes its `connected`/`disconnected`, and the pod's events.
struct World {
    log: Arc<MemoryEventLog>,
    registry: Arc<MemoryRegistry>,
    events: Arc<Events>,
    metrics: Arc<Metrics>,
}

fn world(max_len: usize) -> World {
    let log = MemoryEventLog::new(max_len);
    let metrics = Arc::new(Metrics::new());
    let options = EventOptions {
        max_len,
        ..EventOptions::default()
    };
    World {
        registry: MemoryRegistry::with_events(log.clone()),
        events: Arc::new(Events::start(log.clone(), options, metrics.clone())),
        log,
        metrics,
    }
}

impl World {
    /// A session opens and closes: two events.
    async fn session(&self, user: &str) {
        let record = SessionRecord {
            session_id: SessionId::generate(),
            user_id: user.to_owned(),
            pod_id: "pod-x".to_owned(),
            connected_at_ms: 1,
            remote_addr: "127.0.0.1".to_owned(),
        };
        assert!(self.registry.add_session(&record, 0).await.unwrap());
        let closed = Closed {
            code: 1000,
            by: ClosedBy::Client,
            at_ms: 2,
        };
        assert!(
            self.registry
                .remove_session(&record, &closed)
                .await
                .unwrap()
        );
    }

    async fn ids(&self) -> Vec<String> {
        let all = self.log.read(EventId::ZERO, 1000).await.unwrap();
        all.iter().map(|e| e.id.to_string()).collect()
    }

    fn start(&self, config: &WebhookConfig, pod: &str) -> Webhooks {
        Webhooks::start(config, self.events.clone(), pod, self.metrics.clone())
    }

    fn count(&self, outcome: &str) -> u64 {
        self.metrics
            .webhook_deliveries
            .with_label_values(&["hook", outcome])
            .get()
    }

    fn held(&self) -> i64 {
        self.metrics
            .webhook_lease
            .with_label_values(&["hook"])
            .get()
    }
}

fn config(url: url::Url, events: &[EventKind]) -> WebhookConfig {
    WebhookConfig {
        endpoints: vec![Endpoint {
            name: "hook".to_owned(),
            label: "hook".to_owned(),
            url,
            secret: SECRET.into(),
            events: events.to_vec(),
        }],
        client: Some(crate::http_client::pooled(false).unwrap()),
        retry_for: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(10),
        lease_ttl: Duration::from_millis(600),
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until some pod serves the endpoint and has stored where it starts.
async fn serving(w: &World) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.log.cursor("webhook:hook").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no pod took the endpoint");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_event_arrives_signed_in_log_order_after_three_failed_attempts() {
    let w = world(1000);
    let (url, r) = receiver(
        |_, attempt| match attempt {
            1 => StatusCode::INTERNAL_SERVER_ERROR,
            2 => StatusCode::SERVICE_UNAVAILABLE,
            3 => StatusCode::NOT_FOUND,
            _ => StatusCode::NO_CONTENT,
        },
        None,
    )
    .await;
    let hooks = w.start(&config(url, &[]), "pod-a");
    serving(&w).await;
    for i in 0..4 {
        w.session(&format!("u{i}")).await;
    }
    let ids = w.ids().await;
    assert_eq!(ids.len(), 8);
    until("every event", || r.delivered().len() == 8).await;
    assert_eq!(r.delivered(), ids, "each event once, in log order");

    let seen = r.seen();
    assert_eq!(seen.len(), 32, "four attempts per event");
    for (n, req) in seen.iter().enumerate() {
        assert_eq!(req.id, ids[n / 4]);
        assert_eq!(req.attempt as usize, n % 4 + 1);
        assert_eq!(req.signature, format!("sha256={}", sign(SECRET, &req.body)));
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["id"], req.id.as_str(), "the body is the event");
        assert_eq!(body["type"], req.kind.as_str());
        assert_eq!(body["pod_id"], "pod-x");
    }
    // The receiver records a delivery before the sender has its answer and counts it.
    until("the last delivery counted", || w.count("delivered") == 8).await;
    assert_eq!(
        (
            w.count("delivered"),
            w.count("failed_attempt"),
            w.count("gave_up")
        ),
        (8, 24, 0)
    );
    assert_eq!(w.held(), 1);
    hooks.stop(Duration::from_secs(1)).await;
    assert_eq!(w.held(), 0);
    assert_eq!(
        w.log
            .cursor("webhook:hook")
            .await
            .unwrap()
            .map(|c| c.to_string()),
        ids.last().cloned(),
        "the cursor is behind the last event"
    );
}

#[tokio::test]
async fn an_event_is_given_up_after_retry_for_and_the_next_one_follows() {
    let w = world(1000);
    // Every attempt at user a's events fails.
    let (url, r) = receiver(
        |event, _| {
            if event["user_id"] == "a" {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            }
        },
        None,
    )
    .await;
    let mut cfg = config(url, &[EventKind::Connected]);
    cfg.retry_for = Duration::from_secs(1);
    let hooks = w.start(&cfg, "pod-a");
    serving(&w).await;
    // The first connected fails for good; its disconnected is not asked for.
    w.session("a").await;
    w.session("b").await;
    until("the second connected", || r.delivered().len() == 1).await;
    let ids = w.ids().await;
    assert_eq!(r.delivered(), [ids[2].clone()], "b's connected only");
    let attempts = r.seen().iter().filter(|q| q.id == ids[0]).count();
    assert!((2..=40).contains(&attempts), "{attempts} attempts in 1 s");
    assert_eq!(w.count("gave_up"), 1);
    assert!(r.seen().iter().all(|q| q.kind == "connected"));
    hooks.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn one_pod_delivers_at_a_time_and_a_stopped_pod_hands_over_without_repeats() {
    let w = world(1000);
    let (url, r) = receiver(|_, _| StatusCode::OK, None).await;
    let cfg = config(url, &[]);
    let a = w.start(&cfg, "pod-a");
    let b = w.start(&cfg, "pod-b");
    serving(&w).await;
    for i in 0..5 {
        w.session(&format!("u{i}")).await;
    }
    until("the first ten", || r.delivered().len() == 10).await;
    // Both pods' tasks count in the same metrics here: exactly one holds the lease.
    assert_eq!(w.held(), 1);
    a.stop(Duration::from_secs(1)).await;
    b.stop(Duration::from_secs(1)).await;

    // Whichever held it stored its cursor and let go: a new pod goes on from there.
    let c = w.start(&cfg, "pod-c");
    for i in 5..8 {
        w.session(&format!("u{i}")).await;
    }
    until("the rest", || r.delivered().len() == 16).await;
    assert_eq!(r.delivered(), w.ids().await, "every event once, in order");
    c.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_endpoint_behind_the_cap_counts_the_events_it_lost_and_goes_on() {
    let w = world(5);
    let gate = Arc::new(Semaphore::new(0));
    let (url, r) = receiver(|_, _| StatusCode::OK, Some(gate.clone())).await;
    let hooks = w.start(&config(url, &[]), "pod-a");
    serving(&w).await;
    // The first event's request hangs; meanwhile 20 more events push all but the newest
    // five out of the log.
    w.session("first").await;
    let first = w.log.read(EventId::ZERO, 10).await.unwrap()[0].id;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..10 {
        w.session(&format!("u{i}")).await;
    }
    let kept = w.ids().await;
    assert_eq!(kept.len(), 5);
    gate.add_permits(1000);
    until("the kept events", || r.delivered().ends_with(&kept)).await;
    let delivered = r.delivered();
    // The request in flight (the first event) and its batch went out, then the kept five.
    assert_eq!(delivered[0], first.to_string());
    let newest: EventId = kept[4].parse().unwrap();
    let dropped = w
        .metrics
        .webhook_dropped
        .with_label_values(&["hook", "overflow"])
        .get();
    assert_eq!(
        delivered.len() as u64 + dropped,
        newest.seq - first.seq + 1,
        "every event was delivered or counted as lost: {delivered:?}, {dropped} dropped"
    );
    assert!(dropped >= 10, "{dropped}");
    hooks.stop(Duration::from_secs(1)).await;
}

#[test]
fn signatures_are_hex_hmac_sha256() {
    // RFC 4231, test case 2.
    assert_eq!(
        sign(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn backoff_is_full_jitter_doubling_up_to_the_cap() {
    let base = Duration::from_millis(500);
    for attempt in 1..40 {
        let ceiling = (base * 2u32.pow((attempt - 1).min(10))).min(Duration::from_secs(30));
        for _ in 0..50 {
            assert!(backoff(base, attempt) <= ceiling, "attempt {attempt}");
        }
    }
    // Random, not fixed: 200 draws of the first wait are not all alike.
    let draws: std::collections::BTreeSet<Duration> = (0..200).map(|_| backoff(base, 1)).collect();
    assert!(draws.len() > 100);
    // A base above the cap is its own cap.
    assert!(backoff(Duration::from_secs(60), 5) <= Duration::from_secs(60));
}

#[test]
fn a_trimmed_cursor_goes_on_right_before_the_oldest_kept() {
    assert_eq!(before(Some(EventId::new(7, 10))), EventId::new(7, 9));
    assert_eq!(before(Some(EventId::new(7, 0))), EventId::ZERO);
    assert_eq!(before(None), EventId::ZERO);
}

#[test]
fn debug_output_hides_the_secret() {
    let cfg = config("http://u:pw@127.0.0.1:1/h?t=s3cret".parse().unwrap(), &[]);
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("0123456789abcdef"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}
