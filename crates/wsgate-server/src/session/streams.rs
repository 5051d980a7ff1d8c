//! Streams with history on one session: joining a stream without a gap or a duplicate,
//! and keeping it that way while it is live.
//!
//! A join subscribes first, so live pushes start to queue up, then reads the stream's
//! history from the client's `since`, answers, replays what the client missed, and only
//! then lets the queue flow. Everything queued meanwhile carries its offset: what the
//! replay already covered is dropped, the rest follows in order. The session loop does
//! not read the queue while it handles a join, so the queue itself is the join buffer.
//!
//! Live, a [`Cursor`] holds the epoch and the last offset sent per stream. Repeats are
//! expected only of messages the join's history read already covered (published before
//! the read, delivered live after it: pub/sub delivers them in offset order, so only
//! until the first newer one); the cursor knows the ids of what it replayed, so a repeat
//! must be the same message. Any other offset at or below the last one means the stream
//! went back (Redis lost writes it had acknowledged), which is treated like a push from
//! another epoch or one that skips an offset: the session can no longer vouch for the
//! stream. A topic is then dropped with `insufficient_state` (the client
//! subscribes again with its last offset and recovers from history), the user stream
//! closes the session with 3010 (the client reconnects with `since`). A gap is never
//! passed over silently.

use std::collections::HashMap;

use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::backend::{Channel, HistoryPage, StreamEntry, StreamPosition};
use wsgate_core::close;
use wsgate_core::protocol::encode_stream_push;

use super::io::to_message;
use super::{Flow, Session};

/// Which stream of the session: a topic, or the user's own (`None`).
pub(super) type StreamKey = Option<String>;

/// What the session last sent of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    /// The stream's epoch.
    pub epoch: String,
    /// The last offset sent (or known to the client).
    pub last: u64,
    /// The newest offset of the latest history read (join or catch-up): live repeats at
    /// or below it are expected until a newer message arrives.
    pub read_top: u64,
    /// Ids of the messages replayed by that read, by offset: a repeat must match.
    pub replayed: HashMap<u64, String>,
}

impl Cursor {
    /// A cursor after a history read whose newest offset is `top`, having sent `replayed`.
    fn after_read(epoch: String, top: u64, replayed: &[StreamEntry]) -> Self {
        Self {
            epoch,
            last: top,
            read_top: top,
            replayed: replayed
                .iter()
                .map(|e| (e.offset, e.envelope.id.clone()))
                .collect(),
        }
    }
}

/// What to do with a queued push of a tracked stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// The next offset: send it.
    Send,
    /// Already sent (by the replay or before): drop it.
    Duplicate,
    /// Another epoch, or a skipped offset: the stream cannot be vouched for any more.
    Reset,
}

impl Cursor {
    /// Decides about a live push of message `id` at `position`, advancing when it is
    /// sent.
    pub(super) fn admit(&mut self, position: &StreamPosition, id: &str) -> Admit {
        if position.epoch != self.epoch {
            return Admit::Reset;
        }
        let offset = position.offset;
        if offset <= self.last {
            // A repeat of what the latest read covered, while nothing newer came yet; a
            // replayed message must be the same one.
            let expected = self.last <= self.read_top
                && offset <= self.read_top
                && self.replayed.get(&offset).is_none_or(|known| known == id);
            return if expected {
                Admit::Duplicate
            } else {
                Admit::Reset
            };
        }
        if offset != self.last + 1 {
            return Admit::Reset;
        }
        self.last = offset;
        if offset > self.read_top && !self.replayed.is_empty() {
            // Live beyond the read: no repeat of it can come any more.
            self.replayed = HashMap::new();
        }
        Admit::Send
    }
}

/// The outcome of reading a stream for a join.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Join {
    /// Whether everything after `since` is replayed (`None` without `since`).
    pub recovered: Option<bool>,
    /// Why not, for the metrics.
    pub reason: &'static str,
    /// What to replay, oldest first.
    pub replay: Vec<StreamEntry>,
    /// The cursor once the replay is sent.
    pub cursor: Cursor,
    /// The stream's epoch and newest offset.
    pub position: StreamPosition,
}

/// Decides a join from the history `page` read after `since` (or after the newest
/// offset, without `since`).
pub(super) fn join(page: HistoryPage, since: Option<&StreamPosition>) -> Join {
    let position = page.position.clone();
    let cursor = Cursor::after_read(position.epoch.clone(), position.offset, &[]);
    let Some(since) = since else {
        return Join {
            recovered: None,
            reason: "none",
            replay: Vec::new(),
            cursor,
            position,
        };
    };
    let (recovered, reason) = if page.recovers(since) {
        (true, "none")
    } else if since.epoch != position.epoch {
        (false, "epoch")
    } else if since.offset > position.offset {
        (false, "ahead")
    } else {
        (false, "trimmed")
    };
    let replay: Vec<StreamEntry> = if recovered {
        page.entries
            .into_iter()
            .filter(|e| e.offset > since.offset)
            .collect()
    } else {
        Vec::new()
    };
    Join {
        recovered: Some(recovered),
        reason,
        cursor: Cursor::after_read(position.epoch.clone(), position.offset, &replay),
        replay,
        position,
    }
}

/// What a tracked stream needs after the broker may have missed pushes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum CatchUp {
    /// Nothing was missed.
    Current,
    /// These were missed, oldest first: send them.
    Replay(Vec<StreamEntry>),
    /// The stream cannot be vouched for (another epoch, or what was missed is gone).
    Reset,
}

/// Compares a cursor with the stream's history read after its last offset.
pub(super) fn catch_up(cursor: &Cursor, page: HistoryPage) -> CatchUp {
    let at = StreamPosition {
        epoch: cursor.epoch.clone(),
        offset: cursor.last,
    };
    if !page.recovers(&at) {
        return CatchUp::Reset;
    }
    let missed: Vec<StreamEntry> = page
        .entries
        .into_iter()
        .filter(|e| e.offset > cursor.last)
        .collect();
    if missed.is_empty() {
        CatchUp::Current
    } else {
        CatchUp::Replay(missed)
    }
}

/// The frames that replay `entries` of `topic` (`None`: the user stream).
pub(super) fn replay_frames(entries: &[StreamEntry], topic: Option<&str>) -> (Vec<Message>, u64) {
    let mut messages = Vec::with_capacity(entries.len());
    let mut bytes = 0;
    for entry in entries {
        let wsgate_core::backend::Command::Deliver(payload) = &entry.envelope.command else {
            continue;
        };
        let push = encode_stream_push(payload, topic, entry.offset);
        bytes += push.len() as u64;
        if let Some(announce) = push.announce {
            messages.push(to_message(announce));
        }
        messages.push(to_message(push.frame));
    }
    (messages, bytes)
}

/// Tracked streams kept in a list up to this many; a hash map beyond.
const FEW_CURSORS: usize = 8;

/// The cursors of a session's tracked streams. Most sessions track one or two (the user
/// stream, a topic), so they live in a list sized to fit, without the few hundred bytes
/// of an empty hash map's first table; a session tracking many gets a map.
#[derive(Debug)]
pub(super) enum Cursors {
    Few(Vec<(StreamKey, Cursor)>),
    Many(HashMap<StreamKey, Cursor>),
}

impl Cursors {
    pub(super) fn new() -> Self {
        Self::Few(Vec::new())
    }

    pub(super) fn is_empty(&self) -> bool {
        match self {
            Self::Few(list) => list.is_empty(),
            Self::Many(map) => map.is_empty(),
        }
    }

    pub(super) fn get(&self, key: &StreamKey) -> Option<&Cursor> {
        match self {
            Self::Few(list) => list.iter().find(|(k, _)| k == key).map(|(_, c)| c),
            Self::Many(map) => map.get(key),
        }
    }

    pub(super) fn get_mut(&mut self, key: &StreamKey) -> Option<&mut Cursor> {
        match self {
            Self::Few(list) => list.iter_mut().find(|(k, _)| k == key).map(|(_, c)| c),
            Self::Many(map) => map.get_mut(key),
        }
    }

    pub(super) fn insert(&mut self, key: StreamKey, cursor: Cursor) {
        match self {
            Self::Few(list) => {
                if let Some(slot) = list.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = cursor;
                } else if list.len() < FEW_CURSORS {
                    // One more slot at a time: a list of one is one cursor's size.
                    list.reserve_exact(1);
                    list.push((key, cursor));
                } else {
                    let mut map: HashMap<_, _> = std::mem::take(list).into_iter().collect();
                    map.insert(key, cursor);
                    *self = Self::Many(map);
                }
            }
            Self::Many(map) => {
                map.insert(key, cursor);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &StreamKey) {
        match self {
            Self::Few(list) => list.retain(|(k, _)| k != key),
            Self::Many(map) => {
                map.remove(key);
            }
        }
    }

    /// The tracked streams.
    pub(super) fn keys(&self) -> Vec<StreamKey> {
        match self {
            Self::Few(list) => list.iter().map(|(k, _)| k.clone()).collect(),
            Self::Many(map) => map.keys().cloned().collect(),
        }
    }
}

impl<S> Session<S>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// Reads `channel`'s history for a join and counts the outcome. `None`: the stream
    /// keeps no history.
    pub(super) async fn read_for_join(
        &mut self,
        channel: &Channel,
        since: Option<&StreamPosition>,
    ) -> Result<Option<Join>, wsgate_core::backend::BackendError> {
        let kind = match channel {
            Channel::User(_) => "user",
            _ => "topic",
        };
        // Without `since` only the position is needed.
        let (after, limit) = match since {
            Some(s) => (s.offset, None),
            None => (u64::MAX, Some(0)),
        };
        let Some(page) = self.node.read_stream(channel, after, limit).await? else {
            return Ok(None);
        };
        let join = join(page, since);
        let outcome = match join.recovered {
            None => "fresh",
            Some(true) => "recovered",
            Some(false) => "not_recovered",
        };
        let metrics = &self.node.metrics;
        metrics
            .recoveries
            .with_label_values(&[kind, outcome, join.reason])
            .inc();
        metrics.replayed.inc_by(join.replay.len() as u64);
        Ok(Some(join))
    }

    /// Sends the replay of a join and starts tracking its stream.
    pub(super) async fn replay(&mut self, key: StreamKey, join: Join) -> Flow {
        let (messages, bytes) = replay_frames(&join.replay, key.as_deref());
        self.cursors.insert(key, join.cursor);
        if messages.is_empty() {
            return Flow::Continue;
        }
        self.send_counted(messages, bytes).await
    }

    /// Catches every tracked stream up from its history: the broker may have missed
    /// pushes (it reconnected, or its subscriptions were repaired).
    pub(super) async fn catch_up(&mut self) -> Flow {
        self.resync.borrow_and_update();
        let keys = self.cursors.keys();
        for key in keys {
            let Some(cursor) = self.cursors.get(&key).cloned() else {
                continue;
            };
            let channel = match &key {
                Some(topic) => Channel::Topic(topic.clone()),
                None => Channel::User(self.ctx.user_id.clone()),
            };
            let page = match self.node.read_stream(&channel, cursor.last, None).await {
                Ok(Some(page)) => page,
                Ok(None) => continue,
                Err(e) => {
                    // Still away: the next resubscription tries again.
                    tracing::warn!(session = %self.ctx.session_id, error = %e, "stream catch-up failed");
                    continue;
                }
            };
            let top = page.position.offset;
            let flow = match catch_up(&cursor, page) {
                CatchUp::Current => Flow::Continue,
                CatchUp::Reset => self.reset_stream(key).await,
                CatchUp::Replay(missed) => {
                    self.node.metrics.replayed.inc_by(missed.len() as u64);
                    let (messages, bytes) = replay_frames(&missed, key.as_deref());
                    let caught_up = Cursor::after_read(cursor.epoch.clone(), top, &missed);
                    self.cursors.insert(key, caught_up);
                    self.send_counted(messages, bytes).await
                }
            };
            if let Flow::Stop(exit) = flow {
                return Flow::Stop(exit);
            }
        }
        Flow::Continue
    }

    /// The session can no longer vouch for a stream: a topic is dropped (the client
    /// joins again with its last offset), the user stream ends the session.
    pub(super) async fn reset_stream(&mut self, key: StreamKey) -> Flow {
        self.cursors.remove(&key);
        let kind = if key.is_some() { "topic" } else { "user" };
        self.node
            .metrics
            .stream_resets
            .with_label_values(&[kind])
            .inc();
        match key {
            None => close::STREAM_RESET.into(),
            Some(topic) => {
                self.node.unsubscribe(self.record(), &topic).await;
                let frame = wsgate_core::protocol::encode_reply(
                    &wsgate_core::protocol::Reply::Dropped {
                        topic,
                        reason: "insufficient_state",
                    },
                    None,
                );
                let len = frame.len() as u64;
                self.send_counted([to_message(frame)], len).await
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;
    use wsgate_core::backend::{Command, Envelope, Target};
    use wsgate_core::protocol::Payload;

    use super::*;

    fn page(epoch: &str, first_kept: u64, top: u64) -> HistoryPage {
        let entries = (first_kept..=top)
            .map(|offset| {
                let mut envelope = Envelope::new(
                    "p",
                    Target::Topic("t".into()),
                    Command::Deliver(Payload::Text(offset.to_string())),
                );
                envelope.id = offset.to_string();
                envelope.position = Some(StreamPosition {
                    epoch: epoch.into(),
                    offset,
                });
                StreamEntry {
                    offset,
                    published_at_ms: 1,
                    envelope,
                }
            })
            .collect();
        HistoryPage {
            position: StreamPosition {
                epoch: epoch.into(),
                offset: top,
            },
            entries,
            first_kept,
        }
    }

    fn at(offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: "e".into(),
            offset,
        }
    }

    proptest! {
        /// Whatever the interleaving of the join's history read and the live pushes that
        /// queued up meanwhile (from any offset up to the one after the read's newest,
        /// with repeats), the client receives each offset after its `since` once, in
        /// order, when the history still holds it; and otherwise exactly the live ones
        /// after the read's newest, with `recovered: false`.
        #[test]
        fn a_join_emits_each_offset_once_in_order(
            n in 1u64..40,
            since_frac in 0.0f64..=1.0,
            top_frac in 0.0f64..=1.0,
            first_frac in 0.0f64..=1.0,
            live_frac in 0.0f64..=1.0,
            repeats in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let since = (since_frac * n as f64) as u64;
            let top = since + (top_frac * (n - since) as f64) as u64;
            // The oldest kept message: anywhere from 1 to past the newest.
            let first_kept = 1 + (first_frac * top as f64) as u64;
            // The live queue starts at or before the message after the read's newest.
            let live_from = 1 + (live_frac * top as f64) as u64;

            let join = join(page("e", first_kept, top), Some(&at(since)));
            let mut sent: Vec<u64> = join.replay.iter().map(|e| e.offset).collect();
            let mut cursor = join.cursor.clone();
            // Delivered live, in offset order: from some offset up to the read's newest
            // (which the read also covered; some of them twice, as when the pod
            // subscribed twice) and on.
            let mut queue = Vec::new();
            for offset in live_from..=n {
                let copies = if offset <= top && repeats[(offset % 40) as usize] { 2 } else { 1 };
                queue.extend(std::iter::repeat_n(offset, copies));
            }
            for offset in queue {
                {
                    match cursor.admit(&at(offset), &offset.to_string()) {
                        Admit::Send => sent.push(offset),
                        Admit::Duplicate => {}
                        Admit::Reset => prop_assert!(false, "reset at {offset}"),
                    }
                }
            }
            let recoverable = since + 1 >= first_kept;
            prop_assert_eq!(join.recovered, Some(recoverable));
            let from = if recoverable { since + 1 } else { top + 1 };
            prop_assert_eq!(sent, (from..=n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_cursor_resets_on_another_epoch_a_gap_or_a_step_back() {
        // Joined with offsets 2 and 3 replayed; the read's newest was 3.
        let replayed = page("e", 2, 3).entries;
        let mut cursor = Cursor::after_read("e".into(), 3, &replayed);
        assert_eq!(
            cursor.admit(&at(3), "3"),
            Admit::Duplicate,
            "a repeat of the read"
        );
        assert_eq!(
            cursor.admit(&at(1), "1"),
            Admit::Duplicate,
            "before the read"
        );
        assert_eq!(
            cursor.admit(&at(3), "not 3"),
            Admit::Reset,
            "another message at a replayed offset: the stream went back"
        );
        assert_eq!(cursor.admit(&at(5), "5"), Admit::Reset, "a gap");
        assert_eq!(cursor.last, 3, "a reset does not advance");
        let other = StreamPosition {
            epoch: "f".into(),
            offset: 4,
        };
        assert_eq!(cursor.admit(&other, "4"), Admit::Reset, "another epoch");
        assert_eq!(cursor.admit(&at(4), "4"), Admit::Send);
        assert_eq!(
            cursor.admit(&at(3), "3"),
            Admit::Reset,
            "after a newer message, an old offset means the stream went back"
        );
    }

    #[test]
    fn catching_up_replays_what_was_missed_or_resets() {
        let cursor = Cursor::after_read("e".into(), 3, &[]);
        assert_eq!(catch_up(&cursor, page("e", 1, 3)), CatchUp::Current);
        let CatchUp::Replay(missed) = catch_up(&cursor, page("e", 1, 6)) else {
            panic!("offsets 4 to 6 were missed");
        };
        assert_eq!(
            missed.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(
            catch_up(&cursor, page("e", 5, 9)),
            CatchUp::Reset,
            "4 is gone"
        );
        assert_eq!(
            catch_up(&cursor, page("f", 1, 6)),
            CatchUp::Reset,
            "another epoch"
        );
        assert_eq!(
            catch_up(&cursor, page("e", 1, 2)),
            CatchUp::Reset,
            "the stream went back"
        );
    }

    #[test]
    fn a_join_says_why_it_did_not_recover() {
        let p = page("e", 3, 5);
        assert_eq!(join(p.clone(), Some(&at(1))).reason, "trimmed");
        assert_eq!(join(p.clone(), Some(&at(9))).reason, "ahead");
        let other = StreamPosition {
            epoch: "x".into(),
            offset: 4,
        };
        assert_eq!(join(p.clone(), Some(&other)).reason, "epoch");
        let fresh = join(p, None);
        assert_eq!((fresh.recovered, fresh.replay.len()), (None, 0));
        assert_eq!(fresh.cursor.last, 5);
    }

    fn cursor_at(last: u64) -> Cursor {
        Cursor {
            epoch: "e".into(),
            last,
            read_top: last,
            replayed: HashMap::new(),
        }
    }

    #[test]
    fn cursors_are_found_replaced_and_removed_as_a_list_and_as_a_map() {
        let mut cursors = Cursors::new();
        assert!(cursors.is_empty());
        cursors.insert(None, cursor_at(1));
        for i in 0..20u64 {
            cursors.insert(Some(format!("t{i}")), cursor_at(i));
            assert_eq!(cursors.get(&Some(format!("t{i}"))).map(|c| c.last), Some(i));
            assert_eq!(cursors.get(&None).map(|c| c.last), Some(1), "after {i}");
            if i == 3 {
                assert!(matches!(cursors, Cursors::Few(_)));
            }
        }
        assert!(
            matches!(cursors, Cursors::Many(_)),
            "more than a few: a map"
        );
        assert_eq!(cursors.keys().len(), 21);
        // Replacing keeps one entry per stream.
        cursors.insert(Some("t5".into()), cursor_at(50));
        assert_eq!(cursors.keys().len(), 21);
        if let Some(c) = cursors.get_mut(&Some("t5".into())) {
            c.last = 51;
        }
        assert_eq!(cursors.get(&Some("t5".into())).map(|c| c.last), Some(51));
        cursors.remove(&Some("t5".into()));
        assert!(cursors.get(&Some("t5".into())).is_none());

        let mut few = Cursors::new();
        few.insert(Some("a".into()), cursor_at(1));
        few.insert(Some("a".into()), cursor_at(2));
        assert_eq!(few.keys(), vec![Some("a".to_owned())]);
        assert_eq!(few.get(&Some("a".into())).map(|c| c.last), Some(2));
        few.remove(&Some("a".into()));
        assert!(few.is_empty());
    }
}
