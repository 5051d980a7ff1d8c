//! One endpoint's task on one pod: wait for the endpoint's lease; while holding it (renewed
//! every third of its TTL beside the delivery), read the log after the endpoint's cursor,
//! deliver each event in order and store the cursor behind them.
//!
//! The cursor is stored after each batch and at least every [`STORE_EVERY`] within one,
//! always fenced by the lease, so a pod that lost its lease cannot move its successor's
//! cursor. Whatever happens between a delivery and the next store — a crash, a lost
//! lease, a drain cut short — is delivered again by the next holder: at least once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsgate_core::backend::BackendError;
use wsgate_core::events::{EventId, Since};

use super::Endpoint;
use super::delivery::Delivery;
use crate::events::{Events, EventsError};
use crate::metrics::Metrics;

/// Events read per log call.
const BATCH: usize = 100;

/// How long one read waits for new events (a long poll: it returns at once when some
/// come).
const LONG_POLL: Duration = Duration::from_secs(30);

/// Within a batch, the cursor is stored at least this often.
const STORE_EVERY: Duration = Duration::from_secs(1);

/// An overflow is logged at most this often per endpoint (it is counted every time).
const LOG_OVERFLOW_EVERY: Duration = Duration::from_secs(10);

/// What this pod's task tells [`super::Webhooks::stop`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Progress {
    /// The pod holds the endpoint's lease.
    pub holding: bool,
    /// The endpoint is done with every event up to this id.
    pub done: EventId,
}

/// Why the pod stopped holding the lease.
enum Held {
    /// The lease lapsed or another holder took it.
    Lost(String),
    /// The pod is stopping.
    Stopped,
}

/// One endpoint's task.
pub(super) struct Feed {
    pub endpoint: Arc<Endpoint>,
    pub delivery: Delivery,
    pub events: Arc<Events>,
    pub holder: String,
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
    pub progress: tokio::sync::watch::Sender<Progress>,
    pub stop: CancellationToken,
}

/// The cursor as this holder knows it.
struct Cursor {
    /// Done with every event up to here.
    done: EventId,
    /// What the backend has (as far as this holder knows).
    stored: Option<EventId>,
    stored_at: Instant,
}

impl Feed {
    fn consumer(&self) -> String {
        format!("webhook:{}", self.endpoint.name)
    }

    /// Competes for the lease until the pod stops.
    pub async fn run(self) {
        let consumer = self.consumer();
        let label = self.endpoint.label.as_str();
        let log = self.events.log().clone();
        // The endpoint's series at 0 on every pod from the start, so that `increase()`
        // sees the first drop or give-up and `sum(wsgate_webhook_lease_held)` counts
        // the pods that compete.
        for outcome in ["delivered", "failed_attempt", "gave_up"] {
            self.metrics
                .webhook_deliveries
                .with_label_values(&[label, outcome]);
        }
        for reason in ["overflow", "reset"] {
            self.metrics
                .webhook_dropped
                .with_label_values(&[label, reason]);
        }
        // Created at 0 if absent; never reset here: the lease may already be held.
        self.metrics.webhook_lease.with_label_values(&[label]);
        self.metrics.webhook_lag.with_label_values(&[label]);
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            match log.claim(&consumer, &self.holder, self.ttl).await {
                Ok(true) => {
                    tracing::info!(endpoint = %label, "webhook endpoint: this pod delivers its events");
                    self.holding(true);
                    let held = self.hold(&consumer).await;
                    self.holding(false);
                    match held {
                        Held::Stopped => {
                            if let Err(e) = log.release(&consumer, &self.holder).await {
                                tracing::warn!(endpoint = %label, error = %e, "webhook lease not released: another pod takes over when it lapses");
                            }
                            return;
                        }
                        Held::Lost(why) => {
                            tracing::warn!(endpoint = %label, %why, "webhook lease lost: delivery stops on this pod");
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(endpoint = %label, error = %e, "webhook lease not claimed")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.ttl / 3) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    fn holding(&self, holding: bool) {
        let label = [self.endpoint.label.as_str()];
        self.metrics
            .webhook_lease
            .with_label_values(&label)
            .set(i64::from(holding));
        if !holding {
            self.metrics.webhook_lag.with_label_values(&label).set(0.0);
        }
        self.progress.send_modify(|p| p.holding = holding);
    }

    /// While the pod holds the lease: renews it beside the delivery, and ends when it is
    /// lost or the pod stops (then the cursor is stored first).
    async fn hold(&self, consumer: &str) -> Held {
        let log = self.events.log();
        let renew = async {
            loop {
                tokio::time::sleep(self.ttl / 3).await;
                match log.claim(consumer, &self.holder, self.ttl).await {
                    Ok(true) => {}
                    Ok(false) => return "another pod holds it".to_owned(),
                    Err(e) => return format!("renewing it failed: {e}"),
                }
            }
        };
        let mut cursor = Cursor {
            done: EventId::ZERO,
            stored: None,
            stored_at: Instant::now(),
        };
        let held = tokio::select! {
            why = renew => Held::Lost(why),
            why = self.deliver(consumer, &mut cursor) => Held::Lost(why),
            () = self.stop.cancelled() => Held::Stopped,
        };
        if matches!(held, Held::Stopped)
            && cursor.stored.is_some_and(|stored| stored != cursor.done)
        {
            let _ = self.store(consumer, &mut cursor).await;
        }
        held
    }

    /// Reads and delivers until the lease turns out to be lost (a fenced store refused);
    /// returns why.
    async fn deliver(&self, consumer: &str, cursor: &mut Cursor) -> String {
        let label = self.endpoint.label.as_str();
        let start = match self.start(consumer).await {
            Ok(start) => start,
            Err(why) => return why,
        };
        cursor.done = start;
        cursor.stored = Some(start);
        self.progress.send_modify(|p| p.done = start);
        let mut after = start;
        let mut overflow_logged: Option<Instant> = None;
        let mut backoff = Backoff::default();
        loop {
            let read =
                self.events
                    .read(Since::After(after), &self.endpoint.events, BATCH, LONG_POLL);
            let batch = match read.await {
                Ok(batch) => batch,
                Err(EventsError::Trimmed {
                    after: at, oldest, ..
                }) => {
                    after = self.overflowed(at, oldest.0, &mut overflow_logged);
                    cursor.done = after;
                    continue;
                }
                Err(EventsError::Ahead { after: at, newest }) => {
                    // Not an id of this log: the backend lost its data and made a new log.
                    tracing::warn!(endpoint = %label, cursor = %at, %newest, "webhook cursor is not an id of the event log (was it reset?): going on from the oldest kept event");
                    self.dropped("reset", 1);
                    after = EventId::ZERO;
                    cursor.done = after;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %label, error = %e, "webhook: reading the event log failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff = Backoff::default();
            if batch.events.is_empty() {
                self.metrics
                    .webhook_lag
                    .with_label_values(&[label])
                    .set(0.0);
            }
            for event in &batch.events {
                let lag = wsgate_core::clock::now_ms().saturating_sub(event.at_ms);
                self.metrics
                    .webhook_lag
                    .with_label_values(&[label])
                    .set(lag as f64 / 1000.0);
                self.delivery.deliver(event).await;
                cursor.done = event.id;
                self.progress.send_modify(|p| p.done = event.id);
                if cursor.stored_at.elapsed() >= STORE_EVERY
                    && let Err(why) = self.store(consumer, cursor).await
                {
                    return why;
                }
            }
            after = batch.next_id;
            cursor.done = after;
            self.progress.send_modify(|p| p.done = after);
            if cursor.stored != Some(after)
                && let Err(why) = self.store(consumer, cursor).await
            {
                return why;
            }
        }
    }

    /// Where delivery starts: the stored cursor, or (a new endpoint) the newest event,
    /// stored at once so that a takeover starts there too. `Err`: the lease is lost.
    async fn start(&self, consumer: &str) -> Result<EventId, String> {
        let mut backoff = Backoff::default();
        loop {
            match self.try_start(consumer).await {
                Ok(Some(id)) => return Ok(id),
                Ok(None) => return Err("another pod holds it".to_owned()),
                Err(e) => {
                    tracing::warn!(endpoint = %self.endpoint.label, error = %e, "webhook cursor cannot be read; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    async fn try_start(&self, consumer: &str) -> Result<Option<EventId>, BackendError> {
        let log = self.events.log();
        if let Some(id) = log.cursor(consumer).await? {
            return Ok(Some(id));
        }
        let newest = log.newest().await?;
        if !log.store_cursor(consumer, &self.holder, newest).await? {
            return Ok(None);
        }
        tracing::info!(endpoint = %self.endpoint.label, from = %newest, "webhook endpoint is new: it gets the events from now on");
        Ok(Some(newest))
    }

    /// Stores `cursor.done`, fenced by the lease; `Err`: the lease is lost. A backend
    /// error is not a lost lease: the cursor is stored with a later one.
    async fn store(&self, consumer: &str, cursor: &mut Cursor) -> Result<(), String> {
        match self
            .events
            .log()
            .store_cursor(consumer, &self.holder, cursor.done)
            .await
        {
            Ok(true) => {
                cursor.stored = Some(cursor.done);
                cursor.stored_at = Instant::now();
                Ok(())
            }
            Ok(false) => Err("another pod holds it (the cursor was not stored)".to_owned()),
            Err(e) => {
                tracing::debug!(endpoint = %self.endpoint.label, error = %e, "webhook cursor not stored; next time");
                Ok(())
            }
        }
    }

    /// Events after `at` were trimmed before the endpoint got them: counts them (exactly,
    /// within one epoch of the log; as 1 when the log itself was lost), says so, and
    /// returns where to go on.
    fn overflowed(
        &self,
        at: EventId,
        oldest: Option<EventId>,
        logged: &mut Option<Instant>,
    ) -> EventId {
        let label = self.endpoint.label.as_str();
        let same_epoch = oldest.filter(|o| o.ms == at.ms && at != EventId::ZERO);
        let (reason, lost) = match same_epoch {
            Some(o) => ("overflow", o.seq.saturating_sub(at.seq + 1).max(1)),
            None => ("reset", 1),
        };
        self.dropped(reason, lost);
        if logged.is_none_or(|t| t.elapsed() >= LOG_OVERFLOW_EVERY) {
            *logged = Some(Instant::now());
            if reason == "overflow" {
                tracing::warn!(endpoint = %label, lost, cursor = %at, "webhook endpoint fell behind events.max_len: events trimmed from the log were never sent (wsgate_webhook_dropped_total)");
            } else {
                tracing::warn!(endpoint = %label, cursor = %at, "webhook cursor is of a log that was lost: going on from the oldest kept event");
            }
        }
        before(oldest)
    }

    fn dropped(&self, reason: &str, n: u64) {
        self.metrics
            .webhook_dropped
            .with_label_values(&[self.endpoint.label.as_str(), reason])
            .inc_by(n);
    }
}

/// Where an endpoint whose cursor was trimmed goes on: right before the oldest kept
/// event (so a further trim meanwhile is noticed and counted again), or from the oldest
/// kept, whatever it is by then.
pub(super) fn before(oldest: Option<EventId>) -> EventId {
    match oldest {
        Some(id) if id.seq > 0 => EventId::new(id.ms, id.seq - 1),
        _ => EventId::ZERO,
    }
}

/// Waits between retries of a backend call: 100 ms, doubling to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}
