//! The local hub: this pod's live sessions, indexed by session, user and topic.
//!
//! Fan-out never blocks: a frame is offered to each session's bounded queue without
//! waiting, and a session whose queue is full is closed as a slow consumer (3008)
//! instead of buffering without bound.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::backend::{Command, Envelope, Target};
use crate::close;
use crate::deflate::SharedDeflate;
use crate::ids::SessionId;
use crate::outbox::{Outbox, Refused};
use crate::protocol::{OutFrame, encode_push, encode_stream_push};
use crate::signal::Signal;
use crate::stream::StreamPosition;

/// One item of a session's outbound queue: a frame, and where it stands in its stream
/// when it is a push of a stream with history (the session drops what it already sent
/// and notices gaps by the offset).
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    /// The frame to write.
    pub frame: OutFrame,
    /// Its stream position, shared by every session the push reaches.
    pub mark: Option<Arc<StreamMark>>,
    /// The frame's compressed form, shared by every session the push reaches that
    /// negotiated permessage-deflate: the first one to send it deflates it. `None` for a
    /// frame of one session.
    pub deflate: Option<Arc<SharedDeflate>>,
}

impl From<OutFrame> for Outbound {
    fn from(frame: OutFrame) -> Self {
        Self {
            frame,
            mark: None,
            deflate: None,
        }
    }
}

impl Outbound {
    /// A push for several sessions, with room for its shared compressed form (one small
    /// allocation per push, not per recipient; filled only if a session needs it).
    fn shared(frame: OutFrame, mark: Option<Arc<StreamMark>>) -> Self {
        Self {
            frame,
            mark,
            deflate: Some(Arc::new(SharedDeflate::new())),
        }
    }
}

/// A queued push of a stream with history.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMark {
    /// The topic; `None` for the user's own stream.
    pub topic: Option<String>,
    /// The message's place in the stream.
    pub position: StreamPosition,
    /// The message's id, which tells a repeat of a message from another message that
    /// took the same offset (a stream that went back).
    pub id: String,
    /// The frame that announces a binary push's offset, written just before it.
    pub announce: Option<OutFrame>,
}

/// Why a session was closed by the server side, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason text.
    pub reason: String,
}

/// What happened to a frame offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the socket.
    Queued,
    /// The queue was full: the session is now closing as a slow consumer.
    SlowConsumer,
    /// The session is already gone.
    Closed,
}

/// The hub's side of one session: its outbound queue and its close signal.
#[derive(Debug)]
pub struct SessionHandle {
    /// The session's id.
    pub id: SessionId,
    /// Its user.
    pub user_id: String,
    /// Pushes waiting for the socket, bounded.
    queue: Outbox<Outbound>,
    closing: Signal,
    reason: Mutex<Option<CloseReason>>,
    /// The `jti` of the session's current token (the handshake's, then the last
    /// refresh's), which a revocation by token id names.
    token_id: Mutex<Option<String>>,
}

impl SessionHandle {
    /// A handle and the receiving end of its outbound queue (capacity `queue`, at least 1).
    pub fn new(
        id: SessionId,
        user_id: impl Into<String>,
        queue: usize,
    ) -> (Arc<Self>, OutboundReceiver) {
        let handle = Arc::new(Self {
            id,
            user_id: user_id.into(),
            queue: Outbox::new(queue),
            closing: Signal::new(),
            reason: Mutex::new(None),
            token_id: Mutex::new(None),
        });
        let receiver = OutboundReceiver(handle.clone());
        (handle, receiver)
    }

    /// Offers a frame without waiting.
    pub fn offer(&self, item: impl Into<Outbound>) -> Offer {
        match self.queue.offer(item.into()) {
            Ok(()) => Offer::Queued,
            Err(Refused::Full) => {
                self.close_with(close::QUEUE_FULL);
                Offer::SlowConsumer
            }
            Err(Refused::Closed) => Offer::Closed,
        }
    }

    /// Asks the session to close with `code`. The first reason wins; later calls only
    /// repeat the signal.
    pub fn close(&self, code: u16, reason: &str) {
        {
            let mut slot = self.reason.lock();
            if slot.is_none() {
                *slot = Some(CloseReason {
                    code,
                    reason: truncate_reason(reason),
                });
            }
        }
        self.closing.raise();
    }

    /// [`close`](Self::close) with one of the server's named closes.
    pub fn close_with(&self, close: close::Close) {
        self.close(close.code, close.reason);
    }

    /// The `jti` of the session's current token, if it has one.
    pub fn token_id(&self) -> Option<String> {
        self.token_id.lock().clone()
    }

    /// Records the session's current token's `jti` (at the handshake and on a refresh).
    pub fn set_token_id(&self, token_id: Option<String>) {
        *self.token_id.lock() = token_id;
    }

    /// The reason given to [`close`](Self::close), if any.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason.lock().clone()
    }

    /// Resolves when the session has been asked to close.
    pub fn closing(&self) -> &Signal {
        &self.closing
    }
}

/// The session's end of its outbound queue. Dropping it closes the queue: later offers
/// answer [`Offer::Closed`].
#[derive(Debug)]
pub struct OutboundReceiver(Arc<SessionHandle>);

impl OutboundReceiver {
    /// The next queued item, waiting for one (cancel-safe).
    pub async fn recv(&mut self) -> Outbound {
        self.0.queue.take().await
    }

    /// The next queued item, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.0.queue.try_take()
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.0.queue.close();
    }
}

/// Close reasons are limited to 123 bytes by RFC 6455; cut at a char boundary.
pub fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Outcome of [`Hub::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// Newly subscribed; `first` when no other local session had the topic.
    Added {
        /// The pod did not need the topic before.
        first: bool,
    },
    /// The session already had the topic.
    Already,
    /// No such session (it closed meanwhile).
    NoSession,
}

/// What a removal released, so the caller can drop broker subscriptions nobody needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// The user has no session left on this pod.
    pub user_gone: bool,
    /// Topics that no local session holds any more.
    pub topics_gone: Vec<String>,
    /// Every topic the session held.
    pub topics: Vec<String>,
}

#[derive(Default)]
struct Index {
    sessions: HashMap<SessionId, Arc<SessionHandle>>,
    users: HashMap<String, Vec<Arc<SessionHandle>>>,
    topics: HashMap<String, HashMap<SessionId, Arc<SessionHandle>>>,
    session_topics: HashMap<SessionId, Vec<String>>,
}

/// This pod's sessions.
#[derive(Default)]
pub struct Hub {
    index: RwLock<Index>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a session. Returns true when it is the user's first session on this pod.
    pub fn insert(&self, handle: Arc<SessionHandle>) -> bool {
        let mut index = self.index.write();
        let user = index.users.entry(handle.user_id.clone()).or_default();
        let first = user.is_empty();
        user.push(handle.clone());
        index.sessions.insert(handle.id.clone(), handle);
        first
    }

    /// Removes a session with its topics. `None` when it was not here (already removed).
    pub fn remove(&self, id: &SessionId) -> Option<Released> {
        let mut index = self.index.write();
        let handle = index.sessions.remove(id)?;
        let mut released = Released::default();
        if let Some(sessions) = index.users.get_mut(&handle.user_id) {
            sessions.retain(|s| s.id != *id);
            if sessions.is_empty() {
                index.users.remove(&handle.user_id);
                released.user_gone = true;
            }
        }
        for topic in index.session_topics.remove(id).unwrap_or_default() {
            if let Some(members) = index.topics.get_mut(&topic) {
                members.remove(id);
                if members.is_empty() {
                    index.topics.remove(&topic);
                    released.topics_gone.push(topic.clone());
                }
            }
            released.topics.push(topic);
        }
        Some(released)
    }

    /// Adds `topic` to a session.
    pub fn subscribe(&self, id: &SessionId, topic: &str) -> Subscribed {
        let mut index = self.index.write();
        let Some(handle) = index.sessions.get(id).cloned() else {
            return Subscribed::NoSession;
        };
        let members = index.topics.entry(topic.to_owned()).or_default();
        let first = members.is_empty();
        if members.insert(id.clone(), handle).is_some() {
            return Subscribed::Already;
        }
        index
            .session_topics
            .entry(id.clone())
            .or_default()
            .push(topic.to_owned());
        Subscribed::Added { first }
    }

    /// Removes `topic` from a session. Returns `Some(last)` when it had the topic, `last`
    /// being true when no local session holds it any more.
    pub fn unsubscribe(&self, id: &SessionId, topic: &str) -> Option<bool> {
        let mut index = self.index.write();
        let members = index.topics.get_mut(topic)?;
        members.remove(id)?;
        let last = members.is_empty();
        if last {
            index.topics.remove(topic);
        }
        if let Some(topics) = index.session_topics.get_mut(id) {
            topics.retain(|t| t != topic);
        }
        Some(last)
    }

    /// Whether any local session needs a user's messages.
    pub fn has_user(&self, user_id: &str) -> bool {
        self.index.read().users.contains_key(user_id)
    }

    /// Whether any local session is subscribed to `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.index.read().topics.contains_key(topic)
    }

    /// A session by id.
    pub fn get(&self, id: &SessionId) -> Option<Arc<SessionHandle>> {
        self.index.read().sessions.get(id).cloned()
    }

    /// Number of local sessions.
    pub fn len(&self) -> usize {
        self.index.read().sessions.len()
    }

    /// Whether there are no local sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every local session (for shutdown and re-registration).
    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.index.read().sessions.values().cloned().collect()
    }

    /// The topics a session holds.
    pub fn topics_of(&self, id: &SessionId) -> Vec<String> {
        self.index
            .read()
            .session_topics
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Carries out an envelope on the local sessions it targets. The client frame is
    /// encoded once, only if some local session is targeted. Returns how many sessions
    /// it reached.
    pub fn apply(&self, envelope: &Envelope) -> usize {
        self.apply_noting(envelope, &mut Vec::new(), 0)
    }

    /// [`apply`](Self::apply), also noting the ids of up to `note` sessions reached (for
    /// traces: which sockets a message went to).
    pub fn apply_noting(
        &self,
        envelope: &Envelope,
        noted: &mut Vec<SessionId>,
        note: usize,
    ) -> usize {
        let index = self.index.read();
        let mut targets: Vec<&Arc<SessionHandle>> = Vec::new();
        let topic = match &envelope.target {
            Target::User(u) => {
                targets.extend(index.users.get(u).into_iter().flatten());
                None
            }
            Target::Session(s) => {
                targets.extend(index.sessions.get(s));
                None
            }
            Target::Topic(t) => {
                targets.extend(index.topics.get(t).into_iter().flat_map(|m| m.values()));
                Some(t.as_str())
            }
            Target::Broadcast => {
                targets.extend(index.sessions.values());
                None
            }
        };
        if targets.is_empty() {
            return 0;
        }
        match &envelope.command {
            Command::Deliver(payload) => {
                let frame = match &envelope.position {
                    Some(position)
                        if !matches!(envelope.target, Target::Session(_) | Target::Broadcast) =>
                    {
                        let push = encode_stream_push(payload, topic, position.offset);
                        let mark = Arc::new(StreamMark {
                            topic: topic.map(str::to_owned),
                            position: position.clone(),
                            id: envelope.id.clone(),
                            announce: push.announce,
                        });
                        Outbound::shared(push.frame, Some(mark))
                    }
                    _ => Outbound::shared(encode_push(payload, topic), None),
                };
                let mut reached = 0;
                for h in targets {
                    if h.offer(frame.clone()) != Offer::Closed {
                        reached += 1;
                        if noted.len() < note {
                            noted.push(h.id.clone());
                        }
                    }
                }
                reached
            }
            Command::Disconnect { code, reason } => {
                for h in &targets {
                    h.close(*code, reason);
                    if noted.len() < note {
                        noted.push(h.id.clone());
                    }
                }
                targets.len()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    fn envelope(target: Target, text: &str) -> Envelope {
        Envelope::new("pod", target, Command::Deliver(Payload::Text(text.into())))
    }

    #[test]
    fn routes_by_user_session_topic_and_broadcast() {
        let hub = Hub::new();
        let (a1, mut ra1) = SessionHandle::new(SessionId::generate(), "alice", 8);
        let (a2, mut ra2) = SessionHandle::new(SessionId::generate(), "alice", 8);
        let (b, mut rb) = SessionHandle::new(SessionId::generate(), "bob", 8);
        assert!(hub.insert(a1.clone()));
        assert!(!hub.insert(a2.clone()));
        assert!(hub.insert(b.clone()));

        assert_eq!(hub.apply(&envelope(Target::User("alice".into()), "x")), 2);
        assert!(ra1.try_recv().is_some() && ra2.try_recv().is_some());
        assert!(rb.try_recv().is_none());

        assert_eq!(
            hub.subscribe(&b.id, "news"),
            Subscribed::Added { first: true }
        );
        assert_eq!(hub.subscribe(&b.id, "news"), Subscribed::Already);
        assert_eq!(
            hub.subscribe(&a1.id, "news"),
            Subscribed::Added { first: false }
        );
        let frame = encode_push(&Payload::Text("n".into()), Some("news"));
        assert_eq!(hub.apply(&envelope(Target::Topic("news".into()), "n")), 2);
        assert_eq!(rb.try_recv().unwrap().frame, frame);
        assert!(ra2.try_recv().is_none(), "a2 is not subscribed");

        assert_eq!(hub.apply(&envelope(Target::Session(a2.id.clone()), "s")), 1);
        assert_eq!(hub.apply(&envelope(Target::Broadcast, "all")), 3);
        assert_eq!(hub.apply(&envelope(Target::User("nobody".into()), "x")), 0);
    }

    #[test]
    fn removal_releases_user_and_topics_once() {
        let hub = Hub::new();
        let (a, _ra) = SessionHandle::new(SessionId::generate(), "alice", 8);
        let (b, _rb) = SessionHandle::new(SessionId::generate(), "bob", 8);
        hub.insert(a.clone());
        hub.insert(b.clone());
        hub.subscribe(&a.id, "t1");
        hub.subscribe(&a.id, "t2");
        hub.subscribe(&b.id, "t2");
        let released = hub.remove(&a.id).unwrap();
        assert!(released.user_gone);
        assert_eq!(released.topics_gone, vec!["t1".to_string()]);
        assert_eq!(released.topics.len(), 2);
        assert!(hub.remove(&a.id).is_none(), "second removal is a no-op");
        assert!(hub.has_topic("t2") && !hub.has_topic("t1"));
        assert_eq!(hub.unsubscribe(&b.id, "t2"), Some(true));
        assert_eq!(hub.unsubscribe(&b.id, "t2"), None);
    }

    #[test]
    fn a_full_queue_closes_the_session_as_slow() {
        let (h, _rx) = SessionHandle::new(SessionId::generate(), "u", 2);
        let frame = OutFrame::Binary(bytes::Bytes::from_static(b"x"));
        assert_eq!(h.offer(frame.clone()), Offer::Queued);
        assert_eq!(h.offer(frame.clone()), Offer::Queued);
        assert_eq!(h.offer(frame), Offer::SlowConsumer);
        assert!(h.closing().is_raised());
        assert_eq!(h.close_reason().unwrap().code, close::SLOW_CONSUMER);
        assert_eq!(
            h.close_reason().unwrap().reason,
            "slow consumer: outbound queue full",
            "the reason clients see"
        );
        h.close(4000, "later reasons do not overwrite");
        assert_eq!(h.close_reason().unwrap().code, close::SLOW_CONSUMER);
    }

    #[test]
    fn disconnect_targets_close_with_the_given_code() {
        let hub = Hub::new();
        let (a, _ra) = SessionHandle::new(SessionId::generate(), "alice", 8);
        hub.insert(a.clone());
        let kick = Envelope::new(
            "pod",
            Target::User("alice".into()),
            Command::Disconnect {
                code: 4003,
                reason: "é".repeat(100),
            },
        );
        assert_eq!(hub.apply(&kick), 1);
        let reason = a.close_reason().unwrap();
        assert_eq!(reason.code, 4003);
        assert!(reason.reason.len() <= 123);
    }
}
