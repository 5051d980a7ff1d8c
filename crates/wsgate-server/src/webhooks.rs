//! Webhooks (`webhooks.*`): each session event this pod emits is POSTed, as its JSON
//! object, to every endpoint that wants its type, with `X-Wsgate-Signature: sha256=<hex
//! HMAC-SHA256 of the body>`.
//!
//! Each endpoint has its own bounded queue and one delivery task, so events reach an
//! endpoint in the order this pod emitted them and a slow or dead endpoint holds back
//! only its own queue. Sessions never wait: [`Webhooks::offer`] is a `try_send`, and an
//! event that finds the queue full is dropped, counted
//! (`wsgate_webhook_dropped_total`) and logged (at most once a second per endpoint).
//! Any 2xx answer is a delivery; anything else (another status, a timeout, a refused
//! connection) is retried with exponential backoff and full jitter until
//! `webhooks.retry_for` has passed since the first attempt, then given up, counted and
//! logged. Receivers get `X-Wsgate-Event-Id` to recognise a repeat (a 2xx that was lost
//! on the way back is retried).
//!
//! Webhooks are a convenience for backends that want a push; they live in this pod's
//! memory, so a pod that dies loses what it had not delivered yet. Backends that must
//! miss nothing read the durable event stream instead and resume from their last id.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The event types an endpoint may ask for.
pub const EVENT_TYPES: [&str; 4] = ["connected", "disconnected", "subscribed", "unsubscribed"];

/// First retry after at most this long; each further one waits up to twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// No wait between attempts is longer than this.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// `webhooks.*`, parsed.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// Where events go.
    pub endpoints: Vec<Endpoint>,
    /// How long one event is retried.
    pub retry_for: Duration,
    /// Events waiting per endpoint before new ones are dropped.
    pub queue: usize,
    /// Time limit of one attempt.
    pub timeout: Duration,
}

/// One endpoint, parsed.
#[derive(Clone)]
pub struct Endpoint {
    /// Where its events are POSTed.
    pub url: url::Url,
    /// The HMAC-SHA256 key of its signatures.
    pub secret: Arc<[u8]>,
    /// The event types it gets; empty = all.
    pub events: Vec<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &label(&self.url))
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .finish()
    }
}

/// The endpoint's name in metrics and logs: its URL without credentials or query.
fn label(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

/// An event as webhooks send it.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// Its type (one of [`EVENT_TYPES`]).
    pub kind: &'static str,
    /// Its id in the event stream (`X-Wsgate-Event-Id`).
    pub id: String,
    /// Its JSON object: the request body.
    pub body: Bytes,
}

/// The delivery side of webhooks: one queue and task per endpoint.
#[derive(Default)]
pub struct Webhooks {
    senders: Vec<Sender>,
}

struct Sender {
    label: String,
    events: Vec<String>,
    queue: mpsc::Sender<Arc<WebhookEvent>>,
    /// Events queued or being delivered.
    pending: Arc<AtomicUsize>,
    /// When an overflow was last logged.
    overflow_logged: Mutex<Option<Instant>>,
}

impl Webhooks {
    /// Starts a delivery task per endpoint (on the current runtime); none without
    /// endpoints.
    pub fn start(config: &WebhookConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut senders = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let client = crate::http_client::pooled(endpoint.url.scheme() == "https")
                .map_err(|e| format!("webhook {}: {e}", label(&endpoint.url)))?;
            let (queue, rx) = mpsc::channel(config.queue.max(1));
            let pending = Arc::new(AtomicUsize::new(0));
            let delivery = Delivery {
                endpoint: endpoint.clone(),
                label: label(&endpoint.url),
                client,
                retry_for: config.retry_for,
                timeout: config.timeout,
                metrics: metrics.clone(),
                pending: pending.clone(),
            };
            tokio::spawn(delivery.run(rx));
            senders.push(Sender {
                label: label(&endpoint.url),
                events: endpoint.events.clone(),
                queue,
                pending,
                overflow_logged: Mutex::new(None),
            });
        }
        Ok(Self { senders })
    }

    /// Whether any endpoint is configured.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Queues `event` for every endpoint that wants its type; never waits. A full queue
    /// drops the event for that endpoint and counts it.
    pub fn offer(&self, event: WebhookEvent, metrics: &Metrics) {
        let event = Arc::new(event);
        for sender in &self.senders {
            if !sender.events.is_empty() && !sender.events.iter().any(|e| e == event.kind) {
                continue;
            }
            sender.pending.fetch_add(1, Ordering::AcqRel);
            if sender.queue.try_send(event.clone()).is_err() {
                sender.pending.fetch_sub(1, Ordering::AcqRel);
                metrics
                    .webhook_dropped
                    .with_label_values(&[&sender.label])
                    .inc();
                let mut logged = sender.overflow_logged.lock();
                if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    *logged = Some(Instant::now());
                    tracing::warn!(
                        endpoint = %sender.label,
                        event = %event.id,
                        "webhook queue full: event dropped (see wsgate_webhook_dropped_total)"
                    );
                }
            }
        }
    }

    /// Waits until every queued event was delivered or given up, for at most `within`
    /// (a draining pod sends its last `disconnected` events before it exits).
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self
            .senders
            .iter()
            .any(|s| s.pending.load(Ordering::Acquire) > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One endpoint's delivery task.
struct Delivery {
    endpoint: Endpoint,
    label: String,
    client: reqwest::Client,
    retry_for: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicUsize>,
}

impl Delivery {
    async fn run(self, mut queue: mpsc::Receiver<Arc<WebhookEvent>>) {
        while let Some(event) = queue.recv().await {
            self.deliver(&event).await;
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Sends one event until a 2xx answers or `retry_for` has passed.
    async fn deliver(&self, event: &WebhookEvent) {
        let signature = format!("sha256={}", sign(&self.endpoint.secret, &event.body));
        let started = Instant::now();
        for attempt in 1u32.. {
            let outcome = self
                .client
                .post(self.endpoint.url.clone())
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .header("x-wsgate-signature", &signature)
                .header("x-wsgate-event", event.kind)
                .header("x-wsgate-event-id", &event.id)
                .header("x-wsgate-attempt", attempt)
                .body(event.body.clone())
                .send()
                .await;
            let failure = match outcome {
                Ok(response) if response.status().is_success() => {
                    self.count("delivered");
                    self.metrics
                        .webhook_latency
                        .with_label_values(&[&self.label])
                        .observe(started.elapsed().as_secs_f64());
                    return;
                }
                Ok(response) => format!("status {}", response.status().as_u16()),
                Err(e) if e.is_timeout() => format!("no answer within {:?}", self.timeout),
                Err(e) => format!("{e}"),
            };
            self.count("failed_attempt");
            let delay = backoff(attempt - 1);
            if started.elapsed() + delay > self.retry_for {
                self.count("gave_up");
                tracing::warn!(
                    endpoint = %self.label,
                    event = %event.id,
                    attempts = attempt,
                    last_error = %failure,
                    "webhook given up after webhooks.retry_for"
                );
                return;
            }
            tracing::debug!(endpoint = %self.label, event = %event.id, attempt, error = %failure, "webhook attempt failed");
            tokio::time::sleep(delay).await;
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .webhook_deliveries
            .with_label_values(&[&self.label, outcome])
            .inc();
    }
}

/// Hex HMAC-SHA256 of `body` keyed by `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `random(0, min(cap, base * 2^attempt))`.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
