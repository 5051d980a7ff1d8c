//! One WebSocket session, from the welcome frame to the close: the client protocol,
//! heartbeats, the outbound queue and cleanup.
//!
//! [`register`] puts a session in the hub, the broker and the registry before the 101 is
//! sent; [`run`] then drives it on its socket as a [`Session`], one task per connection:
//! it reads client frames, writes queued pushes (several at a time, one flush), pings
//! every heartbeat interval (one timer with the pong and token deadlines) and watches the
//! close signal that the hub, the control plane and shutdown use. The socket is any
//! `Sink`/`Stream` of WebSocket messages, so the unit tests drive a session over an
//! in-memory pipe.
//!
//! - this file: the public types, registration, cleanup and the event loop;
//! - `io.rs`: writes under the session's limits, the close handshake, read errors;
//! - `ops.rs`: what the client's frames ask for;
//! - `publish.rs`: the `publish` op, its policy and rate;
//! - `refresh.rs`: the `refresh` op, a new token for the live session;
//! - `rpc.rs`: the client's calls to the backend, in flight beside the loop;
//! - `streams.rs`: joining streams with history and keeping them without gaps.

mod io;
mod ops;
mod publish;
mod refresh;
mod rpc;
mod streams;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::auth::TopicPolicy;
use wsgate_core::backend::SessionRecord;
use wsgate_core::backend::{Channel, StreamPosition};
use wsgate_core::close::{self, Close};
use wsgate_core::events::{Closed, ClosedBy};
use wsgate_core::hub::{OutboundReceiver, SessionHandle};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::encode_welcome_with_stream;

use crate::metrics::Metrics;
use crate::node::{Node, OpenError, session_record};
/// Session tuning; built from the configuration.
pub use crate::settings::SessionParams;

/// Who the session belongs to and where it comes from.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// Unique, sortable id.
    pub session_id: SessionId,
    /// The authenticated user.
    pub user_id: String,
    /// Which topics the user may subscribe to.
    pub topics: TopicPolicy,
    /// Which topics the session may publish to with the `publish` op.
    pub publish: TopicPolicy,
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
    /// The token's `jti`, if any: a revocation by token id closes the session.
    pub token_id: Option<String>,
    /// The last position of the user stream the client saw (`?since=epoch:offset`),
    /// when it reconnects to recover what it missed.
    pub user_since: Option<StreamPosition>,
    /// Whether permessage-deflate was negotiated: data frames of
    /// `session.compression_min_bytes` and more go out compressed.
    pub compression: bool,
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
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    metrics: Arc<Metrics>,
}

impl Tally {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            metrics,
        }
    }

    fn received(&mut self, bytes: usize) {
        self.messages_in += 1;
        self.bytes_in += bytes as u64;
        self.metrics.messages_received.inc();
        self.metrics.bytes_received.inc_by(bytes as u64);
    }

    fn sent(&mut self, frames: u64, bytes: u64) {
        self.messages_out += frames;
        self.bytes_out += bytes;
        self.metrics.messages_sent.inc_by(frames);
        self.metrics.bytes_sent.inc_by(bytes);
    }

    fn summary(&self, ended_by: EndedBy, duration: Duration) -> SessionEnd {
        SessionEnd {
            ended_by,
            messages_in: self.messages_in,
            messages_out: self.messages_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration,
        }
    }
}

/// A session registered in the hub, the broker and the registry, waiting for its socket.
/// Dropped without [`run`] (the upgrade failed), it unregisters itself.
pub struct Registered {
    handle: Arc<SessionHandle>,
    outbound: OutboundReceiver,
    /// Unregisters the session however it ends; holds the session's record.
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
    handle.set_token_id(ctx.token_id.clone());
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
            record,
            done: false,
        },
    })
}

/// Removes the session everywhere even if the task is cancelled or panics. It holds the
/// session's record, the one copy the session uses.
struct Cleanup {
    node: Arc<Node>,
    record: SessionRecord,
    /// Unregistered already: dropping does nothing more.
    done: bool,
}

impl Cleanup {
    /// Unregisters the session, which ended as `closed` says.
    async fn run(mut self, closed: &Closed) {
        self.done = true;
        self.node.close_session(&self.record, closed).await;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.done {
            let record = self.record.clone();
            let node = self.node.clone();
            // Only reached when the task was cancelled or panicked, or the upgrade never
            // completed; the hub's removal is idempotent, so a racing explicit cleanup
            // cannot double-count.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let closed = Closed::unexplained(crate::node::now_ms());
                rt.spawn(async move { node.close_session(&record, &closed).await });
            }
        }
    }
}

/// How a session that stops this way ended, for its `disconnected` event.
fn closed(exit: &Exit) -> Closed {
    let (code, by) = match exit {
        Exit::Close { code, .. } => (*code, ClosedBy::Server),
        Exit::Ended(EndedBy::Client(code)) => (code.unwrap_or(close::NO_STATUS), ClosedBy::Client),
        Exit::Ended(EndedBy::Server(code)) => (*code, ClosedBy::Server),
        Exit::Ended(EndedBy::Transport(_)) => (close::ABNORMAL, ClosedBy::Transport),
    };
    Closed {
        code,
        by,
        at_ms: crate::node::now_ms(),
    }
}

/// Runs a registered session on its socket until it ends, then unregisters it.
///
/// Not an `async fn`: the session's state goes into one box here, before the first
/// await, so the future the task keeps for the session's whole life holds a pointer
/// instead of the arguments and a copy of them in the state (an async fn keeps room for
/// its arguments even once they are moved out).
pub fn run<S>(
    ws: S,
    ctx: SessionContext,
    params: Arc<SessionParams>,
    registered: Registered,
) -> impl Future<Output = SessionEnd>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let started = Instant::now();
    let session = Box::new(Session::new(ws, ctx, params, registered));
    drive(session, started)
}

async fn drive<S>(mut session: Box<Session<S>>, started: Instant) -> SessionEnd
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    // A session that registered while the pod began draining is told to go at once.
    if session.node.gauge.is_draining() {
        session.handle.close_with(close::SHUTDOWN);
    }
    let exit = session.serve().await;
    // Boxed, like the welcome and the rarer event handlers: the task keeps room for the
    // largest future it awaits for the session's whole life, so one-time and occasional
    // steps (whose futures reach the backend) live on the heap only while they run. This
    // keeps an idle session's memory to its state and the event loop (bench/README.md,
    // "Idle memory").
    Box::pin(session.end(exit, started)).await
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
            close::REVOKED => metrics.sessions_revoked.inc(),
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

/// How a session stops.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// The server closes it: once it is unregistered, the client gets a close frame with
    /// this code and reason.
    Close {
        /// The close code.
        code: u16,
        /// The close reason (cut to 123 bytes when sent).
        reason: Cow<'static, str>,
    },
    /// It is over already (the client closed, or the connection failed): nothing to send.
    Ended(EndedBy),
}

impl From<Close> for Exit {
    fn from(close: Close) -> Self {
        Exit::Close {
            code: close.code,
            reason: Cow::Borrowed(close.reason),
        }
    }
}

/// What the loop does after one event.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// Wait for the next event.
    Continue,
    /// Leave the loop and end the session this way.
    Stop(Exit),
}

impl From<Close> for Flow {
    fn from(close: Close) -> Self {
        Flow::Stop(close.into())
    }
}

/// One running session: its socket and everything the loop needs, so that each concern
/// (a client frame, a queued push, a ping, the close) is one method.
///
/// The async methods take `&mut self` even when they only read: a `&Session` held across
/// an `.await` would need the socket to be `Sync`, and hyper's upgraded connection is not.
struct Session<S> {
    ws: S,
    ctx: SessionContext,
    /// The pod's session settings, one copy shared by its sessions.
    params: Arc<SessionParams>,
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    /// Pushes for this session, filled by the hub.
    outbound: OutboundReceiver,
    /// Streams with history the session tracks (joined topics, the user stream).
    cursors: streams::Cursors,
    /// Changes when the broker may have missed pushes: tracked streams catch up.
    resync: tokio::sync::watch::Receiver<u64>,
    tally: Tally,
    /// Unregisters the session however the task ends.
    cleanup: Cleanup,
    /// The client's rpc calls in flight; dropped with the session, which cancels them.
    calls: rpc::Calls,
    /// Set when a ping is out and nothing has come back yet.
    pong_deadline: Option<tokio::time::Instant>,
    /// When the token runs out (plus the leeway): a session never outlives its token.
    token_deadline: Option<tokio::time::Instant>,
    /// `publish` ops left this second (`limits.client_publish_per_s`).
    publish_budget: publish::PublishBudget,
}

impl<S> Session<S>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    fn new(ws: S, ctx: SessionContext, params: Arc<SessionParams>, registered: Registered) -> Self {
        let Registered {
            handle,
            outbound,
            cleanup,
        } = registered;
        let node = cleanup.node.clone();
        let resync = node.resyncs();
        let publish_budget = publish::PublishBudget::new(params.client_publish_per_s);
        Self {
            ws,
            ctx,
            params,
            publish_budget,
            tally: Tally::new(node.metrics.clone()),
            node,
            handle,
            outbound,
            cursors: streams::Cursors::new(),
            resync,
            cleanup,
            calls: rpc::Calls::new(),
            pong_deadline: None,
            token_deadline: None,
        }
    }

    /// The session's record in the registry.
    fn record(&self) -> &SessionRecord {
        &self.cleanup.record
    }

    /// When a token expiring at `exp` (seconds since the Unix epoch) closes the session:
    /// then, plus the leeway.
    fn deadline_of(&self, exp: Option<u64>) -> Option<tokio::time::Instant> {
        exp.and_then(|exp| {
            let now = crate::node::now_ms() / 1000;
            let left = Duration::from_secs(exp.saturating_sub(now))
                .saturating_add(self.params.token_leeway);
            // An `exp` too far ahead for the clock is no deadline at all.
            tokio::time::Instant::now().checked_add(left)
        })
    }

    /// Greets the client, then handles events until the session ends.
    async fn serve(&mut self) -> Exit {
        match Box::pin(self.welcome()).await {
            Flow::Continue => self.event_loop().await,
            Flow::Stop(exit) => exit,
        }
    }

    /// Sends the welcome frame (not in echo mode). When the user stream keeps history, the
    /// welcome names its position (and whether `?since=` was recovered) and is followed by
    /// the missed messages; the user's live pushes queued since registration follow them.
    async fn welcome(&mut self) -> Flow {
        if self.ctx.echo {
            return Flow::Continue;
        }
        let channel = Channel::User(self.ctx.user_id.clone());
        let since = self.ctx.user_since.clone();
        let join = match self.read_for_join(&channel, since.as_ref()).await {
            Ok(join) => join,
            Err(e) => {
                tracing::warn!(session = %self.ctx.session_id, error = %e, "user stream unavailable");
                return close::HISTORY_UNAVAILABLE.into();
            }
        };
        let welcome = encode_welcome_with_stream(
            self.ctx.session_id.as_str(),
            &self.ctx.user_id,
            self.params.heartbeat_interval.as_secs().max(1),
            join.as_ref().map(|j| (&j.position, j.recovered)),
        );
        let len = welcome.len() as u64;
        let welcome = io::deflate_message(io::to_message(welcome), self.compression());
        if let Err(e) = self.ws.send(welcome).await {
            return Flow::Stop(Exit::Ended(EndedBy::Transport(e.to_string())));
        }
        self.tally.sent(1, len);
        match join {
            Some(join) => self.replay(None, join).await,
            None => Flow::Continue,
        }
    }

    /// The event loop. The order of the branches is the order of priority: a close
    /// request wins over everything, then the deadlines, then traffic.
    async fn event_loop(&mut self) -> Exit {
        let period = self.params.heartbeat_interval;
        let mut next_ping = tokio::time::Instant::now() + period;
        self.token_deadline = self.deadline_of(self.ctx.expires_at);
        // One timer for the heartbeat and both deadlines, set to the earliest of them and
        // moved only when that changes: an idle session holds one timer, and a busy one
        // does not register a timer per event.
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);

        loop {
            let wake = [self.pong_deadline, self.token_deadline]
                .into_iter()
                .flatten()
                .fold(next_ping, std::cmp::min);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let flow = tokio::select! {
                biased;
                () = self.handle.closing().raised() => Flow::Stop(self.requested_close()),
                () = &mut timer => {
                    // `due` is the earliest of the three instants: a deadline that has
                    // passed, or else the next ping.
                    let due = timer.deadline();
                    if self.pong_deadline.is_some_and(|d| d <= due) {
                        // Client frames come after the queue in this select, so behind a
                        // busy queue a pong can be waiting unread: what the socket has
                        // ready counts before the session is given up (best effort: bytes
                        // the reactor has not reported readable yet are not seen).
                        match self.ws.next().now_or_never() {
                            Some(incoming) => self.on_incoming(incoming).await,
                            None => close::NO_PONG.into(),
                        }
                    } else if self.token_deadline.is_some_and(|d| d <= due) {
                        close::TOKEN_EXPIRY.into()
                    } else {
                        next_ping = tokio::time::Instant::now() + period;
                        self.ping().await
                    }
                }
                Ok(()) = self.resync.changed(), if !self.cursors.is_empty() => {
                    Box::pin(self.catch_up()).await
                }
                // Before the queue: at most `rpc.max_in_flight` answers, so they cannot
                // starve it, and a busy queue does not hold them back.
                Some((id, outcome)) = self.calls.next(), if !self.calls.is_empty() => {
                    Box::pin(self.rpc_done(id, outcome)).await
                }
                frame = self.outbound.recv() => self.flush_queue(frame).await,
                incoming = self.ws.next() => self.on_incoming(incoming).await,
            };
            if let Flow::Stop(exit) = flow {
                return exit;
            }
        }
    }

    /// What the client sent, or how reading failed.
    async fn on_incoming(&mut self, incoming: Option<Result<Message, WsError>>) -> Flow {
        // Any frame proves the client alive.
        self.pong_deadline = None;
        match incoming {
            // Boxed: the ops' futures reach the backend and are large.
            Some(Ok(msg)) => Box::pin(self.on_frame(msg)).await,
            Some(Err(e)) => Flow::Stop(io::read_error(e)),
            None => Flow::Stop(Exit::Ended(EndedBy::Transport(
                "connection closed without a close frame".into(),
            ))),
        }
    }

    /// The close the session was asked for (by the hub, the control plane or shutdown).
    fn requested_close(&self) -> Exit {
        match self.handle.close_reason() {
            Some(asked) => Exit::Close {
                code: asked.code,
                reason: Cow::Owned(asked.reason),
            },
            None => close::UNEXPLAINED.into(),
        }
    }

    /// Ends the session: unregisters it first (nothing more is read from the queue), then,
    /// when the server closes, gives the client its close frame, which may take up to the
    /// heartbeat timeout with a client that does not answer. Records the summary.
    async fn end(self: Box<Self>, exit: Exit, started: Instant) -> SessionEnd {
        let Session {
            mut ws,
            ctx,
            params,
            node,
            outbound,
            calls,
            tally,
            cleanup,
            ..
        } = *self;
        // Calls still out are cancelled: their answers would have nowhere to go.
        drop(calls);
        drop(outbound);
        cleanup.run(&closed(&exit)).await;
        let ended_by = match exit {
            Exit::Close { code, reason } => {
                io::close_socket(&mut ws, code, &reason, params.heartbeat_timeout).await;
                EndedBy::Server(code)
            }
            Exit::Ended(by) => by,
        };
        let end = tally.summary(ended_by, started.elapsed());
        record_end(&node.metrics, &end);
        tracing::debug!(session = %ctx.session_id, user = %ctx.user_id, ended_by = ?end.ended_by, "session ended");
        end
    }
}
