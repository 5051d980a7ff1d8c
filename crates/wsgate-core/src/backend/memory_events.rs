//! The session event log in memory (embedded mode): a ring of the newest `max_len`
//! events, with ids in the Redis Stream shape so both backends read alike.
//!
//! The [`super::memory::MemoryRegistry`] made with this log writes `connected` and
//! `disconnected` while it holds its own lock, so they happen together with the change
//! of the session's record. Ids are `<epoch>-<n>` as in Redis: the log's start in ms,
//! then the event's number. A process that restarts starts a new log with a later epoch:
//! a consumer's cursor from before the restart reads as trimmed, never as "nothing
//! missed".
//!
//! Consumers' leases and cursors live beside the log, under a lock of their own; a lease
//! ends at a [`tokio::time::Instant`], so tests with a paused clock can let it lapse.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::event_log::{EventLog, ReadError};
use super::{BackendError, SessionRecord};
use crate::events::{Closed, Event, EventId, TopicEvent};
use crate::ids::SessionId;

/// The in-memory event log.
pub struct MemoryEventLog {
    state: Mutex<LogState>,
    /// The newest id made, for [`EventLog::wait`].
    newest: watch::Sender<EventId>,
    consumers: Mutex<HashMap<String, Consumer>>,
}

/// A consumer's lease and cursor.
#[derive(Default)]
struct Consumer {
    /// The holder and when its lease ends.
    lease: Option<(String, Instant)>,
    cursor: Option<EventId>,
}

impl Consumer {
    /// Whether `holder` holds the lease at `now`.
    fn held_by(&self, holder: &str, now: Instant) -> bool {
        matches!(&self.lease, Some((h, until)) if h == holder && *until > now)
    }

    /// Whether anyone holds the lease at `now`.
    fn held(&self, now: Instant) -> bool {
        matches!(&self.lease, Some((_, until)) if *until > now)
    }
}

struct LogState {
    max_len: usize,
    entries: VecDeque<Event>,
    /// The newest id made.
    last: EventId,
    /// The newest id no longer kept: the last one trimmed, or the log's start.
    trimmed_to: EventId,
    /// Sessions between their `connected` and their `disconnected`: session → (user, pod).
    live: HashMap<SessionId, (String, String)>,
}

impl LogState {
    /// The log's epoch (its start), then the event's number, as in Redis.
    fn next_id(&self) -> EventId {
        EventId::new(self.last.ms, self.last.seq + 1)
    }

    fn push(&mut self, newest: &watch::Sender<EventId>, event: impl FnOnce(EventId) -> Event) {
        let id = self.next_id();
        self.entries.push_back(event(id));
        self.last = id;
        while self.entries.len() > self.max_len {
            if let Some(gone) = self.entries.pop_front() {
                self.trimmed_to = gone.id;
            }
        }
        newest.send_replace(id);
    }
}

impl MemoryEventLog {
    /// An empty log keeping the newest `max_len` events (at least 1).
    pub fn new(max_len: usize) -> Arc<Self> {
        let start = EventId::new(super::memory::now_ms(), 0);
        Arc::new(Self {
            state: Mutex::new(LogState {
                max_len: max_len.max(1),
                entries: VecDeque::new(),
                last: start,
                trimmed_to: start,
                live: HashMap::new(),
            }),
            newest: watch::Sender::new(start),
            consumers: Mutex::new(HashMap::new()),
        })
    }

    /// Marks a session live and writes its `connected`, unless it is live already.
    pub(crate) fn open(&self, record: &SessionRecord) -> bool {
        let mut state = self.state.lock();
        if state.live.contains_key(&record.session_id) {
            return false;
        }
        state.live.insert(
            record.session_id.clone(),
            (record.user_id.clone(), record.pod_id.clone()),
        );
        state.push(&self.newest, |id| {
            Event::connected(
                id,
                record.session_id.as_str(),
                &record.user_id,
                &record.pod_id,
                record.connected_at_ms,
            )
        });
        true
    }

    /// Writes a live session's `disconnected` and forgets it; nothing for a session that
    /// is not live (closed already, or never opened).
    pub(crate) fn close(&self, session_id: &SessionId, closed: &Closed) -> bool {
        let mut state = self.state.lock();
        let Some((user, pod)) = state.live.remove(session_id) else {
            return false;
        };
        state.push(&self.newest, |id| {
            Event::disconnected(id, session_id.as_str(), &user, &pod, closed)
        });
        true
    }

    /// Closes every live session of `pod` (oldest id first); returns how many.
    pub(crate) fn close_pod(&self, pod: &str, closed: &Closed) -> usize {
        let mut ids: Vec<SessionId> = {
            let state = self.state.lock();
            state
                .live
                .iter()
                .filter(|(_, (_, p))| p == pod)
                .map(|(id, _)| id.clone())
                .collect()
        };
        ids.sort();
        ids.iter().filter(|id| self.close(id, closed)).count()
    }
}

#[async_trait]
impl EventLog for MemoryEventLog {
    async fn append(&self, events: &[TopicEvent]) -> Result<Vec<bool>, BackendError> {
        let mut state = self.state.lock();
        Ok(events
            .iter()
            .map(|e| {
                let live = state.live.contains_key(&e.session_id);
                if live {
                    state.push(&self.newest, |id| Event::topic(id, e));
                }
                live
            })
            .collect())
    }

    async fn newest(&self) -> Result<EventId, BackendError> {
        Ok(self.state.lock().last)
    }

    async fn read(&self, after: EventId, limit: usize) -> Result<Vec<Event>, ReadError> {
        let state = self.state.lock();
        if after != EventId::ZERO && after < state.trimmed_to {
            return Err(ReadError::Trimmed {
                oldest: state.entries.front().map(|e| e.id),
            });
        }
        if after > state.last {
            return Err(ReadError::Ahead { newest: state.last });
        }
        let start = state.entries.partition_point(|e| e.id <= after);
        Ok(state.entries.range(start..).take(limit).cloned().collect())
    }

    async fn wait(&self, after: EventId, timeout: Duration) {
        let mut newest = self.newest.subscribe();
        let _ = tokio::time::timeout(timeout, newest.wait_for(|id| *id > after)).await;
    }

    async fn claim(
        &self,
        consumer: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let now = Instant::now();
        let mut consumers = self.consumers.lock();
        let c = consumers.entry(consumer.to_owned()).or_default();
        if c.held(now) && !c.held_by(holder, now) {
            return Ok(false);
        }
        c.lease = Some((holder.to_owned(), now + ttl));
        Ok(true)
    }

    async fn release(&self, consumer: &str, holder: &str) -> Result<(), BackendError> {
        let mut consumers = self.consumers.lock();
        if let Some(c) = consumers.get_mut(consumer)
            && c.held_by(holder, Instant::now())
        {
            c.lease = None;
        }
        Ok(())
    }

    async fn cursor(&self, consumer: &str) -> Result<Option<EventId>, BackendError> {
        Ok(self.consumers.lock().get(consumer).and_then(|c| c.cursor))
    }

    async fn store_cursor(
        &self,
        consumer: &str,
        holder: &str,
        id: EventId,
    ) -> Result<bool, BackendError> {
        let mut consumers = self.consumers.lock();
        match consumers.get_mut(consumer) {
            Some(c) if c.held_by(holder, Instant::now()) => {
                c.cursor = Some(id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
