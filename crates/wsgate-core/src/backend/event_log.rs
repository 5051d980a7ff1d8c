//! The session event log: a capped, durable log of [`Event`]s that consumers read from a
//! cursor.
//!
//! `connected` and `disconnected` are not appended through this trait: the registry
//! writes them itself, each in the same atomic step as the session's liveness mark in the
//! log (set when the session registers, removed when it is removed or reaped), so every
//! `connected` gets exactly one `disconnected` — from its own pod, or from the pod that
//! reaps it — and nothing of a session can be written after its `disconnected`.
//! [`EventLog::append`] adds the topic changes, which a pod queues and writes in the
//! background, and keeps them behind that mark.
//!
//! Consumers that the gateway runs itself (webhook endpoints) keep their place in the
//! backend too, so that any pod can take over from where the last one stopped: a named
//! consumer has a lease ([`EventLog::claim`], one holder at a time, for a TTL) and a
//! cursor that only the lease's holder can move ([`EventLog::store_cursor`], checked in
//! the same atomic step as the write). A holder that lost its lease — it stalled past
//! the TTL and another pod took over — cannot move the new holder's cursor back.

use std::time::Duration;

use async_trait::async_trait;

use super::BackendError;
use crate::events::{Event, EventId, TopicEvent};

/// Why a read could not continue from its cursor.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Events after the cursor were trimmed from the log (it keeps only the newest
    /// `events.max_len`), or lost with the backend's data: the consumer missed some and
    /// must resynchronize. `oldest` is the oldest event still kept, if any.
    #[error("events after the cursor are no longer kept")]
    Trimmed {
        /// The oldest event the log still keeps.
        oldest: Option<EventId>,
    },
    /// The cursor is after the newest event: it is not an id of this log (a log that
    /// was reset, or an id from elsewhere).
    #[error("the cursor is ahead of the newest event {newest}")]
    Ahead {
        /// The newest id the log has made.
        newest: EventId,
    },
    /// The backend cannot be reached.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The log of session events.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends topic changes in the order given, each only while its session is live in
    /// the log (after its `connected`, before its `disconnected`); the others are
    /// skipped. Returns, for each event, whether it was written.
    async fn append(&self, events: &[TopicEvent]) -> Result<Vec<bool>, BackendError>;

    /// The id of the newest event ever added ([`EventId::ZERO`] for an empty log): the
    /// cursor of a consumer that wants only new events.
    async fn newest(&self) -> Result<EventId, BackendError>;

    /// Up to `limit` events with an id above `after`, oldest first. `after` =
    /// [`EventId::ZERO`] reads from the oldest kept event and is never trimmed; any other
    /// cursor fails with [`ReadError::Trimmed`] when an event after it is no longer kept,
    /// and with [`ReadError::Ahead`] when it is beyond the newest event.
    async fn read(&self, after: EventId, limit: usize) -> Result<Vec<Event>, ReadError>;

    /// Returns once an event above `after` may have been added, or after `timeout`
    /// (whichever is first; spurious returns are allowed, callers read again).
    async fn wait(&self, after: EventId, timeout: Duration);

    /// Takes the lease of `consumer` for `holder` when nobody holds it, or renews it when
    /// `holder` does; either way it lasts `ttl` from now. `false`: another holder has it.
    async fn claim(
        &self,
        consumer: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError>;

    /// Gives up the lease of `consumer` if `holder` holds it (another pod may take it at
    /// once); nothing otherwise.
    async fn release(&self, consumer: &str, holder: &str) -> Result<(), BackendError>;

    /// The cursor `consumer` stored last, if any.
    async fn cursor(&self, consumer: &str) -> Result<Option<EventId>, BackendError>;

    /// Stores `id` as the cursor of `consumer`, only while `holder` holds its lease
    /// (checked in the same atomic step). `false`: `holder` does not hold it, nothing
    /// was stored.
    async fn store_cursor(
        &self,
        consumer: &str,
        holder: &str,
        id: EventId,
    ) -> Result<bool, BackendError>;
}
