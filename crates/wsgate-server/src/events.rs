//! Session events on this pod: the background writer of topic events and the reads that
//! consumers (`WatchEvents`, a long poll) make of the log.
//!
//! `connected` and `disconnected` are written by the registry, in the round trip that
//! registers or removes the session. `subscribed` and `unsubscribed` must not add a
//! round trip to a client's op, so [`Events::push`] only queues them (a bounded queue:
//! when it is full the event is dropped and counted, never waited for) and one task
//! writes them in order, in batches. The log keeps them behind the session's liveness
//! mark, so one written late — after its session's `disconnected` — is skipped rather
//! than misplaced; to make that rare, a closing session first waits (briefly) for its
//! queued events ([`Events::settle`]).
//!
//! A leaf: it knows the log and the metrics, not the node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wsgate_core::backend::{BackendError, EventLog, ReadError, SessionRecord};
use wsgate_core::events::{Event, EventId, EventKind, Since, TopicEvent};
use wsgate_core::ids::SessionId;

use crate::metrics::Metrics;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

/// Events written per log call.
const BATCH: usize = 256;

/// Longest a closing session waits for its queued topic events to be written.
const SETTLE: Duration = Duration::from_secs(1);

/// Longest [`Events::read`] waits for new events.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Most events one [`Events::read`] returns.
pub const MAX_READ: usize = 1000;

/// `events.*`, as the node runs with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOptions {
    /// Keep session events at all.
    pub enabled: bool,
    /// The log keeps at least this many of the newest events.
    pub max_len: usize,
    /// Topic events queued for writing before new ones are dropped.
    pub queue: usize,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            max_len: 100_000,
            queue: 10_000,
        }
    }
}

/// A read that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// `events.enabled` is false.
    #[error("session events are off (events.enabled = false)")]
    Disabled,
    /// Events after the cursor were trimmed or lost: the consumer must resynchronize.
    #[error(
        "events after {after} are no longer kept (the log keeps the newest events.max_len = \
         {max_len}{oldest}); resynchronize, then read from \"\" (new events) or \"0-0\" \
         (everything kept)"
    )]
    Trimmed {
        /// The cursor.
        after: EventId,
        /// `events.max_len`.
        max_len: usize,
        /// `; the oldest kept is …`, when there is one.
        oldest: OldestKept,
    },
    /// The cursor is beyond the newest event: not an id of this log.
    #[error(
        "{after} is ahead of the newest event {newest}: not an id of this event log (was it \
         reset?); resynchronize, then read from \"\" or \"0-0\""
    )]
    Ahead {
        /// The cursor.
        after: EventId,
        /// The newest id of the log.
        newest: EventId,
    },
    /// The backend cannot be reached.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The oldest event a trimmed log keeps, for the error message.
#[derive(Debug, Clone, Copy)]
pub struct OldestKept(pub Option<EventId>);

impl std::fmt::Display for OldestKept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "; the oldest kept is {id}"),
            None => Ok(()),
        }
    }
}

/// What a read found: the matching events, and the cursor to read after next time (past
/// every event the read looked at, matching or not). Serializes as the long poll's answer,
/// `{"events": [...], "next_id": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventBatch {
    /// Matching events, oldest first.
    pub events: Vec<Event>,
    /// Where the next read continues.
    pub next_id: EventId,
}

/// A queued topic event and its place in the queue.
struct Queued {
    seq: u64,
    event: TopicEvent,
}

/// The queue's sending side: the next sequence number is taken under the same lock as
/// the send, so sequence order is queue order.
struct Sender {
    tx: Option<mpsc::Sender<Queued>>,
    next: u64,
    /// Each session's last queued event, until it settles.
    last_of: HashMap<SessionId, u64>,
}

/// This pod's session events.
pub struct Events {
    log: Arc<dyn EventLog>,
    options: EventOptions,
    metrics: Arc<Metrics>,
    sender: Mutex<Sender>,
    /// The sequence number up to which queued events have been handled (written, or
    /// skipped by the log).
    flushed: watch::Receiver<u64>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Tells the writer to write what is queued and stop.
    stop_writer: CancellationToken,
    /// Ends the reads of consumers (the pod is going away).
    stop_reads: CancellationToken,
}

impl Events {
    /// Events on `log`, with the writer task started.
    pub fn start(log: Arc<dyn EventLog>, options: EventOptions, metrics: Arc<Metrics>) -> Self {
        // Every series at 0 from the start: `increase()` and `rate()` then see the first
        // event (a series born at 1 shows no increase), and the dashboards and alerts
        // that query them have something to show before anything went wrong.
        for kind in [
            EventKind::Connected,
            EventKind::Disconnected,
            EventKind::Subscribed,
            EventKind::Unsubscribed,
        ] {
            metrics.events_emitted.with_label_values(&[kind.as_str()]);
        }
        for kind in [EventKind::Subscribed, EventKind::Unsubscribed] {
            for reason in ["queue_full", "session_closed", "shutdown"] {
                metrics
                    .events_dropped
                    .with_label_values(&[kind.as_str(), reason]);
            }
        }
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let (flushed_tx, flushed) = watch::channel(0);
        let stop_writer = CancellationToken::new();
        let writer = tokio::spawn(write(
            log.clone(),
            rx,
            flushed_tx,
            metrics.clone(),
            stop_writer.clone(),
        ));
        Self {
            log,
            options,
            metrics,
            sender: Mutex::new(Sender {
                tx: Some(tx),
                next: 0,
                last_of: HashMap::new(),
            }),
            flushed,
            writer: Mutex::new(Some(writer)),
            stop_writer,
            stop_reads: CancellationToken::new(),
        }
    }

    /// The log.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Counts an event the registry wrote.
    pub fn emitted(&self, kind: EventKind, n: usize) {
        if n > 0 {
            self.metrics
                .events_emitted
                .with_label_values(&[kind.as_str()])
                .inc_by(n as u64);
        }
    }

    /// Queues the `subscribed` (or `unsubscribed`) of `record`'s session to `topic`,
    /// which happened at `at_ms`; never waits.
    pub fn push_topic(&self, record: &SessionRecord, topic: &str, subscribed: bool, at_ms: u64) {
        self.push(TopicEvent {
            subscribed,
            session_id: record.session_id.clone(),
            user_id: record.user_id.clone(),
            pod_id: record.pod_id.clone(),
            topic: topic.to_owned(),
            at_ms,
        });
    }

    /// Queues a topic event; never waits. A full queue drops it (counted).
    pub fn push(&self, event: TopicEvent) {
        let kind = event.kind();
        let mut sender = self.sender.lock();
        let seq = sender.next + 1;
        let session = event.session_id.clone();
        let Some(tx) = &sender.tx else {
            return self.dropped(kind, "shutdown");
        };
        match tx.try_send(Queued { seq, event }) {
            Ok(()) => {
                sender.next = seq;
                sender.last_of.insert(session, seq);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped(kind, "queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.dropped(kind, "shutdown"),
        }
    }

    fn dropped(&self, kind: EventKind, reason: &str) {
        self.metrics
            .events_dropped
            .with_label_values(&[kind.as_str(), reason])
            .inc();
    }

    /// Waits (at most a second) until the topic events `session` queued are handled, so
    /// that they are written before its `disconnected` is.
    pub async fn settle(&self, session: &SessionId) {
        let Some(seq) = self.sender.lock().last_of.remove(session) else {
            return;
        };
        let mut flushed = self.flushed.clone();
        if tokio::time::timeout(SETTLE, flushed.wait_for(|done| *done >= seq))
            .await
            .is_err()
        {
            tracing::debug!(%session, "topic events not written in time before the session's end");
        }
    }

    /// Writes what is queued (for at most `limit`) and stops the writer: the pod leaves.
    pub async fn stop_writer(&self, limit: Duration) {
        self.sender.lock().tx = None;
        self.stop_writer.cancel();
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let abort = writer.abort_handle();
            if tokio::time::timeout(limit, writer).await.is_err() {
                tracing::warn!("topic events still unwritten at shutdown: dropped");
                abort.abort();
            }
        }
    }

    /// Ends every consumer's read: they resume elsewhere from their last id.
    pub fn stop_reads(&self) {
        self.stop_reads.cancel();
    }

    /// Fires when the pod stops serving consumers.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stop_reads
    }

    /// Resolves where `since` starts: [`Since::New`] is the newest event now.
    pub async fn cursor(&self, since: Since) -> Result<EventId, EventsError> {
        match since {
            Since::After(id) => Ok(id),
            Since::New => Ok(self.log.newest().await?),
        }
    }

    /// The events after `since` whose kind is in `kinds` (all when empty), at most
    /// `limit` (1 ..= [`MAX_READ`]); when there are none yet, waits for them up to `wait`
    /// (at most [`MAX_WAIT`]) and answers an empty batch when none came (or the pod
    /// stops serving consumers). `next_id` is the cursor of the next read.
    pub async fn read(
        &self,
        since: Since,
        kinds: &[EventKind],
        limit: usize,
        wait: Duration,
    ) -> Result<EventBatch, EventsError> {
        let limit = limit.clamp(1, MAX_READ);
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        let mut cursor = self.cursor(since).await?;
        loop {
            let page = self
                .log
                .read(cursor, limit)
                .await
                .map_err(|e| self.read_error(cursor, e))?;
            let full = page.len() == limit;
            if let Some(last) = page.last() {
                cursor = last.id;
            }
            let events: Vec<Event> = page
                .into_iter()
                .filter(|e| kinds.is_empty() || kinds.contains(&e.kind))
                .collect();
            let now = Instant::now();
            if !events.is_empty() || now >= deadline || self.stop_reads.is_cancelled() {
                return Ok(EventBatch {
                    events,
                    next_id: cursor,
                });
            }
            if !full {
                tokio::select! {
                    () = self.log.wait(cursor, deadline - now) => {}
                    () = self.stop_reads.cancelled() => {}
                }
            }
        }
    }

    fn read_error(&self, after: EventId, e: ReadError) -> EventsError {
        match e {
            ReadError::Trimmed { oldest } => EventsError::Trimmed {
                after,
                max_len: self.options.max_len,
                oldest: OldestKept(oldest),
            },
            ReadError::Ahead { newest } => EventsError::Ahead { after, newest },
            ReadError::Backend(e) => EventsError::Backend(e),
        }
    }
}

/// The writer: takes what is queued (up to [`BATCH`] at a time) and appends it in order,
/// retrying while the backend is away (the queue fills meanwhile, and new events are
/// dropped, not waited for). On stop, writes what is left and ends.
async fn write(
    log: Arc<dyn EventLog>,
    mut rx: mpsc::Receiver<Queued>,
    flushed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            () = stop.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let events: Vec<TopicEvent> = batch.iter().map(|q| q.event.clone()).collect();
        let mut backoff = Duration::from_millis(100);
        let written = loop {
            let span = tracing::debug_span!("events.append", events = events.len());
            match log.append(&events).instrument(span).await {
                Ok(written) => break written,
                Err(e) => {
                    tracing::warn!(error = %e, queued = events.len(), "writing topic events failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        for (event, written) in events.iter().zip(written) {
            let kind = event.kind().as_str();
            if written {
                metrics.events_emitted.with_label_values(&[kind]).inc();
            } else {
                metrics
                    .events_dropped
                    .with_label_values(&[kind, "session_closed"])
                    .inc();
            }
        }
        if let Some(last) = batch.last() {
            flushed.send_replace(last.seq);
        }
        batch.clear();
    }
}
