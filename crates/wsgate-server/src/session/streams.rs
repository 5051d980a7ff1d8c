//! Streams with history on one session: joining a stream without a gap or a duplicate,
//! and keeping it that way while it is live.
//!
//! A join subscribes first, so live pushes start to queue up, then reads the stream's
//! history from the client's `since`, answers, replays what the client missed, and only
//! then lets the queue flow. Everything queued meanwhile carries its offset: what the
//! replay already covered is dropped, the rest follows in order. The session loop does
//! not read the queue while it handles a join, so the queue itself is the join buffer.
//!
//! Live, a [`Cursor`] holds the epoch and the last offset sent per stream. Duplicates are
//! expected only among the pushes that were already queued when a join finished (they
//! were published while it read the history); later, an offset at or below the last one
//! means the stream went back (Redis lost writes it had acknowledged), which is treated
//! like a push from another epoch or one that skips an offset: the session can no longer
//! vouch for the stream. A topic is then dropped with `insufficient_state` (the client
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
    /// Decides about a live push at `position`, advancing when it is sent. `settling`:
    /// the push was queued before the latest join finished, so it may repeat what the
    /// join's history read covered.
    pub(super) fn admit(&mut self, position: &StreamPosition, settling: bool) -> Admit {
        if position.epoch != self.epoch {
            return Admit::Reset;
        }
        if position.offset <= self.last {
            return if settling {
                Admit::Duplicate
            } else {
                Admit::Reset
            };
        }
        if position.offset != self.last + 1 {
            return Admit::Reset;
        }
        self.last = position.offset;
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
    let cursor = Cursor {
        epoch: position.epoch.clone(),
        last: position.offset,
    };
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
    let replay = if recovered {
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
        replay,
        cursor,
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

/// The cursors of a session's tracked streams.
pub(super) type Cursors = HashMap<StreamKey, Cursor>;

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

    /// Sends the replay of a join and starts tracking its stream. What is queued by now
    /// may repeat the replay: those pushes are the settling ones.
    pub(super) async fn replay(&mut self, key: StreamKey, join: Join) -> Flow {
        let (messages, bytes) = replay_frames(&join.replay, key.as_deref());
        self.cursors.insert(key, join.cursor);
        let flow = if messages.is_empty() {
            Flow::Continue
        } else {
            self.send_counted(messages, bytes).await
        };
        self.settling = self.outbound.len();
        flow
    }

    /// Catches every tracked stream up from its history: the broker may have missed
    /// pushes (it reconnected, or its subscriptions were repaired). What is queued by the
    /// end may repeat what was sent here, like after a join.
    pub(super) async fn catch_up(&mut self) -> Flow {
        self.resync.borrow_and_update();
        let keys: Vec<StreamKey> = self.cursors.keys().cloned().collect();
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
            let flow = match catch_up(&cursor, page) {
                CatchUp::Current => Flow::Continue,
                CatchUp::Reset => self.reset_stream(key).await,
                CatchUp::Replay(missed) => {
                    let last = missed.last().map_or(cursor.last, |e| e.offset);
                    self.node.metrics.replayed.inc_by(missed.len() as u64);
                    let (messages, bytes) = replay_frames(&missed, key.as_deref());
                    if let Some(c) = self.cursors.get_mut(&key) {
                        c.last = last;
                    }
                    self.send_counted(messages, bytes).await
                }
            };
            if let Flow::Stop(exit) = flow {
                return Flow::Stop(exit);
            }
        }
        self.settling = self.outbound.len();
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
                self.node.unsubscribe(&self.record, &topic).await;
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
            // Queued by the end of the join: everything published up to the read's
            // newest offset (repeats included), and maybe a few more.
            let mut queue = Vec::new();
            for offset in live_from..=n {
                let copies = if offset <= top && repeats[(offset % 40) as usize] { 2 } else { 1 };
                queue.extend(std::iter::repeat_n(offset, copies));
            }
            let mut settling = queue.iter().filter(|&&o| o <= top).count()
                + usize::from(repeats[0]);
            for offset in queue {
                let is_settling = settling > 0;
                settling = settling.saturating_sub(1);
                {
                    match cursor.admit(&at(offset), is_settling) {
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
        let mut cursor = Cursor {
            epoch: "e".into(),
            last: 3,
        };
        assert_eq!(cursor.admit(&at(3), true), Admit::Duplicate);
        assert_eq!(
            cursor.admit(&at(3), false),
            Admit::Reset,
            "after the join settled, an old offset means the stream went back"
        );
        assert_eq!(cursor.admit(&at(5), true), Admit::Reset);
        assert_eq!(cursor.last, 3, "a reset does not advance");
        let other = StreamPosition {
            epoch: "f".into(),
            offset: 4,
        };
        assert_eq!(cursor.admit(&other, true), Admit::Reset);
        assert_eq!(cursor.admit(&at(4), false), Admit::Send);
    }

    #[test]
    fn catching_up_replays_what_was_missed_or_resets() {
        let cursor = Cursor {
            epoch: "e".into(),
            last: 3,
        };
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
}
