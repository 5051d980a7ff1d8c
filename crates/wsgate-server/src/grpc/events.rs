//! `WatchEvents`: session events from a cursor, then live, as a server stream.
//!
//! The arguments and the cursor are checked before the call is answered, so a bad
//! `since_id` (INVALID_ARGUMENT), a trimmed or foreign cursor (OUT_OF_RANGE) or events
//! being off (FAILED_PRECONDITION) is the call's status, not a stream that ends at once.
//! "Only new events" is resolved at that moment too: every event added after the caller
//! has the response headers is delivered. Then one task per stream long-polls the log
//! through [`crate::events::Events::read`] and feeds the stream; the caller's pace is the
//! stream's (a slow caller holds only its own task), and a caller that falls behind the
//! cap gets OUT_OF_RANGE where the gap would be.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};
use tracing::Instrument;
use wsgate_core::events::{Event, EventKind, Since};
use wsgate_proto::pb;

use crate::events::{EventBatch, Events, EventsError};
use crate::metrics::Metrics;

/// The stream `WatchEvents` answers with.
pub type WatchStream = ReceiverStream<Result<pb::Event, Status>>;

/// Events read per page, and queued per stream ahead of the caller.
const PAGE: usize = 256;

/// How long one long poll of the log waits for new events before looking again.
const POLL: Duration = Duration::from_secs(30);

/// How long the final status waits for room in a stream the caller does not read.
const LAST_WORD: Duration = Duration::from_millis(500);

/// Starts a watch: checks the request and the cursor, then streams.
pub async fn watch(
    events: Option<&Arc<Events>>,
    metrics: &Arc<Metrics>,
    req: pb::WatchEventsRequest,
) -> Result<Response<WatchStream>, Status> {
    let since: Since = req.since_id.parse().map_err(|_| {
        Status::invalid_argument(
            "since_id must be empty (only new events), \"0-0\" (everything kept) or the id of \
             an event, such as \"1718000000000-3\"",
        )
    })?;
    let kinds = kinds(&req.types)?;
    let events = events.ok_or_else(|| status(EventsError::Disabled))?.clone();
    let cursor = events.cursor(since).await.map_err(status)?;
    let first = events
        .read(Since::After(cursor), &kinds, PAGE, Duration::ZERO)
        .await
        .map_err(status)?;
    let (tx, rx) = mpsc::channel(PAGE);
    let span = tracing::info_span!(
        "events.watch",
        wsgate.events.since = %req.since_id,
        wsgate.events.types = ?kinds,
        wsgate.events.sent = tracing::field::Empty,
        wsgate.events.end = tracing::field::Empty,
    );
    let watcher = Watcher {
        events,
        kinds,
        tx,
        open: Open::new(metrics.clone()),
    };
    tokio::spawn(watcher.run(first).instrument(span));
    Ok(Response::new(ReceiverStream::new(rx)))
}

/// Counts an open stream in `wsgate_event_watchers` while it lives.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.event_watchers.inc();
        Self(metrics)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.event_watchers.dec();
    }
}

/// One stream's task.
struct Watcher {
    events: Arc<Events>,
    kinds: Vec<EventKind>,
    tx: mpsc::Sender<Result<pb::Event, Status>>,
    open: Open,
}

impl Watcher {
    async fn run(self, first: EventBatch) {
        let mut sent = 0u64;
        let end = self.pump(first, &mut sent).await;
        let span = tracing::Span::current();
        span.record("wsgate.events.sent", sent);
        span.record("wsgate.events.end", end);
    }

    /// Feeds the stream until it ends; says why it ended.
    async fn pump(&self, mut batch: EventBatch, sent: &mut u64) -> &'static str {
        let stopping = self.events.stopping();
        loop {
            for event in batch.events.drain(..) {
                tokio::select! {
                    biased;
                    () = stopping.cancelled() => return self.shutdown().await,
                    res = self.tx.send(Ok(event_pb(event))) => {
                        if res.is_err() {
                            return "caller_gone";
                        }
                        *sent += 1;
                        self.open.0.events_consumed.with_label_values(&["watch"]).inc();
                    }
                }
            }
            if stopping.is_cancelled() {
                return self.shutdown().await;
            }
            let since = Since::After(batch.next_id);
            batch = tokio::select! {
                read = self.events.read(since, &self.kinds, PAGE, POLL) => match read {
                    Ok(batch) => batch,
                    Err(e) => {
                        let end = match e {
                            EventsError::Trimmed { .. } | EventsError::Ahead { .. } => "trimmed",
                            _ => "unavailable",
                        };
                        self.last_word(status(e)).await;
                        return end;
                    }
                },
                () = self.tx.closed() => return "caller_gone",
            };
        }
    }

    async fn shutdown(&self) -> &'static str {
        self.last_word(Status::unavailable(
            "the pod is shutting down: watch again, from the id of the last event received, \
             on another pod",
        ))
        .await;
        "shutdown"
    }

    /// Ends the stream with `status` (unless the caller does not make room for it soon).
    async fn last_word(&self, status: Status) {
        let _ = tokio::time::timeout(LAST_WORD, self.tx.send(Err(status))).await;
    }
}

/// The event types a request names; none = every type.
fn kinds(types: &[i32]) -> Result<Vec<EventKind>, Status> {
    types
        .iter()
        .map(|t| match pb::EventType::try_from(*t) {
            Ok(pb::EventType::Connected) => Ok(EventKind::Connected),
            Ok(pb::EventType::Disconnected) => Ok(EventKind::Disconnected),
            Ok(pb::EventType::Subscribed) => Ok(EventKind::Subscribed),
            Ok(pb::EventType::Unsubscribed) => Ok(EventKind::Unsubscribed),
            Ok(pb::EventType::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
                "types: {t} is not an event type (1 connected, 2 disconnected, 3 subscribed, \
                 4 unsubscribed)"
            ))),
        })
        .collect()
}

/// The status of a read that cannot be answered (gRPC and the HTTP long poll alike).
pub fn status(e: EventsError) -> Status {
    match e {
        EventsError::Disabled => Status::failed_precondition(e.to_string()),
        EventsError::Trimmed { .. } | EventsError::Ahead { .. } => {
            Status::out_of_range(e.to_string())
        }
        EventsError::Backend(_) => Status::unavailable(format!(
            "{e}; watch again from the id of the last event received"
        )),
    }
}

/// An event as the gRPC contract has it.
pub fn event_pb(e: Event) -> pb::Event {
    let kind = match e.kind {
        EventKind::Connected => pb::EventType::Connected,
        EventKind::Disconnected => pb::EventType::Disconnected,
        EventKind::Subscribed => pb::EventType::Subscribed,
        EventKind::Unsubscribed => pb::EventType::Unsubscribed,
    };
    pb::Event {
        id: e.id.to_string(),
        r#type: kind as i32,
        at_ms: e.at_ms,
        session_id: e.session_id,
        user_id: e.user_id,
        pod_id: e.pod_id,
        topic: e.topic,
        code: e.code.map(u32::from),
        by: e.by.map(|b| b.as_str().to_owned()),
    }
}
