//! The session's socket side: every write runs under the session's limits (the close
//! signal and the stall timeout) and says how it went in a [`WriteOutcome`]; queued
//! pushes go out in batches; read errors map to closes; the close handshake is bounded.
//!
//! With permessage-deflate negotiated, data frames of `session.compression_min_bytes`
//! and more go out compressed (RSV1 set): a push shared by many
//! sessions through the compressed form its queue item carries (deflated by the first
//! session that sends it), any other frame deflated for this session alone.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::close;
use wsgate_core::deflate::{InflateError, SharedDeflate, compress};
use wsgate_core::hub::Outbound;
use wsgate_core::hub::truncate_reason;
use wsgate_core::protocol::OutFrame;
use wsgate_core::signal::Signal;

use super::streams::Admit;
use super::{EndedBy, Exit, Flow, Session};
use crate::metrics::Metrics;

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// How one write under the session's limits went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WriteOutcome {
    /// Written and flushed.
    Written,
    /// The session was asked to close while writing; the write was abandoned.
    Closing,
    /// The write failed or stalled: the session ends this way.
    Failed(Exit),
}

/// A queued frame as a WebSocket message (no copy: both share the bytes).
pub(super) fn to_message(frame: OutFrame) -> Message {
    match frame {
        OutFrame::Text(t) => Message::Text(t),
        OutFrame::Binary(b) => Message::Binary(b),
    }
}

/// How a session that negotiated compression compresses.
#[derive(Clone, Copy)]
pub(super) struct Deflating<'a> {
    /// Where deflate runs and savings are counted.
    metrics: &'a Metrics,
    /// `session.compression_min_bytes`.
    min_bytes: usize,
}

/// A data message as it goes to a session (`deflating` is `Some` when it negotiated
/// compression): deflated for it alone when it is large enough and deflating pays.
/// Anything else, and a `Message::Frame` (already decided), goes as it is.
pub(super) fn deflate_message(msg: Message, deflating: Option<Deflating<'_>>) -> Message {
    let Some(deflating @ Deflating { metrics, min_bytes }) = deflating else {
        return msg;
    };
    let (data, payload) = match msg {
        Message::Text(t) if t.len() >= min_bytes => (Data::Text, Bytes::from(t)),
        Message::Binary(b) if b.len() >= min_bytes => (Data::Binary, b),
        other => return other,
    };
    metrics.deflate_runs.inc();
    let packed = compress(&payload);
    frame_for(data, payload, packed, deflating)
}

/// A queued push for a session that negotiated compression: its compressed form is
/// computed once, by whichever recipient comes first.
fn deflate_shared(frame: OutFrame, shared: &SharedDeflate, deflating: Deflating<'_>) -> Message {
    if frame.len() < deflating.min_bytes {
        return to_message(frame);
    }
    let (data, payload) = match frame {
        OutFrame::Text(t) => (Data::Text, Bytes::from(t)),
        OutFrame::Binary(b) => (Data::Binary, b),
    };
    let (packed, ran) = shared.get_or_compress(&payload);
    if ran {
        deflating.metrics.deflate_runs.inc();
    }
    frame_for(data, payload, packed, deflating)
}

/// The compressed frame (RSV1 set) when compressing saved bytes (or the threshold is 0:
/// every data frame compressed), else the plain one; both as `Message::Frame`, which
/// [`deflate_message`] leaves alone.
fn frame_for(data: Data, payload: Bytes, packed: Bytes, deflating: Deflating<'_>) -> Message {
    if packed.len() >= payload.len() && deflating.min_bytes > 0 {
        return Message::Frame(Frame::message(payload, OpCode::Data(data), true));
    }
    let metrics = deflating.metrics;
    metrics.deflated_frames.inc();
    metrics
        .deflate_saved_bytes
        .inc_by(payload.len().saturating_sub(packed.len()) as u64);
    let mut frame = Frame::message(packed, OpCode::Data(data), true);
    frame.header_mut().rsv1 = true;
    Message::Frame(frame)
}

/// Runs one write under the session's limits: it gives up when the session is asked to
/// close, and a write that cannot finish within `stall` means the client stopped reading
/// (a slow consumer).
async fn limited(
    write: impl Future<Output = Result<(), WsError>>,
    closing: &Signal,
    stall: Duration,
) -> WriteOutcome {
    tokio::select! {
        res = tokio::time::timeout(stall, write) => match res {
            Ok(Ok(())) => WriteOutcome::Written,
            Ok(Err(e)) => WriteOutcome::Failed(Exit::Ended(EndedBy::Transport(e.to_string()))),
            Err(_) => WriteOutcome::Failed(close::WRITE_STALLED.into()),
        },
        () = closing.raised() => WriteOutcome::Closing,
    }
}

impl<S> Session<S>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// Writes `messages` and flushes once, under the session's limits. With no message it
    /// only flushes (what tungstenite queued itself, such as a Pong).
    pub(super) async fn write(
        &mut self,
        messages: impl IntoIterator<Item = Message>,
    ) -> WriteOutcome {
        let ws = &mut self.ws;
        let deflate = self.ctx.compression.then_some(Deflating {
            metrics: &self.node.metrics,
            min_bytes: self.params.compression_min_bytes,
        });
        let write = async move {
            for msg in messages {
                ws.feed(deflate_message(msg, deflate)).await?;
            }
            ws.flush().await
        };
        // Boxed: a write's future (the frames, the stall timer, the close signal) is the
        // largest the event loop awaits, and the task keeps room for its largest await
        // for the session's whole life. On the heap it costs one allocation per write
        // (a batch of frames) instead of ~0.9 KiB held by every idle session.
        Box::pin(limited(
            write,
            self.handle.closing(),
            self.params.heartbeat_timeout,
        ))
        .await
    }

    /// Writes data frames carrying `bytes` of payload and counts them as sent once they
    /// are flushed: the one way data reaches the client.
    pub(super) async fn send_counted<I>(&mut self, messages: I, bytes: u64) -> Flow
    where
        I: IntoIterator<Item = Message>,
        I::IntoIter: ExactSizeIterator,
    {
        let messages = messages.into_iter();
        let frames = messages.len() as u64;
        let outcome = self.write(messages).await;
        if outcome == WriteOutcome::Written {
            self.tally.sent(frames, bytes);
        }
        self.after_write(outcome)
    }

    /// How to compress, when the session negotiated it.
    pub(super) fn compression(&self) -> Option<Deflating<'_>> {
        self.ctx.compression.then_some(Deflating {
            metrics: &self.node.metrics,
            min_bytes: self.params.compression_min_bytes,
        })
    }

    /// What the loop does after a write.
    pub(super) fn after_write(&self, outcome: WriteOutcome) -> Flow {
        match outcome {
            WriteOutcome::Written => Flow::Continue,
            // The close request that interrupted the write is the session's end.
            WriteOutcome::Closing => Flow::Stop(self.requested_close()),
            WriteOutcome::Failed(exit) => Flow::Stop(exit),
        }
    }

    /// Writes `first` and whatever else is already queued, up to [`WRITE_BATCH`]
    /// frames, with one flush. Pushes of tracked streams pass their cursor: what was sent
    /// already is dropped, and a push that breaks the stream's continuity stops the batch
    /// (what came before it is written) and resets the stream.
    pub(super) async fn flush_queue(&mut self, first: Outbound) -> Flow {
        let mut batch = Vec::with_capacity(8);
        let mut bytes = 0;
        let mut next = Some(first);
        let mut reset = None;
        while let Some(item) = next.take() {
            if let Some(mark) = &item.mark {
                if let Some(cursor) = self.cursors.get_mut(&mark.topic) {
                    match cursor.admit(&mark.position, &mark.id) {
                        Admit::Send => {}
                        Admit::Duplicate => {
                            next = self.next_queued(batch.len());
                            continue;
                        }
                        Admit::Reset => {
                            reset = Some(mark.topic.clone());
                            break;
                        }
                    }
                }
                if let Some(announce) = &mark.announce {
                    bytes += announce.len() as u64;
                    batch.push(to_message(announce.clone()));
                }
            }
            bytes += item.frame.len() as u64;
            batch.push(match (&item.deflate, self.compression()) {
                (Some(shared), Some(deflating)) => deflate_shared(item.frame, shared, deflating),
                _ => to_message(item.frame),
            });
            next = self.next_queued(batch.len());
        }
        if !batch.is_empty()
            && let Flow::Stop(exit) = self.send_counted(batch, bytes).await
        {
            return Flow::Stop(exit);
        }
        match reset {
            // Rare, and its future reaches the backend: boxed, see `run`.
            Some(key) => Box::pin(self.reset_stream(key)).await,
            None => Flow::Continue,
        }
    }

    /// The next queued item, while the batch has room.
    fn next_queued(&mut self, batched: usize) -> Option<Outbound> {
        (batched < WRITE_BATCH)
            .then(|| self.outbound.try_recv())
            .flatten()
    }

    /// The heartbeat: sends a Ping and starts the pong deadline, unless a ping is out
    /// already (then the deadline set by that one stands).
    pub(super) async fn ping(&mut self) -> Flow {
        if self.pong_deadline.is_some() {
            return Flow::Continue;
        }
        self.pong_deadline = Some(tokio::time::Instant::now() + self.params.heartbeat_timeout);
        let outcome = self.write([Message::Ping(Default::default())]).await;
        self.after_write(outcome)
    }
}

/// The end a read error means: limits and protocol violations are answered with a close
/// frame; a vanished peer gets nothing.
pub(super) fn read_error(e: WsError) -> Exit {
    match e {
        // The inflating adapter under tungstenite failed the message (1009, 1007, 1002).
        WsError::Io(io) if let Some(inflate) = InflateError::from_io(&io) => Exit::Close {
            code: inflate.close_code(),
            reason: Cow::Owned(inflate.to_string()),
        },
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => close::MESSAGE_TOO_BIG.into(),
        WsError::Capacity(_) => close::FRAME_TOO_BIG.into(),
        // The peer vanished without a close frame: nothing to answer.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Exit::Ended(
            EndedBy::Transport("connection reset without a close handshake".into()),
        ),
        WsError::Protocol(p) => Exit::Close {
            code: close::PROTOCOL_ERROR,
            reason: Cow::Owned(truncate_reason(&p.to_string())),
        },
        WsError::Utf8(_) => close::BAD_UTF8.into(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            Exit::Ended(EndedBy::Transport("connection closed".into()))
        }
        other => Exit::Ended(EndedBy::Transport(other.to_string())),
    }
}

/// Sends a close frame and waits briefly for the client's reply, all bounded by `limit`
/// (the heartbeat timeout), so a dead peer cannot hold the task.
pub(super) async fn close_socket<S>(ws: &mut S, code: u16, reason: &str, limit: Duration)
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: truncate_reason(reason).into(),
    };
    let _ = tokio::time::timeout(limit, async {
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        // Drain until the client's close reply (or the end of the stream).
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}
