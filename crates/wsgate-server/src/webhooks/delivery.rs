//! Sending one event to one endpoint: `POST` of the event's JSON object with its
//! signature and headers, retried until a 2xx answers or `webhooks.retry_for` has passed.
//!
//! Any 2xx is a delivery; anything else (another status, no answer within
//! `webhooks.timeout`, a refused connection) is retried after a random wait between 0 and
//! `retry_backoff · 2^(attempt-1)`, at most 30 s ("full jitter": receivers that failed
//! together do not get their retries together). Each event runs in a `webhook.deliver`
//! client span whose `traceparent` goes with the request.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::Instant;
use tracing::Instrument;
use wsgate_core::events::Event;

use super::Endpoint;
use crate::metrics::Metrics;

/// No wait between attempts is longer than this (unless `retry_backoff` is).
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// One endpoint's sender.
pub(super) struct Delivery {
    pub endpoint: Arc<Endpoint>,
    pub client: reqwest::Client,
    pub retry_for: Duration,
    pub timeout: Duration,
    pub backoff: Duration,
    pub metrics: Arc<Metrics>,
}

impl Delivery {
    /// Sends `event` until a 2xx answers (`true`) or `retry_for` has passed (`false`:
    /// given up, counted and logged).
    pub async fn deliver(&self, event: &Event) -> bool {
        let span = tracing::info_span!(
            "webhook.deliver",
            otel.kind = "client",
            wsgate.endpoint = %self.endpoint.label,
            event.id = %event.id,
            event.r#type = %event.kind,
            http.request.method = "POST",
            attempts = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            wsgate.outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        self.attempts(event, span.clone()).instrument(span).await
    }

    async fn attempts(&self, event: &Event, span: tracing::Span) -> bool {
        let label = self.endpoint.label.as_str();
        let body = match serde_json::to_vec(event) {
            Ok(body) => bytes::Bytes::from(body),
            // Strings and numbers always serialize: a failure, not a panic.
            Err(e) => {
                tracing::error!(endpoint = %label, event = %event.id, error = %e, "webhook event cannot be encoded: skipped");
                self.count("gave_up");
                return false;
            }
        };
        let signature = format!("sha256={}", sign(&self.endpoint.secret, &body));
        let traceparent = crate::propagation::inject();
        let id = event.id.to_string();
        let started = Instant::now();
        for attempt in 1u32.. {
            let mut request = self
                .client
                .post(self.endpoint.url.clone())
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .header("x-wsgate-signature", &signature)
                .header("x-wsgate-event", event.kind.as_str())
                .header("x-wsgate-event-id", &id)
                .header("x-wsgate-attempt", attempt)
                .body(body.clone());
            if let Some(traceparent) = &traceparent {
                request = request.header("traceparent", traceparent);
            }
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    span.record("attempts", attempt);
                    span.record("http.response.status_code", response.status().as_u16());
                    span.record("wsgate.outcome", "delivered");
                    self.count("delivered");
                    self.metrics
                        .webhook_seconds
                        .with_label_values(&[label])
                        .observe(started.elapsed().as_secs_f64());
                    return true;
                }
                Ok(response) => {
                    span.record("http.response.status_code", response.status().as_u16());
                    format!("status {}", response.status().as_u16())
                }
                Err(e) if e.is_timeout() => format!("no answer within {:?}", self.timeout),
                // Without the URL: it may carry credentials.
                Err(e) => e.without_url().to_string(),
            };
            self.count("failed_attempt");
            let delay = backoff(self.backoff, attempt);
            if started.elapsed() + delay > self.retry_for {
                span.record("attempts", attempt);
                span.record("wsgate.outcome", "gave_up");
                span.record("otel.status_code", "ERROR");
                self.count("gave_up");
                tracing::warn!(
                    endpoint = %label,
                    event = %event.id,
                    attempts = attempt,
                    last_error = %failure,
                    "webhook event given up after webhooks.retry_for"
                );
                return false;
            }
            tracing::debug!(endpoint = %label, event = %event.id, attempt, error = %failure, "webhook attempt failed");
            tokio::time::sleep(delay).await;
        }
        false
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .webhook_deliveries
            .with_label_values(&[self.endpoint.label.as_str(), outcome])
            .inc();
    }
}

/// Hex HMAC-SHA256 of `body` keyed by `secret`: the `X-Wsgate-Signature` value after
/// `sha256=`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The wait after failed attempt number `attempt` (1, 2, …): random in
/// `[0, min(cap, base · 2^(attempt-1))]`, the cap being 30 s or `base` if longer.
pub(super) fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(BACKOFF_CAP.max(base));
    ceiling.mul_f64(rand::random::<f64>())
}
