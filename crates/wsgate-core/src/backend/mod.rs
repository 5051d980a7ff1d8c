//! The two backend roles and the messages that cross them.
//!
//! - [`Broker`] routes envelopes between pods: a pod subscribes to the channels its local
//!   sockets need (a user, a topic, its own pod channel, the broadcast channel) and every
//!   envelope published on a channel reaches exactly the pods subscribed to it.
//! - [`Registry`] is the shared record of sessions, topic memberships and pods, answering
//!   presence, stats and "how many sessions did this send target".
//!
//! Streams with history are the broker's too: a publish to a user or topic stream that
//! keeps history assigns the next offset, appends the message and publishes it in one
//! atomic step ([`Broker::publish_stream`]), so every pod sees one order per stream, and
//! [`Broker::read_stream`] reads what a stream still keeps. The broker owns them because
//! the append and the publish must be one step: in Redis, one script does both.
//!
//! Session events have their own role, [`EventLog`] (`event_log.rs`): the registry
//! writes `connected` and `disconnected` into it in the same atomic step as the
//! session's registration and removal, so a backend that keeps events implements both.
//!
//! `memory` implements every role in process (the embedded single-node default, with
//! `memory_events` for the log); `wsgate-redis` implements them over Redis. Both pass
//! [`crate::conformance`].

pub mod event_log;
pub mod memory;
pub mod memory_events;

use std::sync::Arc;

use async_trait::async_trait;

pub use self::event_log::{EventLog, ReadError};
use crate::events::Closed;
use crate::ids::SessionId;
use crate::protocol::Payload;
use crate::revocation::Revocation;
pub use crate::stream::{HistoryPolicy, Idempotency, StreamPosition};

/// A backend failure. Callers map `Unavailable` to gRPC `UNAVAILABLE` and fail readiness.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached right now; retrying later may work.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something this version does not understand.
    #[error("backend protocol error: {0}")]
    Protocol(String),
}

/// A pub/sub channel. Each pod subscribes only to the channels its sockets need, so a
/// message reaches only pods that will deliver it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Every pod holding a session of this user.
    User(String),
    /// Every pod holding a subscriber of this topic.
    Topic(String),
    /// One pod: used for session-addressed sends (the registry tells which pod).
    Pod(String),
    /// Every pod holding any session.
    Broadcast,
}

/// Which local sessions an envelope is for, once it reaches a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// All sessions of a user.
    User(String),
    /// One session.
    Session(SessionId),
    /// All sessions subscribed to a topic; the push names the topic.
    Topic(String),
    /// Every session.
    Broadcast,
}

impl Target {
    /// The channel an envelope with this target travels on. A session target needs the
    /// pod that holds the session, which only the registry knows.
    pub fn channel(&self, session_pod: Option<&str>) -> Option<Channel> {
        Some(match self {
            Target::User(u) => Channel::User(u.clone()),
            Target::Topic(t) => Channel::Topic(t.clone()),
            Target::Broadcast => Channel::Broadcast,
            Target::Session(_) => Channel::Pod(session_pod?.to_owned()),
        })
    }
}

/// What to do with the target sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Push a payload to each target session.
    Deliver(Payload),
    /// Close each target session with this code and reason.
    Disconnect {
        /// WebSocket close code.
        code: u16,
        /// Close reason (at most 123 bytes on the wire; longer is cut at a char boundary).
        reason: String,
    },
}

/// One message crossing the broker: published once, decoded once per receiving pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique message id (a ULID).
    pub id: String,
    /// The pod that published it.
    pub origin: String,
    /// Which sessions it is for.
    pub target: Target,
    /// What to do with them.
    pub command: Command,
    /// W3C trace context (`traceparent`) of the sending call, when traced.
    pub trace_context: Option<String>,
    /// Where the message stands in its stream, when it was published to a stream with
    /// history ([`Broker::publish_stream`] sets it).
    pub position: Option<StreamPosition>,
}

impl Envelope {
    /// A new envelope with a fresh id.
    pub fn new(origin: impl Into<String>, target: Target, command: Command) -> Self {
        Self {
            id: crate::ids::message_id(),
            origin: origin.into(),
            target,
            command,
            trace_context: None,
            position: None,
        }
    }
}

/// What [`Broker::publish_stream`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The published message's place (for a duplicate: the first publish's).
    pub position: StreamPosition,
    /// The idempotency key was seen within its window: nothing was published.
    pub duplicate: bool,
}

/// A message a stream keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// Its offset in the stream's epoch.
    pub offset: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub published_at_ms: u64,
    /// The message as published (its `position` set).
    pub envelope: Envelope,
}

/// A read of a stream's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The stream's epoch and newest offset at the time of the read.
    pub position: StreamPosition,
    /// Kept messages after the requested offset, oldest first, at most the requested
    /// number.
    pub entries: Vec<StreamEntry>,
    /// The offset of the oldest message still kept (`position.offset + 1` when none is).
    pub first_kept: u64,
}

impl HistoryPage {
    /// Whether a client that last saw `since` can be given everything after it from this
    /// page's stream: same epoch, not ahead of the stream, and the message after `since`
    /// still kept.
    pub fn recovers(&self, since: &StreamPosition) -> bool {
        since.epoch == self.position.epoch
            && since.offset <= self.position.offset
            && since.offset.saturating_add(1) >= self.first_kept
    }
}

/// Where a broker hands the envelopes that arrive for this pod. Called from the broker's
/// receive path, so it must not block: the gateway's implementation only `try_send`s.
pub trait Inbox: Send + Sync + 'static {
    /// An envelope arrived on a channel this pod subscribes to.
    fn deliver(&self, envelope: Arc<Envelope>);

    /// The broker's subscriptions were lost and have just been made again (a reconnect,
    /// or a self-probe that went unheard): envelopes published meanwhile never arrived.
    /// Streams with history can catch up from their history; the rest is gone.
    fn resubscribed(&self) {}
}

/// Routes envelopes between pods.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Subscribes this pod to `channel`. Idempotent. When it returns `Ok`, envelopes
    /// published on the channel afterwards reach this pod's inbox.
    async fn subscribe(&self, channel: &Channel) -> Result<(), BackendError>;

    /// Unsubscribes this pod from `channel`. Idempotent.
    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BackendError>;

    /// Publishes once; every pod subscribed to `channel` receives it once.
    async fn publish(&self, channel: &Channel, envelope: Arc<Envelope>)
    -> Result<(), BackendError>;

    /// Whether [`Broker::publish_to_user_counted`] counts and publishes in one step here
    /// (a one-server Redis), so a caller need not count in the registry first.
    fn counts_user_sends(&self) -> bool {
        false
    }

    /// Publishes once on `user`'s channel (as [`Broker::publish`]) and counts the user's
    /// sessions on live pods in the same step, for a backend that holds both and can do
    /// them at once: one round trip on a one-server Redis. `Ok(None)` when it cannot:
    /// nothing was published, and the caller counts in the registry and publishes. An
    /// error means nothing was published, unless the command timed out (as with
    /// [`Broker::publish`]).
    async fn publish_to_user_counted(
        &self,
        user: &str,
        envelope: Arc<Envelope>,
    ) -> Result<Option<usize>, BackendError> {
        let _ = (user, envelope);
        Ok(None)
    }

    /// Publishes to the stream of `channel` (a user or topic channel) that keeps history
    /// by `policy`: assigns the next offset (a new epoch when the stream was forgotten or
    /// lost), keeps the message (at most `policy.size`, for `policy.ttl` after the last
    /// publish) and publishes it with its position set, all in one atomic step, so every
    /// subscriber sees the stream's messages in offset order. With `idempotency`, a repeat
    /// of its key within the window publishes nothing and answers the first position.
    async fn publish_stream(
        &self,
        channel: &Channel,
        envelope: Arc<Envelope>,
        policy: &HistoryPolicy,
        idempotency: Option<&Idempotency>,
    ) -> Result<Appended, BackendError>;

    /// Reads the stream of `channel`: its position and up to `limit` kept messages with an
    /// offset above `after`. A stream that does not exist yet is created empty (a new
    /// epoch, offset 0, kept for `policy.ttl`), so a reader's epoch stays valid for the
    /// first publish.
    async fn read_stream(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
        policy: &HistoryPolicy,
    ) -> Result<HistoryPage, BackendError>;

    /// Whether the broker can publish and receive right now (readiness).
    async fn healthy(&self) -> Result<(), BackendError>;
}

/// A session as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session's id.
    pub session_id: SessionId,
    /// The user it belongs to.
    pub user_id: String,
    /// The pod holding its socket.
    pub pod_id: String,
    /// When it connected, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// The client's address as the gateway saw it (after trusted proxies).
    pub remote_addr: String,
}

/// A pod as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// The pod's id.
    pub pod_id: String,
    /// Sessions registered on it.
    pub connections: u64,
    /// Whether its liveness is current.
    pub alive: bool,
}

/// What a liveness refresh found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The pod was live and stays live.
    Refreshed,
    /// The registry had no live record of the pod: its first announcement, or the
    /// record was lost (the TTL lapsed, or the backend restarted empty). The pod must
    /// register its sessions and subscriptions again.
    Restored,
}

/// What [`Registry::reap_dead_pods`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
    /// Dead pods whose leftovers were removed.
    pub pods: usize,
    /// `disconnected` events written for their sessions (by `pod_lost`, code 1006).
    pub sessions: usize,
}

/// The shared record of sessions, topic memberships and pods.
///
/// A registry made with an event log writes each session's `connected` when it records
/// the session and its `disconnected` when it removes it, reaps it, or removes its pod,
/// each in the same atomic step as the session's liveness mark in the log: exactly one
/// `disconnected` per `connected`, whoever removes the session and however often.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Announces a pod or refreshes its liveness: O(1) work, called at start and several
    /// times per liveness period.
    async fn heartbeat_pod(&self, pod_id: &str) -> Result<Liveness, BackendError>;

    /// Removes what pods that died without cleanup left behind, writing a `disconnected`
    /// (code 1006, by `pod_lost`) for each of their sessions. Live pods call it
    /// periodically; one of several racing reapers does the work, and a reaper that fails
    /// midway leaves the rest to the next one, without writing any event twice. A
    /// backend where pods cannot die apart from the process reaps nothing.
    async fn reap_dead_pods(&self) -> Result<Reaped, BackendError>;

    /// Removes a pod that shuts down cleanly, with every session it still has (their
    /// `disconnected`: code 1001, by `server`).
    async fn remove_pod(&self, pod_id: &str) -> Result<(), BackendError>;

    /// Records a session unless its user already has `max_user_sessions` live sessions
    /// (0 = no limit); check and insert are one atomic step, so concurrent handshakes
    /// cannot overshoot the limit. Returns whether the session was admitted. Idempotent:
    /// re-adding a recorded session (re-registration after a backend restart) admits it.
    /// An admitted session gets its `connected` unless it is live in the event log
    /// already.
    async fn add_session(
        &self,
        record: &SessionRecord,
        max_user_sessions: usize,
    ) -> Result<bool, BackendError>;

    /// Forgets a session and its topic memberships and writes its `disconnected` as
    /// `closed` says, unless it was written already. Idempotent. Returns whether this
    /// call wrote the `disconnected` (always `false` without an event log).
    async fn remove_session(
        &self,
        record: &SessionRecord,
        closed: &Closed,
    ) -> Result<bool, BackendError>;

    /// Records that a session subscribed to a topic. Idempotent.
    async fn add_subscription(
        &self,
        record: &SessionRecord,
        topic: &str,
    ) -> Result<(), BackendError>;

    /// Records that a session left a topic. Idempotent.
    async fn remove_subscription(
        &self,
        record: &SessionRecord,
        topic: &str,
    ) -> Result<(), BackendError>;

    /// A session by id, if it is live.
    async fn session(&self, session_id: &SessionId) -> Result<Option<SessionRecord>, BackendError>;

    /// The live sessions of a user, oldest first (by `connected_at_ms`, then id).
    async fn user_sessions(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError>;

    /// How many live sessions a user has (the `max_sessions_per_user` limit).
    async fn count_user_sessions(&self, user_id: &str) -> Result<usize, BackendError>;

    /// How many live sessions are subscribed to a topic.
    async fn count_topic_subscribers(&self, topic: &str) -> Result<usize, BackendError>;

    /// How many live sessions there are in all (the targets of a broadcast).
    async fn count_sessions(&self) -> Result<usize, BackendError>;

    /// Every known pod with its session count and liveness.
    async fn pods(&self) -> Result<Vec<PodRecord>, BackendError>;

    /// Whether the registry can be read and written right now (readiness).
    async fn healthy(&self) -> Result<(), BackendError>;

    /// Adds a revocation to the cluster's set (keeping the later time when its target is
    /// revoked already) and moves the set's version on. Returns the time in force.
    async fn revoke(&self, revocation: &Revocation) -> Result<u64, BackendError>;

    /// The revocations in force at `now_ms` with the set's version, or `None` when the
    /// version is still `known` (nothing changed: one cheap read). Revocations whose time
    /// has passed are left out (and may be deleted).
    async fn revocations(
        &self,
        known: u64,
        now_ms: u64,
    ) -> Result<Option<(u64, Vec<Revocation>)>, BackendError>;
}
