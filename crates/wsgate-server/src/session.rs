//! One WebSocket session, from the welcome frame to the close: the client protocol,
//! heartbeats, the outbound queue and cleanup.
//!
//! The loop is generic over a `Sink`/`Stream` of WebSocket messages so tests can drive it
//! without a socket. One task per connection: it reads client frames, writes queued
//! pushes (several at a time, one flush), pings on an interval and watches the close
//! signal that the hub, the control plane and shutdown use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use wsgate_core::auth::TopicPolicy;
use wsgate_core::backend::SessionRecord;
use wsgate_core::close;
use wsgate_core::hub::{SessionHandle, Subscribed};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::{
    ClientOp, OutFrame, Reply, decode_client, encode_reply, encode_welcome,
};

use crate::metrics::Metrics;
use crate::node::{Node, OpenError, session_record};

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Session tuning, from `session.*` settings.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// WebSocket Ping every this long.
    pub heartbeat_interval: Duration,
    /// No frame this long after a ping closes the session; also bounds a stalled write
    /// and the wait for the client's close reply.
    pub heartbeat_timeout: Duration,
    /// Outbound queue capacity in messages.
    pub outbound_queue: usize,
    /// Clock skew allowed on token expiry (`auth.jwt.leeway`).
    pub token_leeway: Duration,
}

/// Who the session belongs to and where it comes from (DESIGN §2.4).
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// Unique, sortable id.
    pub session_id: SessionId,
    /// The authenticated user.
    pub user_id: String,
    /// Which topics the user may subscribe to.
    pub topics: TopicPolicy,
    /// Client address after trusted proxies.
    pub remote_addr: String,
    /// The client's `User-Agent`, if any.
    pub user_agent: Option<String>,
    /// The negotiated subprotocol, if any.
    pub subprotocol: Option<&'static str>,
    /// Echo mode (`server.echo_path`): no welcome, data frames are sent back as they came.
    pub echo: bool,
    /// The token's `exp` (seconds since the Unix epoch); the session closes with 3005
    /// then (plus the leeway). `None` with auth off.
    pub expires_at: Option<u64>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndedBy {
    /// The client sent a close frame (with this code, if any).
    Client(Option<u16>),
    /// The server closed it with this code.
    Server(u16),
    /// The connection failed without a close handshake.
    Transport(String),
}

/// A finished session's summary (recorded on its `ws.session` span).
#[derive(Debug, Clone)]
pub struct SessionEnd {
    /// How it ended.
    pub ended_by: EndedBy,
    /// Data frames received.
    pub messages_in: u64,
    /// Data frames sent.
    pub messages_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// How long it lived.
    pub duration: Duration,
}

/// Counts a session's traffic, for its summary and the pod's metrics at once.
struct Tally {
    end: SessionEnd,
    metrics: Arc<Metrics>,
}

impl Tally {
    fn received(&mut self, bytes: usize) {
        self.end.messages_in += 1;
        self.end.bytes_in += bytes as u64;
        self.metrics.messages_received.inc();
        self.metrics.bytes_received.inc_by(bytes as u64);
    }

    fn sent(&mut self, frames: u64, bytes: u64) {
        self.end.messages_out += frames;
        self.end.bytes_out += bytes;
        self.metrics.messages_sent.inc_by(frames);
        self.metrics.bytes_sent.inc_by(bytes);
    }
}

/// A session registered in the hub, the broker and the registry, waiting for its socket.
/// Dropped without [`run`] (the upgrade failed), it unregisters itself.
pub struct Registered {
    handle: Arc<SessionHandle>,
    outbound: mpsc::Receiver<OutFrame>,
    record: SessionRecord,
    cleanup: Cleanup,
}

/// Registers a session before the 101 is sent, so the per-user limit is enforced
/// atomically by the registry and pushes sent while the upgrade completes are queued.
pub async fn register(
    node: &Arc<Node>,
    ctx: &SessionContext,
    params: &SessionParams,
    max_user_sessions: usize,
) -> Result<Registered, OpenError> {
    let (handle, outbound) =
        SessionHandle::new(ctx.session_id.clone(), &ctx.user_id, params.outbound_queue);
    let record = session_record(
        node,
        ctx.session_id.clone(),
        &ctx.user_id,
        ctx.remote_addr.clone(),
    );
    node.open_session(handle.clone(), &record, max_user_sessions)
        .await?;
    Ok(Registered {
        handle,
        outbound,
        cleanup: Cleanup {
            node: node.clone(),
            record: Some(record.clone()),
        },
        record,
    })
}

/// Removes the session everywhere even if the task is cancelled or panics.
struct Cleanup {
    node: Arc<Node>,
    record: Option<SessionRecord>,
}

impl Cleanup {
    async fn run(mut self) {
        if let Some(record) = self.record.take() {
            self.node.close_session(&record).await;
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let node = self.node.clone();
            // Only reached when the task was cancelled or panicked; the hub's removal
            // is idempotent, so a racing explicit cleanup cannot double-count.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { node.close_session(&record).await });
            }
        }
    }
}

fn to_message(frame: OutFrame) -> Message {
    match frame {
        OutFrame::Text(t) => Message::Text(t),
        OutFrame::Binary(b) => Message::Binary(b),
    }
}

enum Step {
    Continue,
    Close(u16, String),
    Ended(EndedBy),
}

/// Runs a registered session on its socket until it ends, then unregisters it.
pub async fn run<S>(
    mut ws: S,
    ctx: SessionContext,
    params: SessionParams,
    registered: Registered,
) -> SessionEnd
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let started = Instant::now();
    let Registered {
        handle,
        mut outbound,
        record,
        cleanup,
    } = registered;
    let node = cleanup.node.clone();
    let mut tally = Tally {
        end: SessionEnd {
            ended_by: EndedBy::Server(close::INTERNAL),
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
        },
        metrics: node.metrics.clone(),
    };
    // A session that registered while the pod began draining is told to go at once.
    if node.gauge.is_draining() {
        handle.close_with(close::SHUTDOWN);
    }

    let welcome = encode_welcome(
        ctx.session_id.as_str(),
        &ctx.user_id,
        params.heartbeat_interval.as_secs().max(1),
    );
    let welcome_len = welcome.len() as u64;
    let first = if ctx.echo {
        Ok(())
    } else {
        ws.send(to_message(welcome)).await
    };
    let step = match first {
        Ok(()) => {
            if !ctx.echo {
                tally.sent(1, welcome_len);
            }
            session_loop(
                &mut ws,
                &ctx,
                &node,
                &record,
                &handle,
                &mut outbound,
                &params,
                &mut tally,
            )
            .await
        }
        Err(e) => Step::Ended(EndedBy::Transport(e.to_string())),
    };
    // The session is over as soon as the server decides so: unregister it first (nothing
    // more is read from the queue), then give the client its close frame, which may take
    // up to the heartbeat timeout with a client that does not answer.
    drop(outbound);
    cleanup.run().await;
    let mut end = tally.end;
    match step {
        Step::Close(code, reason) => {
            close_socket(&mut ws, code, &reason, &params).await;
            end.ended_by = EndedBy::Server(code);
        }
        Step::Ended(by) => end.ended_by = by,
        Step::Continue => {}
    }
    end.duration = started.elapsed();
    record_end(&node.metrics, &end);
    tracing::debug!(session = %ctx.session_id, user = %ctx.user_id, ended_by = ?end.ended_by, "session ended");
    end
}

/// Puts a session's summary on its span (the current one) and into the metrics.
fn record_end(metrics: &Metrics, end: &SessionEnd) {
    let span = tracing::Span::current();
    let (by, code) = match &end.ended_by {
        EndedBy::Client(code) => ("client", code.map(i64::from)),
        EndedBy::Server(code) => ("server", Some(i64::from(*code))),
        EndedBy::Transport(why) => {
            span.record("ws.close.error", why.as_str());
            ("transport", None)
        }
    };
    metrics.sessions_closed.with_label_values(&[by]).inc();
    if let EndedBy::Server(code) = end.ended_by {
        match code {
            close::SLOW_CONSUMER => metrics.slow_consumer_closes.inc(),
            close::HEARTBEAT_TIMEOUT => metrics.heartbeat_timeouts.inc(),
            _ => {}
        }
    }
    span.record("ws.close.by", by);
    if let Some(code) = code {
        span.record("ws.close.code", code);
    }
    span.record("ws.messages.received", end.messages_in as i64);
    span.record("ws.messages.sent", end.messages_out as i64);
    span.record("ws.bytes.received", end.bytes_in as i64);
    span.record("ws.bytes.sent", end.bytes_out as i64);
    span.record("ws.duration_ms", end.duration.as_millis() as i64);
}

#[allow(clippy::too_many_arguments)]
async fn session_loop<S>(
    ws: &mut S,
    ctx: &SessionContext,
    node: &Node,
    record: &SessionRecord,
    handle: &Arc<SessionHandle>,
    outbound: &mut mpsc::Receiver<OutFrame>,
    params: &SessionParams,
    tally: &mut Tally,
) -> Step
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let closing = handle.closing().clone();
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + params.heartbeat_interval,
        params.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when a ping is out and nothing has come back yet.
    let mut pong_deadline: Option<tokio::time::Instant> = None;
    // A session never outlives its token.
    let token_deadline = ctx.expires_at.map(|exp| {
        let now = crate::node::now_ms() / 1000;
        let left = Duration::from_secs(exp.saturating_sub(now)) + params.token_leeway;
        tokio::time::Instant::now() + left
    });

    loop {
        let step = tokio::select! {
            biased;
            () = closing.cancelled() => {
                let reason = handle.close_reason().unwrap_or(wsgate_core::hub::CloseReason {
                    code: close::GOING_AWAY,
                    reason: String::new(),
                });
                Step::Close(reason.code, reason.reason)
            }
            () = sleep_until_opt(pong_deadline) => {
                Step::Close(close::NO_PONG.code, close::NO_PONG.reason.into())
            }
            () = sleep_until_opt(token_deadline) => {
                Step::Close(close::TOKEN_EXPIRY.code, close::TOKEN_EXPIRY.reason.into())
            }
            frame = outbound.recv() => match frame {
                Some(frame) => write_batch(ws, frame, outbound, &closing, params, tally).await,
                None => Step::Close(close::GOING_AWAY, String::new()),
            },
            incoming = ws.next() => {
                pong_deadline = None;
                match incoming {
                    Some(Ok(msg)) => on_message(ws, msg, ctx, node, record, &closing, params, tally).await,
                    Some(Err(e)) => on_read_error(e),
                    None => Step::Ended(EndedBy::Transport("connection closed without a close frame".into())),
                }
            }
            _ = heartbeat.tick() => {
                if pong_deadline.is_none() {
                    pong_deadline = Some(tokio::time::Instant::now() + params.heartbeat_timeout);
                    match write_with_limits(ws.send(Message::Ping(Default::default())), &closing, params).await {
                        Ok(()) => Step::Continue,
                        Err(step) => step,
                    }
                } else {
                    Step::Continue
                }
            }
        };
        match step {
            Step::Continue => {}
            other => return other,
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn on_read_error(e: WsError) -> Step {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => Step::Close(
            close::MESSAGE_TOO_BIG.code,
            close::MESSAGE_TOO_BIG.reason.into(),
        ),
        WsError::Capacity(_) => Step::Close(
            close::FRAME_TOO_BIG.code,
            close::FRAME_TOO_BIG.reason.into(),
        ),
        // The peer vanished without a close frame: nothing to answer.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Step::Ended(
            EndedBy::Transport("connection reset without a close handshake".into()),
        ),
        WsError::Protocol(p) => Step::Close(close::PROTOCOL_ERROR, truncate(&p.to_string())),
        WsError::Utf8(_) => Step::Close(close::BAD_UTF8.code, close::BAD_UTF8.reason.into()),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            Step::Ended(EndedBy::Transport("connection closed".into()))
        }
        other => Step::Ended(EndedBy::Transport(other.to_string())),
    }
}

fn truncate(s: &str) -> String {
    wsgate_core::hub::truncate_reason(s)
}

/// Runs one write under the session's limits: it gives up when the session is asked to
/// close, and a write that cannot finish within the heartbeat timeout means the client
/// stopped reading (a slow consumer).
async fn write_with_limits(
    write: impl std::future::Future<Output = Result<(), WsError>>,
    closing: &CancellationToken,
    params: &SessionParams,
) -> Result<(), Step> {
    tokio::select! {
        res = tokio::time::timeout(params.heartbeat_timeout, write) => match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Step::Ended(EndedBy::Transport(e.to_string()))),
            Err(_) => Err(Step::Close(close::WRITE_STALLED.code, close::WRITE_STALLED.reason.into())),
        },
        // The close branch of the loop picks up the reason.
        () = closing.cancelled() => Err(Step::Continue),
    }
}

async fn write_batch<S>(
    ws: &mut S,
    first: OutFrame,
    outbound: &mut mpsc::Receiver<OutFrame>,
    closing: &CancellationToken,
    params: &SessionParams,
    tally: &mut Tally,
) -> Step
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let mut batch = Vec::with_capacity(8);
    let mut bytes = first.len() as u64;
    batch.push(to_message(first));
    while batch.len() < WRITE_BATCH {
        match outbound.try_recv() {
            Ok(frame) => {
                bytes += frame.len() as u64;
                batch.push(to_message(frame));
            }
            Err(_) => break,
        }
    }
    let n = batch.len() as u64;
    let write = async {
        for msg in batch {
            ws.feed(msg).await?;
        }
        ws.flush().await
    };
    let result = write_with_limits(write, closing, params).await;
    match result {
        Ok(()) => {
            tally.sent(n, bytes);
            Step::Continue
        }
        Err(step) => step,
    }
}

#[allow(clippy::too_many_arguments)]
async fn on_message<S>(
    ws: &mut S,
    msg: Message,
    ctx: &SessionContext,
    node: &Node,
    record: &SessionRecord,
    closing: &CancellationToken,
    params: &SessionParams,
    tally: &mut Tally,
) -> Step
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    if ctx.echo && (msg.is_text() || msg.is_binary()) {
        let len = msg.len();
        tally.received(len);
        return match write_with_limits(ws.send(msg), closing, params).await {
            Ok(()) => {
                tally.sent(1, len as u64);
                Step::Continue
            }
            Err(step) => step,
        };
    }
    let reply = match msg {
        Message::Text(text) => {
            tally.received(text.len());
            Some(handle_op(text.as_str(), ctx, node, record).await)
        }
        Message::Binary(bytes) => {
            tally.received(bytes.len());
            Some(encode_reply(
                &Reply::Error {
                    code: "bad_request",
                    message: "binary frames are not accepted from clients".into(),
                },
                None,
            ))
        }
        // tungstenite queues the Pong itself; flushing sends it now.
        Message::Ping(_) => {
            return match write_with_limits(ws.flush(), closing, params).await {
                Ok(()) => Step::Continue,
                Err(step) => step,
            };
        }
        Message::Pong(_) | Message::Frame(_) => None,
        Message::Close(frame) => {
            // tungstenite has queued the close reply; flush it and finish.
            let _ = tokio::time::timeout(params.heartbeat_timeout, ws.flush()).await;
            return Step::Ended(EndedBy::Client(frame.map(|f| u16::from(f.code))));
        }
    };
    let Some(reply) = reply else {
        return Step::Continue;
    };
    let len = reply.len() as u64;
    match write_with_limits(ws.send(to_message(reply)), closing, params).await {
        Ok(()) => {
            tally.sent(1, len);
            Step::Continue
        }
        Err(step) => step,
    }
}

async fn handle_op(
    text: &str,
    ctx: &SessionContext,
    node: &Node,
    record: &SessionRecord,
) -> OutFrame {
    let request = match decode_client(text) {
        Ok(r) => r,
        Err(e) => {
            return encode_reply(
                &Reply::Error {
                    code: e.code,
                    message: e.message,
                },
                e.id.as_ref(),
            );
        }
    };
    let reply = match request.op {
        ClientOp::Ping => Reply::Pong,
        ClientOp::Subscribe { topic } => {
            if !ctx.topics.allows(&topic) {
                Reply::Error {
                    code: "forbidden_topic",
                    message: format!("the token does not allow topic {topic:?}"),
                }
            } else {
                match node.subscribe(record, &topic).await {
                    Ok(Subscribed::Added { .. } | Subscribed::Already) => Reply::Subscribed(topic),
                    Ok(Subscribed::NoSession) => Reply::Error {
                        code: "closing",
                        message: "the session is closing".into(),
                    },
                    Err(e) => {
                        tracing::warn!(session = %ctx.session_id, error = %e, "subscribe failed");
                        Reply::Error {
                            code: "unavailable",
                            message: "the subscription could not be made; try again".into(),
                        }
                    }
                }
            }
        }
        ClientOp::Unsubscribe { topic } => {
            node.unsubscribe(record, &topic).await;
            Reply::Unsubscribed(topic)
        }
    };
    encode_reply(&reply, request.id.as_ref())
}

/// Sends a close frame and waits briefly for the client's reply, all bounded by the
/// heartbeat timeout, so a dead peer cannot hold the task.
async fn close_socket<S>(ws: &mut S, code: u16, reason: &str, params: &SessionParams)
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: truncate(reason).into(),
    };
    let _ = tokio::time::timeout(params.heartbeat_timeout, async {
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
