//! Session events: what the gateway tells backends about sessions coming and going.
//!
//! Every pod emits, for its own sessions, `connected`, `subscribed`, `unsubscribed` and
//! `disconnected`; the pod that reaps a dead pod emits the dead pod's `disconnected`s
//! (code 1006, by `pod_lost`). They are kept in one capped, durable log (a Redis Stream
//! in cluster mode, a ring in memory) that consumers read from a cursor and resume from
//! the last id they saw. The log itself is [`crate::backend::EventLog`]; this module is
//! the vocabulary: ids, kinds, who closed a session, and the event as consumers see it.
//!
//! Ids have the shape of Redis Stream ids in both backends, `<epoch>-<n>`: the log's
//! start in milliseconds, then the event's number in that log. They increase along the
//! log, so "after this id" is a cursor, and a log that was lost and made anew has a later
//! epoch. `0-0` stands before every event.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::ids::SessionId;

/// An event's place in the log: `<ms>-<seq>`, ordered by `ms`, then `seq` (in wsgate's
/// logs, `ms` is the log's epoch and `seq` the event's number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds part: the log's epoch (when it started).
    pub ms: u64,
    /// Sequence part: the event's number in the log.
    pub seq: u64,
}

impl EventId {
    /// `0-0`: before every event. Reading after it reads from the oldest kept event.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// The id `ms-seq`.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event id: expected <ms>-<seq> such as 1718000000000-3, or 0-0")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;

    /// `<ms>-<seq>` in decimal; a lone `0` is `0-0`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "0" {
            return Ok(Self::ZERO);
        }
        let (ms, seq) = s.split_once('-').ok_or(BadEventId)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadEventId);
            }
            part.parse::<u64>().map_err(|_| BadEventId)
        };
        Ok(Self::new(number(ms)?, number(seq)?))
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Only events added from now on (an empty `since_id`).
    New,
    /// Events after this id; [`EventId::ZERO`] reads everything the log keeps.
    After(EventId),
}

impl FromStr for Since {
    type Err = BadEventId;

    /// Empty is [`Since::New`]; anything else must be an event id.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Ok(Self::New)
        } else {
            s.parse().map(Self::After)
        }
    }
}

/// What happened to a session.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum EventKind {
    /// The session was registered (before the client got its 101).
    Connected,
    /// The session ended; `code` and `by` say how.
    Disconnected,
    /// The session subscribed to `topic`.
    Subscribed,
    /// The session left `topic`.
    Unsubscribed,
}

impl EventKind {
    /// The lowercase name (`connected`, …), as in JSON and in the Redis log.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who ended a session.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ClosedBy {
    /// The client sent a close frame (`code` is its code; 1005 when it gave none).
    Client,
    /// The gateway closed it (`code` says why: 1001 shutdown, 3008 slow consumer, a
    /// `Disconnect` caller's code, …).
    Server,
    /// The connection broke without a close handshake (code 1006).
    Transport,
    /// The session's pod died; a surviving pod reaped it (code 1006).
    PodLost,
}

impl ClosedBy {
    /// The snake_case name (`client`, …, `pod_lost`), as in JSON and in the Redis log.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How a session ended, as its `disconnected` event tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The WebSocket close code.
    pub code: u16,
    /// Who closed it.
    pub by: ClosedBy,
    /// When, in milliseconds since the Unix epoch (the clock of the pod that saw it).
    pub at_ms: u64,
}

impl Closed {
    /// The close of every session of a pod that died, seen by its reaper at `at_ms`.
    pub fn pod_lost(at_ms: u64) -> Self {
        Self {
            code: crate::close::ABNORMAL,
            by: ClosedBy::PodLost,
            at_ms,
        }
    }

    /// The close of a session whose task ended without saying how (cancelled, or the
    /// upgrade never completed): the connection is gone, abnormally.
    pub fn unexplained(at_ms: u64) -> Self {
        Self {
            code: crate::close::ABNORMAL,
            by: ClosedBy::Transport,
            at_ms,
        }
    }
}

/// A topic change of a session, the kind of event a pod appends through
/// [`crate::backend::EventLog::append`] (the registry emits `connected` and
/// `disconnected` itself, with the session's record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEvent {
    /// `true`: `subscribed`; `false`: `unsubscribed`.
    pub subscribed: bool,
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: String,
    /// Its pod (the pod that appends).
    pub pod_id: String,
    /// The topic.
    pub topic: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl TopicEvent {
    /// `subscribed` or `unsubscribed`.
    pub fn kind(&self) -> EventKind {
        if self.subscribed {
            EventKind::Subscribed
        } else {
            EventKind::Unsubscribed
        }
    }
}

/// One event as consumers read it. Serializes to the documented JSON object:
/// `{"id","type","at_ms","session_id","user_id","pod_id","topic"?,"code"?,"by"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Its place in the log.
    pub id: EventId,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When, in milliseconds since the Unix epoch, by the clock of the pod that emitted it.
    pub at_ms: u64,
    /// The session.
    pub session_id: String,
    /// The session's user.
    pub user_id: String,
    /// The pod that held the session.
    pub pod_id: String,
    /// `subscribed` / `unsubscribed`: the topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `disconnected`: the close code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// `disconnected`: who closed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<ClosedBy>,
}

impl Event {
    /// The `connected` event of a session that registered at `at_ms`.
    pub fn connected(
        id: EventId,
        session_id: &str,
        user_id: &str,
        pod_id: &str,
        at_ms: u64,
    ) -> Self {
        Self {
            id,
            kind: EventKind::Connected,
            at_ms,
            session_id: session_id.to_owned(),
            user_id: user_id.to_owned(),
            pod_id: pod_id.to_owned(),
            topic: None,
            code: None,
            by: None,
        }
    }

    /// The `disconnected` event of a session that ended as `closed` says.
    pub fn disconnected(
        id: EventId,
        session_id: &str,
        user_id: &str,
        pod_id: &str,
        closed: &Closed,
    ) -> Self {
        Self {
            kind: EventKind::Disconnected,
            at_ms: closed.at_ms,
            code: Some(closed.code),
            by: Some(closed.by),
            ..Self::connected(id, session_id, user_id, pod_id, 0)
        }
    }

    /// The event a [`TopicEvent`] becomes at `id`.
    pub fn topic(id: EventId, e: &TopicEvent) -> Self {
        Self {
            kind: e.kind(),
            topic: Some(e.topic.clone()),
            ..Self::connected(id, e.session_id.as_str(), &e.user_id, &e.pod_id, e.at_ms)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_order() {
        let id: EventId = "1718000000000-3".parse().unwrap();
        assert_eq!(id, EventId::new(1_718_000_000_000, 3));
        assert_eq!(id.to_string(), "1718000000000-3");
        assert_eq!("0".parse::<EventId>().unwrap(), EventId::ZERO);
        assert_eq!("0-0".parse::<EventId>().unwrap(), EventId::ZERO);
        assert!(EventId::new(1, 9) < EventId::new(2, 0));
        assert!(EventId::new(2, 0) < EventId::new(2, 1));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "a-1",
            "1-b",
            "1-2-3",
            " 1-2",
            "+1-2",
            "99999999999999999999-0",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(BadEventId), "{bad:?}");
        }
        assert_eq!("".parse::<Since>().unwrap(), Since::New);
        assert_eq!("0-0".parse::<Since>().unwrap(), Since::After(EventId::ZERO));
        assert!("x".parse::<Since>().is_err());
    }

    #[test]
    fn events_serialize_as_documented() {
        let closed = Closed {
            code: 1006,
            by: ClosedBy::PodLost,
            at_ms: 7,
        };
        let e = Event::disconnected(EventId::new(5, 1), "S", "u", "p", &closed);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({
                "id": "5-1", "type": "disconnected", "at_ms": 7, "session_id": "S",
                "user_id": "u", "pod_id": "p", "code": 1006, "by": "pod_lost"
            })
        );
        let t = Event::topic(
            EventId::new(5, 2),
            &TopicEvent {
                subscribed: true,
                session_id: SessionId::from_string("S"),
                user_id: "u".into(),
                pod_id: "p".into(),
                topic: "news".into(),
                at_ms: 8,
            },
        );
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({
                "id": "5-2", "type": "subscribed", "at_ms": 8, "session_id": "S",
                "user_id": "u", "pod_id": "p", "topic": "news"
            })
        );
        assert_eq!("pod_lost".parse::<ClosedBy>().unwrap(), ClosedBy::PodLost);
        assert_eq!(
            "unsubscribed".parse::<EventKind>().unwrap(),
            EventKind::Unsubscribed
        );
    }
}
