//! Delivery against a real HTTP receiver on loopback (axum): signatures, retries until a
//! 2xx, giving up after `retry_for`, order per endpoint, the type filter, and a queue that
//! overflows into a counter instead of waiting.

use std::sync::atomic::AtomicU32;

use axum::Router;
use axum::body::Bytes as Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;

/// What the receiver saw: `(event id, attempt, signature header, body)` per request.
type Seen = Arc<Mutex<Vec<(String, String, String, Bytes)>>>;

/// A receiver that answers each request with `answer(request number)` after `delay`.
async fn receiver(
    answer: impl Fn(u32) -> StatusCode + Send + Sync + 'static,
    delay: Duration,
) -> (url::Url, Seen) {
    let seen: Seen = Arc::default();
    let count = Arc::new(AtomicU32::new(0));
    let answer = Arc::new(answer);
    let app = Router::new().route(
        "/hook",
        post({
            let seen = seen.clone();
            move |headers: HeaderMap, body: Body| {
                let seen = seen.clone();
                let answer = answer.clone();
                let n = count.fetch_add(1, Ordering::SeqCst);
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    seen.lock().push((
                        header("x-wsgate-event-id"),
                        header("x-wsgate-attempt"),
                        header("x-wsgate-signature"),
                        body,
                    ));
                    tokio::time::sleep(delay).await;
                    answer(n)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook").parse().unwrap(), seen)
}

fn config(url: url::Url, events: &[&str]) -> WebhookConfig {
    WebhookConfig {
        endpoints: vec![Endpoint {
            url,
            secret: b"0123456789abcdef-secret".to_vec().into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
        }],
        retry_for: Duration::from_secs(10),
        queue: 100,
        timeout: Duration::from_secs(2),
    }
}

fn event(kind: &'static str, n: u32) -> WebhookEvent {
    WebhookEvent {
        kind,
        id: format!("1-{n}"),
        body: Bytes::from(format!(r#"{{"id":"1-{n}","type":"{kind}"}}"#)),
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_event_arrives_signed_in_order_after_failed_attempts() {
    // The first three requests fail (500, 503, 404), every later one succeeds.
    let (url, seen) = receiver(
        |n| match n {
            0 => StatusCode::INTERNAL_SERVER_ERROR,
            1 => StatusCode::SERVICE_UNAVAILABLE,
            2 => StatusCode::NOT_FOUND,
            _ => StatusCode::NO_CONTENT,
        },
        Duration::ZERO,
    )
    .await;
    let metrics = Arc::new(Metrics::new());
    let hooks = Webhooks::start(&config(url.clone(), &[]), metrics.clone()).unwrap();
    for n in 0..5 {
        hooks.offer(event("connected", n), &metrics);
    }
    hooks.flush(Duration::from_secs(20)).await;

    let seen = seen.lock().clone();
    // The first event took four attempts; the rest one each, in the order offered.
    let ids: Vec<_> = seen
        .iter()
        .map(|(id, attempt, ..)| (id.clone(), attempt.clone()))
        .collect();
    let expected: Vec<_> = [("1-0", "1"), ("1-0", "2"), ("1-0", "3"), ("1-0", "4")]
        .into_iter()
        .chain((1..5).map(|n| (["1-1", "1-2", "1-3", "1-4"][n - 1], "1")))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(ids, expected);
    for (_, _, signature, body) in &seen {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef-secret").unwrap();
        mac.update(body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(signature, &expected);
    }
    let label = label(&url);
    let count = |outcome: &str| {
        metrics
            .webhook_deliveries
            .with_label_values(&[&label, outcome])
            .get()
    };
    assert_eq!(
        (
            count("delivered"),
            count("failed_attempt"),
            count("gave_up")
        ),
        (5, 3, 0)
    );
}

#[tokio::test]
async fn an_endpoint_gets_only_the_types_it_asked_for() {
    let (url, seen) = receiver(|_| StatusCode::OK, Duration::ZERO).await;
    let metrics = Arc::new(Metrics::new());
    let hooks = Webhooks::start(&config(url, &["disconnected"]), metrics.clone()).unwrap();
    hooks.offer(event("connected", 1), &metrics);
    hooks.offer(event("disconnected", 2), &metrics);
    hooks.offer(event("subscribed", 3), &metrics);
    hooks.flush(Duration::from_secs(10)).await;
    let ids: Vec<_> = seen.lock().iter().map(|s| s.0.clone()).collect();
    assert_eq!(ids, ["1-2"]);
}

#[tokio::test(start_paused = true)]
async fn an_event_is_given_up_after_retry_for() {
    let (url, seen) = receiver(|_| StatusCode::BAD_GATEWAY, Duration::ZERO).await;
    let metrics = Arc::new(Metrics::new());
    let mut cfg = config(url.clone(), &[]);
    cfg.retry_for = Duration::from_secs(60);
    let hooks = Webhooks::start(&cfg, metrics.clone()).unwrap();
    hooks.offer(event("connected", 1), &metrics);
    hooks.flush(Duration::from_secs(600)).await;
    let attempts = seen.lock().len();
    // Backoff doubles up to 30 s: a minute holds a handful of attempts, never one per tick.
    assert!((2..=40).contains(&attempts), "{attempts} attempts");
    let gave_up = metrics
        .webhook_deliveries
        .with_label_values(&[&label(&url), "gave_up"])
        .get();
    assert_eq!(gave_up, 1);
}

#[tokio::test]
async fn a_hanging_endpoint_fills_its_queue_and_offer_never_waits() {
    let (url, _seen) = receiver(|_| StatusCode::OK, Duration::from_secs(3600)).await;
    let metrics = Arc::new(Metrics::new());
    let mut cfg = config(url.clone(), &[]);
    cfg.queue = 10;
    cfg.timeout = Duration::from_secs(60);
    let hooks = Webhooks::start(&cfg, metrics.clone()).unwrap();
    let started = std::time::Instant::now();
    for n in 0..1000 {
        hooks.offer(event("connected", n), &metrics);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "offer must not wait"
    );
    let dropped = metrics
        .webhook_dropped
        .with_label_values(&[&label(&url)])
        .get();
    // One event in flight, ten queued, the rest dropped.
    assert!((988..=990).contains(&dropped), "{dropped} dropped");
    until("the first attempt to start", || {
        hooks.senders[0].pending.load(Ordering::Acquire) <= 11
    })
    .await;
}

#[test]
fn labels_hide_credentials_and_queries_and_signatures_are_hex_hmac() {
    let url: url::Url = "https://user:pw@hooks.example:8443/in?token=s3cret"
        .parse()
        .unwrap();
    assert_eq!(label(&url), "https://hooks.example:8443/in");
    let endpoint = Endpoint {
        url,
        secret: b"k".to_vec().into(),
        events: vec![],
    };
    let debug = format!("{endpoint:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("pw"),
        "{debug}"
    );
    // RFC 4231 test case 2.
    assert_eq!(
        sign(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
