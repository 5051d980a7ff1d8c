//! Webhooks (`webhooks.*`): every session event in the log is POSTed, as its JSON object,
//! to each endpoint that wants its type, signed with `X-Wsgate-Signature: sha256=<hex
//! HMAC-SHA256 of the body, keyed by the endpoint's secret>`.
//!
//! The event log is the queue. Each endpoint is a named consumer of the log with a
//! cursor and a lease in the backend ([`wsgate_core::backend::EventLog::claim`]): every
//! pod runs a task per endpoint, and the one that holds the lease reads the log after
//! the endpoint's cursor and delivers event after event, in log order; the others wait
//! to take over. So events are delivered at least once whichever pod dies (its lease
//! lapses within `registry.pod_ttl` and another pod goes on from the stored cursor),
//! `connected` and `disconnected` written by the registry's scripts (and a reaper's
//! `pod_lost`) are delivered like any other, and sessions never wait for a webhook: they
//! only write the log. An endpoint that falls behind by more than `events.max_len` loses
//! the events trimmed from the log meanwhile; they are counted
//! (`wsgate_webhook_dropped_total{reason="overflow"}`) and the endpoint goes on from the
//! oldest kept.
//!
//! [`feed`] is one endpoint's task (lease, cursor, reads); [`delivery`] sends one event
//! (signature, headers, retries with backoff and full jitter).

mod delivery;
mod feed;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsgate_core::events::EventKind;

use self::delivery::Delivery;
pub use self::delivery::sign;
use self::feed::{Feed, Progress};
use crate::events::Events;
use crate::metrics::Metrics;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

/// `webhooks.*`, parsed.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// Where events go.
    pub endpoints: Vec<Endpoint>,
    /// The HTTP client of every endpoint (`None` without endpoints).
    pub client: Option<reqwest::Client>,
    /// How long one event is retried before it is skipped.
    pub retry_for: Duration,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// The longest wait before the first retry (full jitter, doubling).
    pub retry_backoff: Duration,
    /// How long an endpoint's lease lasts unrenewed (`registry.pod_ttl`): the longest a
    /// dead pod's endpoints wait for another pod.
    pub lease_ttl: Duration,
}

/// One endpoint, parsed.
#[derive(Clone)]
pub struct Endpoint {
    /// Its consumer name in the backend (its lease and cursor): the configured `name`,
    /// else derived from the URL.
    pub name: String,
    /// Its name in metrics and logs: the configured `name`, else the URL without
    /// credentials or query.
    pub label: String,
    /// Where its events are POSTed.
    pub url: url::Url,
    /// The HMAC-SHA256 key of its signatures.
    pub secret: Arc<[u8]>,
    /// The event types it gets; empty = all.
    pub events: Vec<EventKind>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("label", &self.label)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The endpoints' tasks on this pod.
pub struct Webhooks {
    events: Arc<Events>,
    running: Vec<(JoinHandle<()>, watch::Receiver<Progress>)>,
    stop: CancellationToken,
}

impl Webhooks {
    /// Starts a task per endpoint (on the current runtime), competing for the endpoints'
    /// leases as `pod_id`.
    pub fn start(
        config: &WebhookConfig,
        events: Arc<Events>,
        pod_id: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stop = CancellationToken::new();
        // A holder per process: a pod restarted under the same name is another holder.
        let holder = format!("{pod_id}/{}", wsgate_core::ids::message_id());
        let mut running = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let Some(client) = config.client.clone() else {
                break;
            };
            let endpoint = Arc::new(endpoint.clone());
            let (progress, watching) = watch::channel(Progress::default());
            let feed = Feed {
                delivery: Delivery {
                    endpoint: endpoint.clone(),
                    client,
                    retry_for: config.retry_for,
                    timeout: config.timeout,
                    backoff: config.retry_backoff,
                    metrics: metrics.clone(),
                },
                endpoint,
                events: events.clone(),
                holder: holder.clone(),
                ttl: config.lease_ttl,
                metrics: metrics.clone(),
                progress,
                stop: stop.clone(),
            };
            running.push((tokio::spawn(feed.run()), watching));
        }
        Self {
            events,
            running,
            stop,
        }
    }

    /// Stops delivering (the pod leaves): waits up to `catch_up` for the endpoints this
    /// pod serves to reach the newest event (so a single pod delivers its last
    /// `disconnected`s), then ends every task; each stores its cursor and releases its
    /// lease, so another pod takes over at once.
    pub async fn stop(self, catch_up: Duration) {
        let deadline = Instant::now() + catch_up;
        if let Ok(Ok(newest)) = tokio::time::timeout(catch_up, self.events.log().newest()).await {
            for (_, progress) in &self.running {
                let mut progress = progress.clone();
                let caught_up = |p: &Progress| !p.holding || p.done >= newest;
                let _ = tokio::time::timeout_at(deadline, progress.wait_for(caught_up)).await;
            }
        }
        self.stop.cancel();
        for (task, _) in self.running {
            // Storing the cursor and releasing are two backend calls, each bounded by
            // the backend's own timeout; this bound is for a backend that hangs.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}
